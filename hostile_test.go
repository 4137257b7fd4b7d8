package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
)

// Hostile clients against the real server on a real port.

// shortTimeouts are server timeouts short enough for tests to outlast.
var shortTimeouts = timeouts{readHeader: 300 * time.Millisecond, read: time.Second, write: time.Second, idle: time.Second}

// startShortTimeouts serves the router on 127.0.0.1 with shortTimeouts.
func startShortTimeouts(tb testing.TB) (string, *table) {
	tb.Helper()
	return startWithTimeouts(tb, shortTimeouts)
}

// startWithTimeouts serves the router on 127.0.0.1 with the given server
// timeouts and returns its address and table.
func startWithTimeouts(tb testing.TB, short timeouts) (string, *table) {
	tb.Helper()
	tab, _ := newTestTable(tb, nil)
	s := &server{locks: tab, log: discardLog, maxWait: time.Minute, writeTimeout: short.write}
	httpSrv := newHTTPServer(s.routes(), discardLog, short, context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = httpSrv.Serve(ln) }()
	tb.Cleanup(func() { _ = httpSrv.Close() })
	return ln.Addr().String(), tab
}

func TestSlowlorisIsCutOff(t *testing.T) {
	addr, _ := startShortTimeouts(t)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers that never end.
	if _, err := io.WriteString(conn, "PUT /lock/x HTTP/1.1\r\nHost: locker\r\nX-Slow: 1\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(conn) // ends when the server closes the connection
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server kept a connection with unfinished headers open for %v", time.Since(start))
	}
	t.Logf("connection closed after %v", time.Since(start))
}

func TestHugeRequestsAreRefused(t *testing.T) {
	addr, tab := startShortTimeouts(t)
	base := "http://" + addr
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for i := range 20 {
		for _, chunked := range []bool{false, true} {
			body := io.Reader(strings.NewReader(`{"key": "` + strings.Repeat("x", 1<<20) + `"}`))
			if chunked {
				body = io.MultiReader(body) // hides the length: sent chunked
			}
			req, _ := http.NewRequest("PUT", base+"/lock/x", body)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				// The server may close the connection while the rest of the
				// body is still being sent; the status it sent first counts.
				t.Logf("request %d (chunked %v): %v", i, chunked, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("1 MiB body (chunked %v) = %d; want 413", chunked, resp.StatusCode)
			}
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if grown := int64(m1.HeapAlloc) - int64(m0.HeapAlloc); grown > 8<<20 {
		t.Errorf("heap grew by %d MB over 40 refused 1 MiB bodies", grown>>20)
	}
	if n := tab.Len(); n != 0 {
		t.Errorf("%d locks after refused requests", n)
	}

	// A 64 KiB header is over the limit.
	req, _ := http.NewRequest("GET", base+"/locks", nil)
	req.Header.Set("X-Big", strings.Repeat("h", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header = %d; want 431", resp.StatusCode)
	}
}

// TestTenThousandWaiters queues 10,000 waiters on one lock of the real
// server, in groups that share a key, then lets them all through: each
// group is granted together and gives the lock back. No request fails and
// the server is left with nothing held or queued. (The server runs as its
// own process: with both ends of 10,000 connections, this one would pass
// its open-file limit.)
func TestTenThousandWaiters(t *testing.T) {
	total, group := 10000, 100
	if testing.Short() {
		total = 1000
	}
	p := startProc(t, filepath.Join(t.TempDir(), "locks.yml"))
	if status := httpDo(t, p.url, "PUT", "/lock/busy", `{"key": "holder"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d", status)
	}
	transport := &http.Transport{DisableKeepAlives: true}
	client := &http.Client{Transport: transport}
	var wg sync.WaitGroup
	failures := make(chan string, total)
	for g := range total / group {
		for i := range group {
			wg.Go(func() {
				key := fmt.Sprintf(`{"key": "group-%d", "lock_by": "w-%d-%d"}`, g, g, i)
				for _, r := range []struct{ method, path string }{{"PUT", "/lock/busy?wait=5m"}, {"DELETE", "/lock/busy"}} {
					req, _ := http.NewRequest(r.method, p.url+r.path, strings.NewReader(key))
					resp, err := client.Do(req)
					if err != nil {
						failures <- err.Error()
						return
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						failures <- fmt.Sprintf("%s = %d", r.method, resp.StatusCode)
						return
					}
				}
			})
		}
		// Let each group queue before the next, so that groups stay together.
		waitFor(t, fmt.Sprintf("group %d to queue", g), func() bool { return waiting(t, p.url, "busy") == (g+1)*group })
	}
	if status := httpDo(t, p.url, "DELETE", "/lock/busy", `{"key": "holder"}`); status != http.StatusOK {
		t.Fatalf("DELETE = %d", status)
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Fatalf("a waiter failed: %s", f)
	}
	if n := waiting(t, p.url, "busy"); n != 0 {
		t.Errorf("%d still waiting", n)
	}
	if status, body := httpGet(t, p.url, "/locks"); status != http.StatusOK || body != "{}\n" {
		t.Errorf("GET /locks after every waiter came and went = %d %s; want {}", status, body)
	}
}

// waiting returns how many requests wait for the lock called name.
func waiting(tb testing.TB, base, name string) int {
	tb.Helper()
	status, body := httpGet(tb, base, "/lock/"+name)
	var v lock.View
	if err := json.Unmarshal([]byte(body), &v); status != http.StatusOK || err != nil {
		tb.Fatalf("GET /lock/%s = %d %s", name, status, body)
	}
	return len(v.Waiting)
}

func httpGet(tb testing.TB, base, path string) (int, string) {
	tb.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

var (
	buildOnce   sync.Once
	lockerBin   string
	buildFailed error
)

// buildLocker builds the locker binary once for the tests that need a real
// process to signal.
func buildLocker(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "locker-bin")
		if err != nil {
			buildFailed = err
			return
		}
		lockerBin = filepath.Join(dir, "locker")
		// The crash tests kill this binary: lazyfs makes a kill lose what
		// was not synced, as a power cut would (see internal/faults/lazyfs.go).
		tags := "lazyfs"
		if faults.Planted != "" {
			tags += ",bug_" + faults.Planted // the same server as this test binary
		}
		args := []string{"build", "-tags", tags, "-o", lockerBin}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			buildFailed = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildFailed != nil {
		tb.Fatal(buildFailed)
	}
	return lockerBin
}

// proc is the locker binary running as its own process.
type proc struct {
	cmd  *exec.Cmd
	url  string
	log  *syncBuffer
	done chan struct{}
}

// startProc starts the locker binary on state and waits until it serves.
func startProc(tb testing.TB, state string) *proc {
	tb.Helper()
	cmd := exec.Command(buildLocker(tb))
	cmd.Env = []string{"PORT=0", "LOCKER_CONFIG=" + state}
	p := &proc{cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(p.log, sc.Text())
			if m := listenAddr.FindStringSubmatch(sc.Text()); m != nil {
				_, pt, _ := net.SplitHostPort(m[1])
				select {
				case port <- pt:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() { p.kill() })
	select {
	case pt := <-port:
		p.url = "http://127.0.0.1:" + pt
	case <-p.done:
		tb.Fatalf("locker exited at start:\n%s", p.log)
	case <-time.After(20 * time.Second):
		tb.Fatalf("locker did not start:\n%s", p.log)
	}
	return p
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// TestSIGTERMUnderLoad stops the server with SIGTERM while 16 clients
// change locks: it exits 0 within 10 s, and every change it acknowledged
// is in the state file it leaves.
func TestSIGTERMUnderLoad(t *testing.T) {
	state := filepath.Join(t.TempDir(), "locks.yml")
	p := startProc(t, state)
	var mu sync.Mutex
	acked := map[string]int{} // lock name -> acknowledged holds
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for c := range 16 {
		wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second}
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("c%d-%d", c, i)
				req, _ := http.NewRequest("PUT", p.url+"/lock/"+name, strings.NewReader(`{"key": "k"}`))
				resp, err := client.Do(req)
				if err != nil {
					return // the server is going away
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					acked[name]++
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // let the load build up
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("locker did not exit within 10 s of SIGTERM under load")
	}
	stop()
	wg.Wait()
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code after SIGTERM = %d; want 0\n%s", code, p.log)
	}
	t.Logf("exited %v after SIGTERM; %d changes acknowledged", time.Since(start), len(acked))
	st, err := statefile.Decode(readFile(t, state))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state + ".journal"); err == nil {
		t.Error("the journal is still there after a clean shutdown")
	}
	for name := range acked {
		if st.Locks[name].Free() {
			t.Errorf("acknowledged lock %s is not in the state file", name)
		}
	}
	if len(acked) == 0 {
		t.Error("no change was acknowledged: the test did not load the server")
	}
}
