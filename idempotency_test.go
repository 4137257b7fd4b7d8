package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// send makes one request with an Idempotency-Key through base.
func sendWithKey(tb testing.TB, base, method, path, body, key string) (*http.Response, string, error) {
	tb.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp, string(data), err
}

// TestRetryAfterALostReplyCountsOnce takes a lock through a proxy that
// loses the reply, retries with the same Idempotency-Key, and unlocks:
// the lock ends free, as the client meant, instead of held with count 1.
func TestRetryAfterALostReplyCountsOnce(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	proxy := testutil.DropFirstReply(t, ls.url, "PUT")
	const body = `{"key": "deploy", "lock_by": "job-1"}`
	if _, _, err := sendWithKey(t, proxy, "PUT", "/lock/prod", body, "step-1"); err == nil {
		t.Fatal("the proxy passed the first reply on; the test needs it lost")
	}
	resp, reply, err := sendWithKey(t, proxy, "PUT", "/lock/prod", body, "step-1")
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Idempotent-Replayed") != "true" ||
		!strings.Contains(reply, `"locked_by":{"job-1":1}`) {
		t.Fatalf("retry = %v %v %s; want 200, Idempotent-Replayed: true, count 1", resp, err, reply)
	}
	resp, reply, err = sendWithKey(t, proxy, "DELETE", "/lock/prod", body, "step-2")
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(reply, `"released":1`) {
		t.Fatalf("unlock = %v %v %s", resp, err, reply)
	}
	if got := ls.listLocks(t); len(got) != 0 {
		t.Errorf("after lock, lost reply, retry and unlock, the locks are %v; want none", got)
	}
}

// TestIdempotencyKeyRules checks what a key does: a repeat is answered as
// the first time and changes nothing, across a restart too; a key reused
// with another request is a 422; a request refused (or timed out) is not
// remembered, so the same key may try again.
func TestIdempotencyKeyRules(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": path})
	put := func(body, key string) (*http.Response, string) {
		t.Helper()
		resp, reply, err := sendWithKey(t, ls.url, "PUT", "/lock/prod", body, key)
		if err != nil {
			t.Fatal(err)
		}
		return resp, reply
	}
	first, firstReply := put(`{"key": "a", "lock_by": "x"}`, "k1")
	again, againReply := put(`{"key": "a", "lock_by": "x"}`, "k1")
	if first.StatusCode != 200 || again.StatusCode != 200 || againReply != firstReply || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("repeat = %d %s; want the first answer again (%d %s), marked as replayed", again.StatusCode, againReply, first.StatusCode, firstReply)
	}
	if r, reply := put(`{"key": "a", "lock_by": "y"}`, "k1"); r.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(reply, "with another request") {
		t.Errorf("key reused with another body = %d %s; want 422", r.StatusCode, reply)
	}
	if r, _ := put(`{"key": "b", "lock_by": "z"}`, "k2"); r.StatusCode != http.StatusLocked {
		t.Fatalf("PUT with another key = %d; want 423", r.StatusCode)
	}
	ls.call(t, "DELETE", "/lock/prod", `{"key": "a", "lock_by": "x"}`)
	if r, reply := put(`{"key": "b", "lock_by": "z"}`, "k2"); r.StatusCode != 200 || r.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("the refused request sent again = %d %s (replayed %q); want it taken as new", r.StatusCode, reply, r.Header.Get("Idempotent-Replayed"))
	}

	if err := ls.shutdown(); err != nil {
		t.Fatal(err)
	}
	ls = startRun(t, map[string]string{"LOCKER_CONFIG": path})
	if r, reply := put(`{"key": "b", "lock_by": "z"}`, "k2"); r.StatusCode != 200 || r.Header.Get("Idempotent-Replayed") != "true" || !strings.Contains(reply, `"locked_by":{"z":1}`) {
		t.Errorf("repeat after a restart = %d %s; want the first answer, count 1", r.StatusCode, reply)
	}
	for _, bad := range []string{strings.Repeat("k", 300), "a\tb", "k\xffk"} {
		if r, _ := put(`{"key": "b", "lock_by": "z"}`, bad); r.StatusCode != http.StatusBadRequest {
			t.Errorf("Idempotency-Key %q = %d; want 400", bad, r.StatusCode)
		}
	}
}

// TestRememberedOutcomesSurviveACrash: an outcome is durable with its
// change (no checkpoint ran), and one whose change failed to be written
// is not remembered.
func TestRememberedOutcomesSurviveACrash(t *testing.T) {
	d := &faults.Faulty{}
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, d, time.Now)
	idem := &idemRequest{scope: "PUT l k1", fingerprint: "f1"}
	req := acquireRequest{Request: lock.Request{Key: "k", Requestor: "a", Named: true}, Idem: idem}
	if _, err := tab.Acquire(context.Background(), "l", req); err != nil {
		t.Fatal(err)
	}
	d.Fail("jwrite")
	failed := acquireRequest{Request: lock.Request{Key: "k", Requestor: "b", Named: true}, Idem: &idemRequest{scope: "PUT l k2", fingerprint: "f2"}}
	if _, err := tab.Acquire(context.Background(), "l", failed); !errors.Is(err, errSave) {
		t.Fatalf("acquire with the journal failing = %v; want errSave", err)
	}
	d.Fail("")

	reloaded := loadTestTable(t, path, nil, time.Now) // as after kill -9: the journal alone
	s, err := reloaded.Acquire(context.Background(), "l", req)
	if err != nil || !s.Replayed || holderOf(s, "a").Count != 1 {
		t.Errorf("repeat after a crash = %+v, %v; want the first answer replayed, count 1", s, err)
	}
	s, err = reloaded.Acquire(context.Background(), "l", failed)
	if err != nil || s.Replayed || holderOf(s, "b").Count != 1 {
		t.Errorf("the request whose write failed, sent again = %+v, %v; want it taken as new", s, err)
	}
}

// TestWaiterComingBackKeepsItsPlace: a waiter with an Idempotency-Key
// whose wait runs out, and that asks again with the key within 30 s, is
// granted before a request that queued in between; one that comes back
// later goes to the back.
func TestWaiterComingBackKeepsItsPlace(t *testing.T) {
	for _, tt := range []struct {
		name  string
		away  time.Duration // how long it is gone
		first string        // who is granted when the holder lets go
	}{
		{"back within 30 s", 10 * time.Second, "b"},
		{"back after 30 s", 31 * time.Second, "c"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			tab := loadTestTable(t, filepath.Join(t.TempDir(), "locks.yml"), nil, clock.Now)
			if _, err := acquire(tab, "l", "A", "a"); err != nil {
				t.Fatal(err)
			}
			b := acquireRequest{Request: lock.Request{Key: "B", Requestor: "b", Named: true}, Wait: 20 * time.Millisecond,
				Idem: &idemRequest{scope: "PUT l step-b", fingerprint: "fb"}}
			if _, err := tab.Acquire(context.Background(), "l", b); !errors.Is(err, errLockHeld) {
				t.Fatalf("b's first round = %v; want it to time out", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c := queued(t, ctx, tab, "l", "C", "c")
			clock.Advance(tt.away)
			b.Wait = time.Hour
			bDone := make(chan error, 1)
			go func() { _, err := tab.Acquire(ctx, "l", b); bDone <- err }()
			testutil.WaitFor(t, "b to queue again", func() bool { return len(tab.get("l").Waiting) == 2 })
			if _, _, err := tab.Release("l", "A", "a", false, nil); err != nil {
				t.Fatal(err)
			}
			if tt.first == "b" {
				mustGrant(t, bDone, "b")
				if granted(t, c) {
					t.Error("c was granted too")
				}
			} else {
				mustGrant(t, c, "c")
			}
		})
	}
}
