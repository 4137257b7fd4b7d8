package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// Requests sent again with their Idempotency-Key while the first is still
// being answered, or long after: what a client whose connection died
// unnoticed, or whose reply was lost, sends. On every store.

// keyed is a request for the lock "l" by requestor with key, with an
// Idempotency-Key of its own (idem).
func keyed(key, requestor, idem string, wait time.Duration) acquireRequest {
	return acquireRequest{Request: lock.Request{Key: key, Requestor: requestor, Named: true}, Wait: wait,
		Idem: &idemRequest{scope: "PUT l " + idem, fingerprint: "f-" + idem}}
}

// TestASecondRequestWithTheKeyTakesTheFirstsPlace: while a request with
// an Idempotency-Key waits, the same request sent again takes its place
// (the first stands down with 409) and is granted once: one count, not
// two. Sent again without a wait, it is refused with 409 and the first
// goes on waiting.
func TestASecondRequestWithTheKeyTakesTheFirstsPlace(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := acquire(tab, "l", "A", "a"); err != nil {
			t.Fatal(err)
		}
		first := make(chan error, 1)
		go func() {
			_, err := tab.Acquire(context.Background(), "l", keyed("B", "b", "k1", time.Minute))
			first <- err
		}()
		testutil.WaitFor(t, "the first request to queue", func() bool { return len(tab.get("l").Waiting) == 1 })

		if _, err := tab.Acquire(context.Background(), "l", keyed("B", "b", "k1", 0)); !errors.Is(err, errKeyBusy) {
			t.Errorf("the request sent again without a wait = %v; want errKeyBusy", err)
		}
		second := make(chan error, 1)
		go func() {
			_, err := tab.Acquire(context.Background(), "l", keyed("B", "b", "k1", time.Minute))
			second <- err
		}()
		select {
		case err := <-first:
			if !errors.Is(err, errKeyBusy) {
				t.Errorf("the first request, once the second took its place = %v; want errKeyBusy", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the first request did not stand down")
		}
		if s := tab.get("l"); len(s.Waiting) != 1 {
			t.Errorf("queue after the second request came = %+v; want it alone, in the first's place", s.Waiting)
		}
		if _, _, err := tab.Release("l", "A", "a", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, second, "the second request")
		if n := holderOf(tab.get("l"), "b").Count; n != 1 {
			t.Errorf("b holds %d counts after two requests with one key; want 1", n)
		}
	})
}

// TestAGrantNotTakenUpGoesToTheRetry: a waiter granted whose request never
// took the grant up (its connection died, its answer was lost); the same
// request sent again takes that grant up at once, one count.
func TestAGrantNotTakenUpGoesToTheRetry(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := acquire(tab, "l", "A", "a"); err != nil {
			t.Fatal(err)
		}
		req := keyed("B", "b", "k1", time.Minute)
		if err := tab.update(context.Background(), []string{"l"}, txn.Options{NewWait: true}, func(tx txn.Tx) error {
			enqueue(tx, []string{"l"}, req) // queued by a request that is gone
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.Release("l", "A", "a", false, nil); err != nil {
			t.Fatal(err)
		}
		req.Wait = 0
		s, err := tab.Acquire(context.Background(), "l", req)
		if err != nil || holderOf(s, "b").Count != 1 {
			t.Fatalf("the retry = %+v, %v; want the grant, one count", s.Lock, err)
		}
		if s := tab.get("l"); holderOf(s, "b").Count != 1 || len(s.Waiting) != 0 {
			t.Errorf("after the retry: %+v; want b holding once, no one waiting", s)
		}
		again, err := tab.Acquire(context.Background(), "l", req)
		if err != nil || !again.Replayed || holderOf(again, "b").Count != 1 {
			t.Errorf("a third send = %+v, %v; want the answer replayed", again, err)
		}
	})
}

// TestAReplayedGrantThatEndedIsRefused: a grant answered again after its
// hold ended (the lease ran out, another client took the lock) must not
// pass for a live one: 409, saying so.
func TestAReplayedGrantThatEndedIsRefused(t *testing.T) {
	t.Parallel() // mostly waits
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		req := keyed("A", "a", "k1", 0)
		req.TTL = time.Second
		first, err := tab.Acquire(context.Background(), "l", req)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := tab.Acquire(context.Background(), "l", req); err != nil || !again.Replayed || again.Token != first.Token {
			t.Fatalf("sent again while held = %+v, %v; want the first answer", again, err)
		}
		testutil.WaitFor(t, "the lease to run out", func() bool { return tab.get("l").Free() })
		if _, err := acquire(tab, "l", "B", "b"); err != nil {
			t.Fatal(err)
		}
		if s, err := tab.Acquire(context.Background(), "l", req); !errors.Is(err, errGrantEnded) {
			t.Errorf("sent again after its hold ended = %+v, %v; want errGrantEnded", s.Lock, err)
		}
	})
}

// TestAClaimWhoseAnswerWasLost: a waiter's claim commits but its answer
// is lost (the connection failed at COMMIT); the next look finds the
// waiter gone, and must answer the grant it took, not "lost its place".
func TestAClaimWhoseAnswerWasLost(t *testing.T) {
	for _, withKey := range []bool{true, false} {
		forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
			tab := open(t)
			if _, err := acquire(tab, "l", "A", "a"); err != nil {
				t.Fatal(err)
			}
			req := keyed("B", "b", "k1", time.Minute)
			if !withKey {
				req.Idem = nil
			}
			var w txn.Waiter
			if err := tab.update(context.Background(), []string{"l"}, txn.Options{NewWait: true}, func(tx txn.Tx) error {
				w = enqueue(tx, []string{"l"}, req)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := tab.Release("l", "A", "a", false, nil); err != nil {
				t.Fatal(err)
			}
			wt := &wait{e: tab, names: []string{"l"}, id: w.ID, req: req}
			if _, granted, err := wt.claim(context.Background(), false, false); !granted || err != nil {
				t.Fatalf("the claim = %v, %v; want it granted", granted, err)
			}
			wt.uncertain = true // its answer was lost: the engine only knows it may have gone through
			got, granted, err := wt.claim(context.Background(), false, false)
			if s := got["l"]; !granted || err != nil || holderOf(s, "b").Count != 1 {
				t.Errorf("with key %v, the look after a claim whose answer was lost = %+v, %v, %v; want the grant", withKey, s.Lock, granted, err)
			}
		})
	}
}
