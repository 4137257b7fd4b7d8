package engine_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// Requests sent again with their Idempotency-Key while the first is still
// being answered, or long after: what a client whose connection died
// unnoticed, or whose reply was lost, sends. On every store.

// TestASecondRequestWithTheKeyTakesTheFirstsPlace: while a request with
// an Idempotency-Key waits, the same request sent again takes its place
// (the first stands down with 409) and is granted once: one count, not
// two. Sent again without a wait, it is refused with 409 and the first
// goes on waiting.
func TestASecondRequestWithTheKeyTakesTheFirstsPlace(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "l", "A", "a"); err != nil {
			t.Fatal(err)
		}
		first := make(chan error, 1)
		go func() {
			_, err := tab.Acquire(context.Background(), "l", keyed("B", "b", "k1", time.Minute))
			first <- err
		}()
		testutil.WaitFor(t, "the first request to queue", func() bool { return len(enginetest.Get(t, tab, "l").Waiting) == 1 })

		if _, err := tab.Acquire(context.Background(), "l", keyed("B", "b", "k1", 0)); !errors.Is(err, engine.ErrKeyBusy) {
			t.Errorf("the request sent again without a wait = %v; want engine.ErrKeyBusy", err)
		}
		second := make(chan error, 1)
		go func() {
			_, err := tab.Acquire(context.Background(), "l", keyed("B", "b", "k1", time.Minute))
			second <- err
		}()
		select {
		case err := <-first:
			if !errors.Is(err, engine.ErrKeyBusy) {
				t.Errorf("the first request, once the second took its place = %v; want engine.ErrKeyBusy", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the first request did not stand down")
		}
		if s := enginetest.Get(t, tab, "l"); len(s.Waiting) != 1 {
			t.Errorf("queue after the second request came = %+v; want it alone, in the first's place", s.Waiting)
		}
		if _, _, err := tab.Release(context.Background(), "l", "A", "a", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, second, "the second request")
		if n := enginetest.HolderOf(enginetest.Get(t, tab, "l"), "b").Count; n != 1 {
			t.Errorf("b holds %d counts after two requests with one key; want 1", n)
		}
	})
}

// TestAGrantNotTakenUpGoesToTheRetry: a waiter granted whose request never
// took the grant up (its connection died, its answer was lost); the same
// request sent again takes that grant up at once, one count.
func TestAGrantNotTakenUpGoesToTheRetry(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "l", "A", "a"); err != nil {
			t.Fatal(err)
		}
		req := keyed("B", "b", "k1", time.Minute)
		if err := engine.Update(tab.Engine, context.Background(), []string{"l"}, txn.Options{NewWait: true}, func(tx txn.Tx) error {
			engine.Enqueue(tx, []string{"l"}, req) // queued by a request that is gone
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.Release(context.Background(), "l", "A", "a", false, nil); err != nil {
			t.Fatal(err)
		}
		req.Wait = 0
		s, err := tab.Acquire(context.Background(), "l", req)
		if err != nil || enginetest.HolderOf(s, "b").Count != 1 {
			t.Fatalf("the retry = %+v, %v; want the grant, one count", s.Lock, err)
		}
		if s := enginetest.Get(t, tab, "l"); enginetest.HolderOf(s, "b").Count != 1 || len(s.Waiting) != 0 {
			t.Errorf("after the retry: %+v; want b holding once, no one waiting", s)
		}
		again, err := tab.Acquire(context.Background(), "l", req)
		if err != nil || !again.Replayed || enginetest.HolderOf(again, "b").Count != 1 {
			t.Errorf("a third send = %+v, %v; want the answer replayed", again, err)
		}
	})
}

// TestAReplayedGrantThatEndedIsRefused: a grant answered again after its
// hold ended (the lease ran out, another client took the lock) must not
// pass for a live one: 409, saying so.
func TestAReplayedGrantThatEndedIsRefused(t *testing.T) {
	t.Parallel() // mostly waits
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
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
		testutil.WaitFor(t, "the lease to run out", func() bool { return enginetest.Get(t, tab, "l").Free() })
		if _, err := enginetest.Acquire(tab, "l", "B", "b"); err != nil {
			t.Fatal(err)
		}
		if s, err := tab.Acquire(context.Background(), "l", req); !errors.Is(err, engine.ErrGrantEnded) {
			t.Errorf("sent again after its hold ended = %+v, %v; want engine.ErrGrantEnded", s.Lock, err)
		}
	})
}

// TestAClaimWhoseAnswerWasLost: a waiter's claim commits but its answer
// is lost (the connection failed at COMMIT); the next look finds the
// waiter gone, and must answer the grant it took, not "lost its place".
func TestAClaimWhoseAnswerWasLost(t *testing.T) {
	for _, withKey := range []bool{true, false} {
		enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
			tab := open(t)
			if _, err := enginetest.Acquire(tab, "l", "A", "a"); err != nil {
				t.Fatal(err)
			}
			req := keyed("B", "b", "k1", time.Minute)
			if !withKey {
				req.Idem = nil
			}
			var w txn.Waiter
			if err := engine.Update(tab.Engine, context.Background(), []string{"l"}, txn.Options{NewWait: true}, func(tx txn.Tx) error {
				w = engine.Enqueue(tx, []string{"l"}, req)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := tab.Release(context.Background(), "l", "A", "a", false, nil); err != nil {
				t.Fatal(err)
			}
			if _, granted, err := engine.Look(tab.Engine, []string{"l"}, w.ID, req, false, false); !granted || err != nil {
				t.Fatalf("the claim = %v, %v; want it granted", granted, err)
			}
			// Its answer was lost: the engine only knows it may have gone through.
			got, granted, err := engine.Look(tab.Engine, []string{"l"}, w.ID, req, true, false)
			if s := got["l"]; !granted || err != nil || enginetest.HolderOf(s, "b").Count != 1 {
				t.Errorf("with key %v, the look after a claim whose answer was lost = %+v, %v, %v; want the grant", withKey, s.Lock, granted, err)
			}
		})
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
			clock := testutil.NewFakeClock()
			tab := enginetest.Load(t, filepath.Join(t.TempDir(), "locks.yml"), nil, clock.Now)
			if _, err := enginetest.Acquire(tab, "l", "A", "a"); err != nil {
				t.Fatal(err)
			}
			b := engine.Request{Request: lock.Request{Key: "B", Requestor: "b", Named: true}, Wait: 20 * time.Millisecond,
				Idem: &engine.IdempotencyKey{Scope: "PUT l step-b", Fingerprint: "fb"}}
			if _, err := tab.Acquire(context.Background(), "l", b); !errors.Is(err, engine.ErrHeld) {
				t.Fatalf("b's first round = %v; want it to time out", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c := enginetest.Queued(t, ctx, tab, "l", "C", "c")
			clock.Advance(tt.away)
			b.Wait = time.Hour
			bDone := make(chan error, 1)
			go func() { _, err := tab.Acquire(ctx, "l", b); bDone <- err }()
			testutil.WaitFor(t, "b to queue again", func() bool { return len(enginetest.Get(t, tab, "l").Waiting) == 2 })
			if _, _, err := tab.Release(context.Background(), "l", "A", "a", false, nil); err != nil {
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
