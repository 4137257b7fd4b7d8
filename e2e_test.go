package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// End-to-end tests of waiting, over real HTTP against a real state file.

func TestWaitIsHandedTheLockOnRelease(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "A", "lock_by": "first"}`)
	if status != http.StatusOK {
		t.Fatalf("PUT = %d %s", status, body)
	}
	var first lockReply
	_ = json.Unmarshal(body, &first)

	second := testutil.PutAsync(context.Background(), ls.url, "/lock/prod?wait=10s", `{"key": "B", "lock_by": "second"}`)
	testutil.WaitFor(t, "the second PUT to queue", func() bool { return ls.waiting(t, "prod") == 1 })

	// A PUT with the holder's key does not jump the queue.
	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "A", "lock_by": "third"}`); status != http.StatusLocked || !strings.Contains(string(body), "jump the queue") {
		t.Errorf("PUT past a waiter = %d %s; want 423 about the queue", status, body)
	}

	released := time.Now()
	if status, body := ls.call(t, "DELETE", "/lock/prod", `{"key": "A", "lock_by": "first"}`); status != http.StatusOK {
		t.Fatalf("DELETE = %d %s", status, body)
	}
	r := testutil.PutAnswer(t, second)
	if r.Status != http.StatusOK {
		t.Fatalf("waiting PUT = %d %s; want 200", r.Status, r.Body)
	}
	var got lockReply
	if err := json.Unmarshal(r.Body, &got); err != nil || got.Key != "B" || got.LockedBy["second"] != 1 || got.Token <= first.Token {
		t.Errorf("waiting PUT got %s; want key B, held by second, a token above %d", r.Body, first.Token)
	}
	t.Logf("handoff: %v from sending DELETE to the waiter's 200", r.At.Sub(released))
}

func TestWaitTimesOutWith423(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	ls.call(t, "PUT", "/lock/prod", `{"key": "A", "lock_by": "first"}`)
	status, body := ls.call(t, "PUT", "/lock/prod?wait=200ms", `{"key": "B"}`)
	if status != http.StatusLocked || !strings.Contains(string(body), "timed out after 200ms") || !strings.Contains(string(body), `by first (1)`) {
		t.Errorf("PUT that waits in vain = %d %s; want 423 saying it timed out and who holds the lock", status, body)
	}
	if n := ls.waiting(t, "prod"); n != 0 {
		t.Errorf("%d requests still waiting after the timeout", n)
	}
}

func TestMaxWaitCapsWaits(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "LOCKER_MAX_WAIT": "300ms"})
	ls.call(t, "PUT", "/lock/prod", `{"key": "A"}`)
	status, body := ls.call(t, "PUT", "/lock/prod?wait=1h", `{"key": "B"}`)
	if status != http.StatusLocked || !strings.Contains(string(body), "timed out after 300ms") ||
		!strings.Contains(string(body), "the wait asked for, 1h0m0s, was cut to LOCKER_MAX_WAIT, 300ms") {
		t.Errorf("PUT ?wait=1h with LOCKER_MAX_WAIT=300ms = %d %s; want 423 after 300ms, saying the wait was cut", status, body)
	}
}

func TestClientThatLeavesIsNeverGranted(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	ls.call(t, "PUT", "/lock/prod", `{"key": "A"}`)
	goroutines := runtime.NumGoroutine()

	const leavers = 20
	ctx, cancel := context.WithCancel(context.Background())
	var results []<-chan testutil.PutResult
	for i := range leavers {
		results = append(results, testutil.PutAsync(ctx, ls.url, "/lock/prod?wait=1m", `{"key": "B", "lock_by": "b`+string(rune('a'+i))+`"}`))
	}
	testutil.WaitFor(t, "every PUT to queue", func() bool { return ls.waiting(t, "prod") == leavers })
	cancel()
	for _, ch := range results {
		if r := testutil.PutAnswer(t, ch); r.Status != 0 {
			t.Errorf("a cancelled PUT got an answer: %d %s", r.Status, r.Body)
		}
	}
	testutil.WaitFor(t, "the queue to empty", func() bool { return ls.waiting(t, "prod") == 0 })

	ls.call(t, "DELETE", "/lock/prod", `{"key": "A"}`)
	if got := ls.listLocks(t); len(got) != 0 {
		t.Errorf("after the holder left, GET /locks = %v; a client that went away was granted the lock", got)
	}
	http.DefaultClient.CloseIdleConnections()
	ls.client.CloseIdleConnections()
	testutil.WaitFor(t, "the waiters' goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines })
	testutil.WaitFor(t, "the log to show the abandoned requests", func() bool { return strings.Contains(ls.log.String(), "status=499") })
}

func TestShutdownAnswersWaiters(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	ls.call(t, "PUT", "/lock/prod", `{"key": "A"}`)
	waiter := testutil.PutAsync(context.Background(), ls.url, "/lock/prod?wait=1m", `{"key": "B"}`)
	testutil.WaitFor(t, "the PUT to queue", func() bool { return ls.waiting(t, "prod") == 1 })

	// Shutdown waits for handlers up to shutdownTimeout, and then fails:
	// a nil error says the waiter was let go in time.
	start := time.Now()
	if err := ls.shutdown(); err != nil {
		t.Fatalf("run after shutdown with a waiter = %v; want nil", err)
	}
	t.Logf("shutdown with a waiter took %v", time.Since(start).Round(time.Millisecond))
	r := testutil.PutAnswer(t, waiter)
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "shutting down") {
		t.Errorf("waiter during shutdown got %d %s; want 503 saying the server is shutting down", r.Status, r.Body)
	}
}

// TestWaitOutlivesServerTimeouts runs the server with read and write
// timeouts far shorter than a wait: the waiter must still be answered.
func TestWaitOutlivesServerTimeouts(t *testing.T) {
	short := timeouts{readHeader: time.Second, read: 200 * time.Millisecond, write: 200 * time.Millisecond, idle: time.Second}
	addr, tab := startWithTimeouts(t, short)
	url := "http://" + addr

	if status := testutil.HTTPDo(t, url, "PUT", "/lock/l", `{"key": "A"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d", status)
	}
	waiter := testutil.PutAsync(context.Background(), url, "/lock/l?wait=5s", `{"key": "B"}`)
	testutil.WaitFor(t, "the PUT to queue", func() bool { return len(enginetest.Get(t, tab, "l").Waiting) == 1 })
	time.Sleep(3 * short.read) // outlive both timeouts while queued
	if status := testutil.HTTPDo(t, url, "DELETE", "/lock/l", `{"key": "A"}`); status != http.StatusOK {
		t.Fatalf("DELETE = %d", status)
	}
	if r := testutil.PutAnswer(t, waiter); r.Status != http.StatusOK {
		t.Errorf("PUT that waited past the server's timeouts = %d %s; want 200", r.Status, r.Body)
	}
}

func TestLeaseExpiryAndForceReleaseAreLogged(t *testing.T) {
	ls := startRun(t, map[string]string{
		"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"),
		"AUTH_USER":     "ci", "AUTH_PASS": "s3cret",
	})
	if status, body := ls.call(t, "PUT", "/lock/leased", `{"key": "k", "lock_by": "build-7", "ttl": "1s"}`, "ci", "s3cret"); status != http.StatusOK {
		t.Fatalf("PUT = %d %s", status, body)
	}
	testutil.WaitFor(t, "the lease to run out", func() bool { return len(ls.listLocks(t, "ci", "s3cret")) == 0 })
	testutil.WaitFor(t, "the log to say which lease expired", func() bool {
		return strings.Contains(ls.log.String(), `msg="lease expired; hold released" lock=leased key=k holder=build-7 token=1`)
	})

	ls.call(t, "PUT", "/lock/stuck", `{"key": "k", "lock_by": "aborted-build"}`, "ci", "s3cret")
	status, body := ls.call(t, "DELETE", "/lock/stuck?force=true", "", "ci", "s3cret")
	if status != http.StatusOK || !strings.Contains(string(body), "force-released") {
		t.Fatalf("DELETE ?force=true = %d %s", status, body)
	}
	if !strings.Contains(ls.log.String(), `msg="lock force-released" lock=stuck user=ci remote=127.0.0.1:`) ||
		!strings.Contains(ls.log.String(), `holders="aborted-build (1)"`) {
		t.Errorf("the log does not say who force-released what:\n%s", ls.log)
	}
}

func TestDefaultTTL(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "LOCKER_DEFAULT_TTL": "1s"})
	ls.call(t, "PUT", "/lock/l", `{"key": "k"}`)
	testutil.WaitFor(t, "the default lease to run out", func() bool { return len(ls.listLocks(t)) == 0 })
}

// TestManyWaiters holds hundreds of waiters on one lock at once, then lets
// them through: same-key waiters are granted together.
func TestManyWaiters(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	ls.call(t, "PUT", "/lock/busy", `{"key": "A"}`)
	n := 300
	if testing.Short() {
		n = 100
	}
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: n}}
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("PUT", ls.url+"/lock/busy?wait=1m", strings.NewReader(fmt.Sprintf(`{"key": "B", "lock_by": "w%d"}`, i)))
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	testutil.WaitFor(t, "every waiter to queue", func() bool { return ls.waiting(t, "busy") == n })
	ls.call(t, "DELETE", "/lock/busy", `{"key": "A"}`)
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != http.StatusOK {
			t.Fatalf("a waiter got %d; want 200", s)
		}
	}
	var v lock.View
	_, body := ls.call(t, "GET", "/lock/busy", "")
	if err := json.Unmarshal(body, &v); err != nil || len(v.Holders) != n || len(v.Waiting) != 0 {
		t.Errorf("after the release: %d holders, %d waiting; want %d, 0", len(v.Holders), len(v.Waiting), n)
	}
}

// TestWaiterThatHangsUpIsNotLeftHolding queues a waiter, closes its
// connection, and releases the lock 0 to 1.5 ms later, over and over: the
// release can grant the departed waiter, which must then give the lock
// back rather than hold it for good. When the grant comes before the
// server has seen the hang-up (the reply is then lost on the wire, which no
// server can tell), the waiter's lease frees the lock: nothing is held past
// it, and the give-backs must be there.
func TestWaiterThatHangsUpIsNotLeftHolding(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	addr := strings.TrimPrefix(ls.url, "http://")
	const tries, lease = 400, time.Second
	byLease := 0
	for i := range tries {
		if status, body := ls.call(t, "PUT", "/lock/L", `{"key": "A"}`); status != http.StatusOK {
			t.Fatalf("PUT A = %d %s", status, body)
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf(`{"key": "B", "lock_by": "b", "ttl": %q}`, lease)
		fmt.Fprintf(conn, "PUT /lock/L?wait=5s HTTP/1.1\r\nHost: locker\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		testutil.WaitFor(t, "the waiter to queue", func() bool { return ls.waiting(t, "L") == 1 })
		conn.Close()
		time.Sleep(time.Duration(i%16) * 100 * time.Microsecond) // the race: 0 to 1.5 ms
		if status, body := ls.call(t, "DELETE", "/lock/L", `{"key": "A"}`); status != http.StatusOK {
			t.Fatalf("DELETE A = %d %s", status, body)
		}
		// A grant to the departed waiter is given back within moments, or
		// ends with its lease.
		released := time.Now()
		for {
			_, body := ls.call(t, "GET", "/lock/L", "")
			var v lock.View
			if err := json.Unmarshal(body, &v); err != nil {
				t.Fatal(err)
			}
			if len(v.Holders) == 0 && len(v.Waiting) == 0 {
				if time.Since(released) > lease/2 {
					byLease++
				}
				break
			}
			if time.Since(released) > lease+2*time.Second {
				t.Fatalf("try %d: a waiter that had hung up still holds the lock %v after the release, past its %v lease: %+v", i, time.Since(released), lease, v)
			}
			time.Sleep(time.Millisecond)
		}
	}
	givenBack := strings.Count(ls.log.String(), "lock given back: its waiter went away as it was granted")
	t.Logf("%d of %d tries: the grant was given back; %d freed by the lease (the grant came before the hang-up was seen)", givenBack, tries, byLease)
	if givenBack == 0 {
		t.Errorf("in %d tries no grant to a departed waiter was given back; want the race to be met and handled", tries)
	}
}

// TestAnonymousSameKeyJobsDoNotStarveAnotherKey sends jobs that give only
// a key, as the README's first example does, while a job with another key
// waits: they all default to the same requestor name, yet none of them is
// the holder coming back, so none may jump the queue.
func TestAnonymousSameKeyJobsDoNotStarveAnotherKey(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	if status, body := ls.call(t, "PUT", "/lock/staging", `{"key": "tests"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d %s", status, body)
	}
	upgrade := testutil.PutAsync(t.Context(), ls.url, "/lock/staging?wait=10s", `{"key": "upgrade"}`)
	testutil.WaitFor(t, "the upgrade to queue", func() bool { return ls.waiting(t, "staging") == 1 })
	for _, body := range []string{`{"key": "tests"}`, `{"key": "tests", "lock_by": "other-tests"}`} {
		if status, reply := ls.call(t, "PUT", "/lock/staging", body); status != http.StatusLocked {
			t.Errorf("PUT %s while another key waits = %d %s; want 423: it must not jump the queue", body, status, reply)
		}
	}
	// A holder that names itself is the same job coming back: granted.
	if status, reply := ls.call(t, "PUT", "/lock/staging", `{"key": "tests", "lock_by": "tests"}`); status != http.StatusOK {
		t.Errorf("PUT by the named holder = %d %s; want 200", status, reply)
	}
	for range 2 {
		if status, reply := ls.call(t, "DELETE", "/lock/staging", `{"key": "tests"}`); status != http.StatusOK {
			t.Fatalf("DELETE = %d %s", status, reply)
		}
	}
	if r := testutil.PutAnswer(t, upgrade); r.Status != http.StatusOK {
		t.Errorf("the upgrade = %d %s; want it granted once the tests let go", r.Status, r.Body)
	}
}

// TestGrantsAndReleasesAreLogged checks the log line of each grant (with
// how long a waiter waited) and each release.
func TestGrantsAndReleasesAreLogged(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	ls.call(t, "PUT", "/lock/prod", `{"key": "a", "lock_by": "deploy-1"}`)
	waiter := testutil.PutAsync(t.Context(), ls.url, "/lock/prod?wait=10s", `{"key": "b", "lock_by": "deploy-2"}`)
	testutil.WaitFor(t, "the waiter to queue", func() bool { return ls.waiting(t, "prod") == 1 })
	ls.call(t, "DELETE", "/lock/prod", `{"key": "a", "lock_by": "deploy-1"}`)
	if r := testutil.PutAnswer(t, waiter); r.Status != http.StatusOK {
		t.Fatalf("the waiter = %d %s", r.Status, r.Body)
	}
	for _, want := range []string{
		`msg="lock granted" lock=prod key=a holder=deploy-1 token=1`,
		`msg="lock released" lock=prod key=a holder=deploy-1 token=1 counts=1 now_free=false`,
		`msg="lock granted" lock=prod key=b holder=deploy-2 token=2 waited=`,
	} {
		testutil.WaitFor(t, "the log line "+want, func() bool { return strings.Contains(ls.log.String(), want) })
	}
}
