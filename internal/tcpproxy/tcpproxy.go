// Package tcpproxy forwards TCP connections to a server, and can cut
// them, refuse new ones, lose one COMMIT's answer, or move to another
// server: the database going away, coming back, or failing over, for the
// servers behind it, without stopping the database. For the tests and
// the benchmark; the server never imports it.
package tcpproxy

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards TCP connections to a server, and can cut them all and
// refuse new ones for a while: the database going away and coming back,
// for the servers behind it, without stopping the database that other
// tests use.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex // guards conns, down and target
	conns map[net.Conn]bool
	down  bool

	// dropCommit, when set, makes the next client message that holds a
	// COMMIT reach the server, and its answer never reach the client.
	dropCommit atomic.Bool
}

// New listens on the loopback and forwards to target (host:port), until
// Close.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	return p, nil
}

// Close stops listening and cuts every connection.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.Cut()
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down, target := p.down, p.target
		p.mu.Unlock()
		if down {
			in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			in.Close()
			continue
		}
		p.track(in, out)
		go p.toServer(in, out)
		go p.pipe(out, in)
	}
}

func (p *Proxy) track(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		p.conns[c] = true
	}
}

func (p *Proxy) pipe(from, to net.Conn) {
	_, _ = io.Copy(to, from)
	from.Close()
	to.Close()
}

// toServer copies what the client sends to the server, and cuts the
// connection right after a COMMIT when DropCommitAnswer asked for it.
func (p *Proxy) toServer(from, to net.Conn) {
	defer from.Close()
	defer to.Close()
	buf := make([]byte, 64<<10)
	var tail []byte // the end of the previous read: a COMMIT may come in two
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
			seen := append(tail, buf[:min(n, 16)]...)
			commit := bytes.Contains(buf[:n], []byte("COMMIT")) || bytes.Contains(seen, []byte("COMMIT"))
			tail = append(tail[:0], buf[max(0, n-8):n]...)
			if commit && p.dropCommit.CompareAndSwap(true, false) {
				// The COMMIT is on its way; its answer is not: the client's
				// side goes at once, the server's once it has had a moment
				// to commit.
				from.Close()
				time.Sleep(50 * time.Millisecond)
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// DropCommitAnswer loses the answer to the next COMMIT that goes through
// the proxy: the database commits, the client hears nothing, and its
// connection is gone.
func (p *Proxy) DropCommitAnswer() { p.dropCommit.Store(true) }

// Cut closes every connection through the proxy.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Outage cuts every connection and refuses new ones for d.
func (p *Proxy) Outage(d time.Duration) {
	p.Down()
	time.Sleep(d)
	p.Up()
}

// Down cuts every connection and refuses new ones from now on: a node
// cut off from the database, until Up.
func (p *Proxy) Down() {
	p.mu.Lock()
	p.down = true
	p.mu.Unlock()
	p.Cut()
}

// MoveTo sends new connections to target from now on, and cuts those
// to the old one: a DNS name or a load balancer that follows a database's
// new primary (RDS, HAProxy over Patroni).
func (p *Proxy) MoveTo(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
	p.Cut()
}

// Up lets new connections through again.
func (p *Proxy) Up() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}
