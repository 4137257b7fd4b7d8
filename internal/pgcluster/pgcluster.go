// Package pgcluster runs a PostgreSQL primary and its streaming standby,
// made with initdb and pg_basebackup in a folder of their own, on ports of
// their own, to fail over: the database of the failover tests and of the
// benchmark, never the server's, and never the one other tests use. The
// standby's WAL comes through a proxy (Feed), which can cut it off so that
// it misses the primary's last commits. As root, the servers run as the
// postgres user (PostgreSQL refuses to run as root).
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/tcpproxy"
)

// ErrNotInstalled says PostgreSQL's server programs are not on this
// machine.
var ErrNotInstalled = errors.New("PostgreSQL's server programs (initdb, pg_ctl, pg_basebackup) are not installed; " +
	"install them (Debian: apt-get install postgresql)")

// Cluster is a primary and its standby.
type Cluster struct {
	bin     string   // the folder of initdb, pg_ctl, ...
	as      []string // the command prefix that runs as the servers' user
	dir     string
	Primary *Server
	Standby *Server
	// Feed carries the standby's replication connection: Feed.Down()
	// leaves it behind the primary.
	Feed *tcpproxy.Proxy
}

// Server is one server of a Cluster.
type Server struct {
	Dir  string // its data folder
	Port int
	log  string
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// Options say how the servers run.
type Options struct {
	// Sync: the primary waits for the standby to have each commit (the
	// standby named in synchronous_standby_names); otherwise replication
	// is asynchronous, PostgreSQL's default.
	Sync bool
	// Fsync: the servers sync their writes to the disk, as in production;
	// otherwise they do not (fsync = off), which the tests need not: a
	// server stopped with -m immediate loses nothing the kernel holds.
	Fsync bool
}

// New makes and starts a primary and its standby. Close stops them and
// removes their folder.
func New(opts Options) (c *Cluster, err error) {
	c = &Cluster{}
	if c.bin, err = bin(); err != nil {
		return nil, err
	}
	if c.dir, err = os.MkdirTemp("", "locker-pg-cluster-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("as root, PostgreSQL runs as the postgres user, and there is none: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(c.dir, uid, gid); err != nil {
			return nil, err
		}
		c.as = []string{"runuser", "-u", "postgres", "--"}
	}
	c.Primary = &Server{Dir: filepath.Join(c.dir, "primary"), log: filepath.Join(c.dir, "primary.log")}
	c.Standby = &Server{Dir: filepath.Join(c.dir, "standby"), log: filepath.Join(c.dir, "standby.log")}
	for _, s := range []*Server{c.Primary, c.Standby} {
		if s.Port, err = freePort(); err != nil {
			return nil, err
		}
	}
	if err := c.run("initdb", "-D", c.Primary.Dir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		return nil, err
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = '" + c.dir + "'",
		"max_connections = 60", "shared_buffers = 16MB",
		"wal_level = replica", "max_wal_senders = 4", "wal_keep_size = 64MB",
		"wal_sender_timeout = 5s", "wal_receiver_status_interval = 1s",
	}
	if !opts.Fsync {
		conf = append(conf, "fsync = off")
	}
	if opts.Sync {
		conf = append(conf, "synchronous_standby_names = 'standby'", "synchronous_commit = on")
	}
	if err := appendConf(c.Primary, conf...); err != nil {
		return nil, err
	}
	if err := c.start(c.Primary); err != nil {
		return nil, err
	}
	if c.Feed, err = tcpproxy.New(c.Primary.Addr()); err != nil {
		return nil, err
	}
	host, port, _ := strings.Cut(c.Feed.Addr(), ":")
	if err := c.run("pg_basebackup", "-D", c.Standby.Dir, "-R", "-X", "stream", "--no-sync",
		"-d", fmt.Sprintf("host=%s port=%s user=postgres application_name=standby", host, port)); err != nil {
		return nil, err
	}
	// As a primary, once promoted, the standby waits for no standby of
	// its own: it has none.
	if err := appendConf(c.Standby, "synchronous_standby_names = ''"); err != nil {
		return nil, err
	}
	if err := c.start(c.Standby); err != nil {
		return nil, err
	}
	return c, c.WaitStreaming()
}

// bin returns the folder of PostgreSQL's server programs.
func bin() (string, error) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(found) == 0 {
		return "", ErrNotInstalled
	}
	slices.Sort(found)
	return filepath.Dir(found[len(found)-1]), nil
}

// freePort returns a loopback port no one listens on.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// run runs one of PostgreSQL's programs as the servers' user; its output
// is in the error.
func (c *Cluster) run(program string, args ...string) error {
	argv := append(append(slices.Clone(c.as), filepath.Join(c.bin, program)), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = c.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return nil
}

// appendConf adds settings to a server's postgresql.conf.
func appendConf(s *Server, lines ...string) error {
	f, err := os.OpenFile(filepath.Join(s.Dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString("\n" + strings.Join(lines, "\n") + "\n")
	return errors.Join(err, f.Close())
}

// start starts s on its port and waits until it takes connections.
func (c *Cluster) start(s *Server) error {
	return c.run("pg_ctl", "-D", s.Dir, "-l", s.log, "-o", "-p "+strconv.Itoa(s.Port), "-w", "-t", "60", "start")
}

// StopPrimary stops the primary at once, as a machine that dies: no
// shutdown checkpoint, its connections cut.
func (c *Cluster) StopPrimary() error {
	return c.run("pg_ctl", "-D", c.Primary.Dir, "-m", "immediate", "-w", "stop")
}

// Promote makes the standby the primary, and waits until it takes writes.
func (c *Cluster) Promote() error {
	return c.run("pg_ctl", "-D", c.Standby.Dir, "-w", "-t", "60", "promote")
}

// WaitStreaming waits until the standby streams from the primary.
func (c *Cluster) WaitStreaming() error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		err := c.Query(c.Primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &n)
		if err == nil && n == 1 {
			return nil
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(c.Standby.log)
			return fmt.Errorf("the standby did not stream from the primary within a minute (%v); its log:\n%s", err, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Query runs sql on s and scans its one row into dst.
func (c *Cluster) Query(s *Server, sql string, dst ...any) error {
	return c.on(s, func(ctx context.Context, conn *pgx.Conn) error { return conn.QueryRow(ctx, sql).Scan(dst...) })
}

// Exec runs sql on s.
func (c *Cluster) Exec(s *Server, sql string) error {
	return c.on(s, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql)
		return err
	})
}

// on runs fn on a connection of its own to s, for up to 10 s.
func (c *Cluster) on(s *Server, fn func(context.Context, *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL(s))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return fn(ctx, conn)
}

// URL returns the URL of the database postgres on the servers given, in
// order, with target_session_attrs=read-write when there are several.
func (c *Cluster) URL(servers ...*Server) string {
	addrs := make([]string, len(servers))
	for i, s := range servers {
		addrs[i] = s.Addr()
	}
	u := "postgres://postgres@" + strings.Join(addrs, ",") + "/postgres?sslmode=disable"
	if len(servers) > 1 {
		u += "&target_session_attrs=read-write"
	}
	return u
}

// Logs returns both servers' logs.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, s := range []*Server{c.Primary, c.Standby} {
		data, _ := os.ReadFile(s.log)
		fmt.Fprintf(&b, "--- %s (%s)\n%s", filepath.Base(s.Dir), s.Addr(), data)
	}
	return b.String()
}

// Close stops whatever still runs, at once, and removes the folder.
func (c *Cluster) Close() {
	if c.Feed != nil {
		c.Feed.Close()
	}
	for _, s := range []*Server{c.Primary, c.Standby} {
		if s == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.Dir, "postmaster.pid")); err != nil {
			continue
		}
		_ = c.run("pg_ctl", "-D", s.Dir, "-m", "immediate", "-w", "stop")
	}
	_ = os.RemoveAll(c.dir)
}
