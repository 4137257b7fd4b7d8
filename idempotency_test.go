package main

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestRetryAfterALostReplyCountsOnce takes a lock through a proxy that
// loses the reply, retries with the same Idempotency-Key, and unlocks:
// the lock ends free, as the client meant, instead of held with count 1.
func TestRetryAfterALostReplyCountsOnce(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	proxy := testutil.DropFirstReply(t, ls.url, "PUT")
	const body = `{"key": "deploy", "lock_by": "job-1"}`
	if _, _, err := testutil.SendWithKey(t, proxy, "PUT", "/lock/prod", body, "step-1"); err == nil {
		t.Fatal("the proxy passed the first reply on; the test needs it lost")
	}
	resp, reply, err := testutil.SendWithKey(t, proxy, "PUT", "/lock/prod", body, "step-1")
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Idempotent-Replayed") != "true" ||
		!strings.Contains(reply, `"locked_by":{"job-1":1}`) {
		t.Fatalf("retry = %v %v %s; want 200, Idempotent-Replayed: true, count 1", resp, err, reply)
	}
	resp, reply, err = testutil.SendWithKey(t, proxy, "DELETE", "/lock/prod", body, "step-2")
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
		resp, reply, err := testutil.SendWithKey(t, ls.url, "PUT", "/lock/prod", body, key)
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
	tab := enginetest.Load(t, path, d, time.Now)
	idem := &engine.IdempotencyKey{Scope: "PUT l k1", Fingerprint: "f1"}
	req := engine.Request{Request: lock.Request{Key: "k", Requestor: "a", Named: true}, Idem: idem}
	if _, err := tab.Acquire(context.Background(), "l", req); err != nil {
		t.Fatal(err)
	}
	d.Fail("jwrite")
	failed := engine.Request{Request: lock.Request{Key: "k", Requestor: "b", Named: true}, Idem: &engine.IdempotencyKey{Scope: "PUT l k2", Fingerprint: "f2"}}
	if _, err := tab.Acquire(context.Background(), "l", failed); !errors.Is(err, engine.ErrNotSaved) {
		t.Fatalf("acquire with the journal failing = %v; want engine.ErrNotSaved", err)
	}
	d.Fail("")

	reloaded := enginetest.Load(t, path, nil, time.Now) // as after kill -9: the journal alone
	s, err := reloaded.Acquire(context.Background(), "l", req)
	if err != nil || !s.Replayed || enginetest.HolderOf(s, "a").Count != 1 {
		t.Errorf("repeat after a crash = %+v, %v; want the first answer replayed, count 1", s, err)
	}
	s, err = reloaded.Acquire(context.Background(), "l", failed)
	if err != nil || s.Replayed || enginetest.HolderOf(s, "b").Count != 1 {
		t.Errorf("the request whose write failed, sent again = %+v, %v; want it taken as new", s, err)
	}
}
