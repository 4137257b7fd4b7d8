package engine_test

import (
	"context"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

func TestQueueIsFirstComeFirstServed(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		ctx := context.Background()
		if _, err := enginetest.Acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		b1 := enginetest.Queued(t, ctx, tab, "l", "B", "b1")
		a2 := enginetest.Queued(t, ctx, tab, "l", "A", "a2") // shares the holders' key, but b1 came first
		b3 := enginetest.Queued(t, ctx, tab, "l", "B", "b3")
		if got, want := waitingOrder(enginetest.Get(t, tab, "l")), []string{"b1", "a2", "b3"}; !reflect.DeepEqual(got, want) {
			t.Fatalf("queue = %v; want %v", got, want)
		}

		if _, _, err := tab.Release(context.Background(), "l", "A", "a0", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, b1, "b1")
		if granted(t, a2) || granted(t, b3) {
			t.Fatal("a waiter behind the head's batch was granted")
		}
		if got, want := briefOf(enginetest.Get(t, tab, "l").Lock), (brief{"B", map[string]int{"b1": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("lock = %v; want %v", got, want)
		}

		if _, _, err := tab.Release(context.Background(), "l", "B", "b1", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, a2, "a2")
		if granted(t, b3) {
			t.Fatal("b3 was granted while a2 holds the lock with another key")
		}
		if _, _, err := tab.Release(context.Background(), "l", "A", "a2", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, b3, "b3")
	})
}

func TestQueueGrantsSameKeyWaitersTogether(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		ctx := context.Background()
		if _, err := enginetest.Acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		b1 := enginetest.Queued(t, ctx, tab, "l", "B", "b1")
		b2 := enginetest.Queued(t, ctx, tab, "l", "B", "b2")
		b3 := enginetest.Queued(t, ctx, tab, "l", "B", "b3")
		c4 := enginetest.Queued(t, ctx, tab, "l", "C", "c4")
		b5 := enginetest.Queued(t, ctx, tab, "l", "B", "b5")

		if _, _, err := tab.Release(context.Background(), "l", "A", "a0", false, nil); err != nil {
			t.Fatal(err)
		}
		for i, done := range []<-chan error{b1, b2, b3} {
			mustGrant(t, done, []string{"b1", "b2", "b3"}[i])
		}
		if granted(t, c4) || granted(t, b5) {
			t.Fatal("c4 or b5 was granted; c4 has another key and b5 is behind it")
		}
		s := enginetest.Get(t, tab, "l")
		if got, want := briefOf(s.Lock), (brief{"B", map[string]int{"b1": 1, "b2": 1, "b3": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("lock = %v; want %v", got, want)
		}
		if got, want := waitingOrder(s), []string{"c4", "b5"}; !reflect.DeepEqual(got, want) {
			t.Errorf("queue = %v; want %v", got, want)
		}
	})
}

func TestNewRequestsDoNotJumpTheQueue(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		b1 := enginetest.Queued(t, context.Background(), tab, "l", "B", "b1")

		// Same key as the holder, but b1 is waiting: no barging.
		_, err := enginetest.Acquire(tab, "l", "A", "a1")
		if !errors.Is(err, engine.ErrHeld) || !strings.Contains(err.Error(), "does not jump the queue") {
			t.Errorf("PUT with the holders' key past a queued waiter = %v; want engine.ErrHeld about the queue", err)
		}
		// A holder taking its lock again is granted at once.
		s, err := enginetest.Acquire(tab, "l", "A", "a0")
		if err != nil || enginetest.HolderOf(s, "a0").Count != 2 {
			t.Errorf("re-entrant PUT = %v, count %d; want granted, count 2", err, enginetest.HolderOf(s, "a0").Count)
		}
		if granted(t, b1) {
			t.Fatal("b1 was granted while a0 holds the lock")
		}
	})
}

func TestAbandonedWaiterLeavesTheQueue(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		goroutines := runtime.NumGoroutine()
		ctx, cancel := context.WithCancel(context.Background())
		b1 := enginetest.Queued(t, ctx, tab, "l", "B", "b1")
		a2 := enginetest.Queued(t, context.Background(), tab, "l", "A", "a2")

		cancel() // b1's client goes away
		select {
		case err := <-b1:
			if !errors.Is(err, engine.ErrClientGone) {
				t.Errorf("abandoned wait = %v; want engine.ErrClientGone", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("abandoned waiter did not return")
		}
		// With b1 gone, a2 is at the head and shares the holders' key.
		mustGrant(t, a2, "a2")
		if got, want := briefOf(enginetest.Get(t, tab, "l").Lock), (brief{"A", map[string]int{"a0": 1, "a2": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("lock = %v; want %v", got, want)
		}
		if n := len(enginetest.Get(t, tab, "l").Waiting); n != 0 {
			t.Errorf("%d waiters left in the queue; want 0", n)
		}
		testutil.WaitFor(t, "waiter goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines })
	})
}

func TestWaitTimesOut(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		_, err := tab.Acquire(context.Background(), "l", engine.Request{Request: lock.Request{Key: "B", Requestor: "b1"}, Wait: 20 * time.Millisecond})
		if !errors.Is(err, engine.ErrHeld) || !strings.Contains(err.Error(), "timed out after 20ms") || !strings.Contains(err.Error(), `key "A" by a0 (1)`) {
			t.Errorf("wait that runs out = %v; want engine.ErrHeld saying it timed out and who holds the lock", err)
		}
		if n := len(enginetest.Get(t, tab, "l").Waiting); n != 0 {
			t.Errorf("%d waiters left after a timeout; want 0", n)
		}
	})
}

func TestShutdownEndsWaits(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancelCause(context.Background())
		b1 := enginetest.Queued(t, ctx, tab, "l", "B", "b1")
		cancel(engine.ErrClosed)
		if err := <-b1; !errors.Is(err, engine.ErrClosed) {
			t.Errorf("wait during shutdown = %v; want engine.ErrClosed", err)
		}
	})
}

// TestGrantRaceWithLeaving: a waiter is granted before it notices its
// wait ended. Ending the wait, under the lock's transaction, must take the
// grant up instead of dropping it.
func TestGrantRaceWithLeaving(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		req := engine.Request{Request: lock.Request{Key: "B", Requestor: "b1"}, Wait: time.Hour}
		var w txn.Waiter
		if err := engine.Update(tab.Engine, context.Background(), []string{"l"}, txn.Options{NewWait: true}, func(tx txn.Tx) error {
			w = engine.Enqueue(tx, []string{"l"}, req) // queued, with no request waiting on it
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.Release(context.Background(), "l", "A", "a0", false, nil); err != nil {
			t.Fatal(err)
		}
		got, granted, err := engine.Look(tab.Engine, []string{"l"}, w.ID, req, false, true)
		s := got["l"]
		if err != nil || !granted || enginetest.HolderOf(s, "b1").Count != 1 {
			t.Errorf("ending the wait after the grant = %+v, %v, %v; want the granted lock", s.Lock, granted, err)
		}
		if s := enginetest.Get(t, tab, "l"); len(s.Waiting) != 0 || enginetest.HolderOf(s, "b1").Count != 1 {
			t.Errorf("after the grant was taken up: %+v; want b1 holding, no one waiting", s)
		}
	})
}

// TestRefusalCountsWaitersByKey checks what a 423 says of the queue: how
// many wait first, and how many of them with another key.
func TestRefusalCountsWaitersByKey(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "l", "k", "a"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		enginetest.Queued(t, ctx, tab, "l", "x", "b")
		enginetest.Queued(t, ctx, tab, "l", "k", "c")
		_, err := enginetest.Acquire(tab, "l", "k", "d")
		if want := `"l" has 2 requests waiting first (1 with another key)`; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("refusal = %v; want it to say %s", err, want)
		}
	})
}
