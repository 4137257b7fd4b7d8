package blackbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/statefile"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestThousandsOfWaiters queues thousands of waiters on one lock of the real
// server, in groups that share a key, then lets them all through: each
// group is granted together and gives the lock back. No request fails and
// the server is left with nothing held or queued. (The server runs as its
// own process: with both ends of 10,000 connections, this one would pass
// its open-file limit.)
func TestThousandsOfWaiters(t *testing.T) {
	t.Parallel() // the heaviest: it runs beside the two lighter ones
	// make stress queues 10,000; make test 2,000, the most that users
	// reach on one lock, in a fifth of the time (a fresh machine must run
	// make test within 6 minutes: 3,000 took 112 s beside the failover
	// tests).
	total, group := 2000, 100
	switch {
	case stress():
		total = 10000
	case testing.Short():
		total = 1000
	}
	p := startProc(t, filepath.Join(t.TempDir(), "locks.yml"))
	letThrough(t, []string{p.URL}, total, group)
}

// TestTwoThousandWaitersWithOneKeyOnPostgreSQL: 2,000 requests with one
// key wait for a lock on two nodes sharing a database; the holder's
// release grants them all in one change, which tells both nodes of every
// grant (notifications that carry 2,000 IDs), and each is answered.
func TestTwoThousandWaitersWithOneKeyOnPostgreSQL(t *testing.T) {
	t.Parallel()
	env := "LOCKER_DATABASE_URL=" + testutil.PostgresSchema(t)
	a, b := testutil.StartServer(t, buildLocker(t), env), testutil.StartServer(t, buildLocker(t), env)
	letThrough(t, []string{a.URL, b.URL}, 2000, 2000)
}

// letThrough holds the lock "busy" through the first of urls, queues
// total waiters for it, in groups of group that share a key, on each of
// urls in turn, and releases it: every waiter must be granted and give
// it back, leaving nothing held or queued.
func letThrough(t *testing.T, urls []string, total, group int) {
	if status := testutil.HTTPDo(t, urls[0], "PUT", "/lock/busy", `{"key": "holder"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d", status)
	}
	transport := &http.Transport{DisableKeepAlives: true}
	client := &http.Client{Transport: transport}
	var wg sync.WaitGroup
	failures := make(chan string, total)
	var retries atomic.Int64
	for g := range total / group {
		for i := range group {
			base := urls[(g*group+i)%len(urls)]
			wg.Go(func() {
				key := fmt.Sprintf(`{"key": "group-%d", "lock_by": "w-%d-%d"}`, g, g, i)
				for _, r := range []struct{ method, path string }{{"PUT", "/lock/busy?wait=5m"}, {"DELETE", "/lock/busy"}} {
					// A 503 (the database slower than a change may take, on
					// a busy machine) is sent again with its Idempotency-Key,
					// as the clients do; it must then be answered once.
					for try := 1; ; try++ {
						req, _ := http.NewRequest(r.method, base+r.path, strings.NewReader(key))
						req.Header.Set("Idempotency-Key", fmt.Sprintf("%s-%d-%d", r.method, g, i))
						resp, err := client.Do(req)
						if err != nil && try < 10 { // a connection lost with its answer: sent again, as the clients do
							retries.Add(1)
							time.Sleep(time.Duration(try) * 200 * time.Millisecond)
							continue
						}
						if err != nil {
							failures <- err.Error()
							return
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode == http.StatusServiceUnavailable && try < 10 {
							retries.Add(1)
							time.Sleep(time.Duration(try) * 200 * time.Millisecond)
							continue
						}
						if resp.StatusCode != http.StatusOK {
							failures <- fmt.Sprintf("%s = %d %s (try %d)", r.method, resp.StatusCode, body, try)
							return
						}
						break
					}
				}
			})
		}
		// Let each group queue before the next, so that groups stay together.
		// (Up to two minutes: beside another build, 2,000 requests
		// queueing through one row, some sent again after a 503, took over
		// the ten seconds testutil.WaitFor gives.)
		for deadline := time.Now().Add(2 * time.Minute); gauge(t, urls[0], "locker_waiters") != float64((g+1)*group); time.Sleep(10 * time.Millisecond) {
			select {
			case f := <-failures:
				t.Fatalf("a waiter failed while group %d queued: %s", g, f)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("group %d did not queue within 2 min (%v waiting)", g, gauge(t, urls[0], "locker_waiters"))
			}
		}
	}
	released := time.Now()
	if status, body := httpDo(t, urls[0], "DELETE", "/lock/busy", `{"key": "holder"}`); status != http.StatusOK {
		t.Fatalf("DELETE = %d %s (after %v)", status, body, time.Since(released).Round(time.Millisecond))
	}
	t.Logf("the release that granted %d waiters took %v", total, time.Since(released).Round(time.Millisecond))
	wg.Wait()
	if n := retries.Load(); n > 0 {
		t.Logf("%d requests were answered 503, or lost their connection, and were sent again with their Idempotency-Key", n)
	}
	close(failures)
	for f := range failures {
		t.Fatalf("a waiter failed: %s", f)
	}
	if n := waiting(t, urls[0], "busy"); n != 0 {
		t.Errorf("%d still waiting", n)
	}
	if status, body := httpGet(t, urls[0], "/locks"); status != http.StatusOK || body != "{}\n" {
		t.Errorf("GET /locks after every waiter came and went = %d %s; want {}", status, body)
	}
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
				req, _ := http.NewRequest("PUT", p.URL+"/lock/"+name, strings.NewReader(`{"key": "k"}`))
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
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("locker did not exit within 10 s of SIGTERM under load")
	}
	stop()
	wg.Wait()
	if code := p.ExitCode(); code != 0 {
		t.Errorf("exit code after SIGTERM = %d; want 0\n%s", code, p.Log)
	}
	t.Logf("exited %v after SIGTERM; %d changes acknowledged", time.Since(start), len(acked))
	st, err := statefile.Decode(testutil.ReadFile(t, state))
	if err != nil {
		t.Fatal(err)
	}
	if j, err := os.Stat(state + ".journal"); err != nil || j.Size() != 0 {
		t.Errorf("the journal after a clean shutdown: %v, %v; want it there and empty", j, err)
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

// TestSecondServerOnOneStateFile starts a second server on the state file
// of a running one: it exits 1 at once, naming the file and the first
// one's pid, and the first goes on. Once the first is killed with SIGKILL
// (no clean-up), a new server starts on the file and has its locks.
func TestSecondServerOnOneStateFile(t *testing.T) {
	state := filepath.Join(t.TempDir(), "locks.yml")
	first := startProc(t, state)
	if status := testutil.HTTPDo(t, first.URL, "PUT", "/lock/prod", `{"key": "a"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d", status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	second := exec.CommandContext(ctx, buildLocker(t))
	second.Env = []string{"PORT=0", "LOCKER_CONFIG=" + state}
	out, err := second.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("second server = %v; want exit code 1\n%s", err, out)
	}
	if want := fmt.Sprintf("LOCKER_CONFIG %s is in use by another locker server, process %d", state, first.Pid()); !strings.Contains(string(out), want) {
		t.Errorf("second server said:\n%s\nwant it to contain %q", out, want)
	}
	if status := testutil.HTTPDo(t, first.URL, "PUT", "/lock/prod", `{"key": "b"}`); status != http.StatusLocked {
		t.Errorf("PUT with another key on the first server = %d; want 423", status)
	}
	first.Kill() // SIGKILL: the kernel drops its lock
	third := startProc(t, state)
	if status := testutil.HTTPDo(t, third.URL, "PUT", "/lock/prod", `{"key": "b"}`); status != http.StatusLocked {
		t.Errorf("PUT with another key after the restart = %d; want 423: the lock taken before the kill is held", status)
	}
}
