package engine_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// The engine tests' helpers.

// brief is the part of a lock the original API showed.
type brief struct {
	Key      string
	LockedBy map[string]int
}

func briefOf(l lock.Lock) brief {
	if l.Free() {
		return brief{}
	}
	return brief{Key: l.Key, LockedBy: l.LockedBy()}
}

// step is one call on the table and what it must return.
type step struct {
	op           string // "acquire", "release" or "release-all"
	key, by      string
	wantErr      error
	wantReleased int
}

// granted reports whether the queued request behind done was granted,
// without waiting.
func granted(tb testing.TB, done <-chan error) bool {
	tb.Helper()
	select {
	case err := <-done:
		if err != nil {
			tb.Fatalf("queued request failed: %v", err)
		}
		return true
	default:
		return false
	}
}

// mustGrant waits for the queued request behind done to be granted.
func mustGrant(tb testing.TB, done <-chan error, who string) {
	tb.Helper()
	select {
	case err := <-done:
		if err != nil {
			tb.Fatalf("%s: %v", who, err)
		}
	case <-time.After(10 * time.Second):
		tb.Fatalf("%s was not granted", who)
	}
}

func waitingOrder(s engine.Snapshot) []string {
	var out []string
	for _, w := range s.Waiting {
		out = append(out, w.Requestor)
	}
	return out
}

// history returns the events of the lock called name, oldest first,
// checking that their IDs rise and that the pages agree with one another.
func history(tb testing.TB, tab *enginetest.Table, name string) []enginetest.Said {
	tb.Helper()
	events, err := tab.History(name, 0, 1000)
	if err != nil {
		tb.Fatal(err)
	}
	var out []enginetest.Said
	for i := len(events) - 1; i >= 0; i-- {
		e := events[i]
		if i < len(events)-1 && e.ID <= events[i+1].ID {
			tb.Fatalf("event %d comes before event %d, newest first: IDs must fall", events[i+1].ID, e.ID)
		}
		if e.Lock != name {
			tb.Fatalf("event %d of %q names lock %q", e.ID, name, e.Lock)
		}
		out = append(out, enginetest.SaidOf(e))
	}
	if len(events) > 1 {
		older, err := tab.History(name, events[0].ID, 1)
		if err != nil || len(older) != 1 || older[0].ID != events[1].ID {
			tb.Fatalf("the page before event %d = %v, %v; want event %d", events[0].ID, older, err, events[1].ID)
		}
	}
	return out
}

func lines(events []enginetest.Said) string {
	var s string
	for _, e := range events {
		s += fmt.Sprintf("  %+v\n", e)
	}
	return s
}

// limited is a request for name's lock with key, as requestor, capped at
// limit holders.
func limited(tab *enginetest.Table, name, key, requestor string, limit int, wait time.Duration) (engine.Snapshot, error) {
	return tab.Acquire(context.Background(), name, engine.Request{Request: lock.Request{Key: key, Requestor: requestor, Named: true, Limit: limit}, Wait: wait})
}

func req(key, requestor string) lock.Request {
	return lock.Request{Key: key, Requestor: requestor, Named: true}
}

func mustAcquire(t *testing.T, e *enginetest.Table, name string, r lock.Request) engine.Snapshot {
	t.Helper()
	s, err := e.Acquire(context.Background(), name, engine.Request{Request: r})
	if err != nil {
		t.Fatalf("acquire %s with %q by %s: %v", name, r.Key, r.Requestor, err)
	}
	return s
}

func mustRelease(t *testing.T, e *enginetest.Table, name, key, requestor string) engine.Snapshot {
	t.Helper()
	s, n, err := e.Release(context.Background(), name, key, requestor, false, nil)
	if err != nil || n != 1 {
		t.Fatalf("release %s by %s = %d, %v", name, requestor, n, err)
	}
	return s
}

func waitForQueue(t *testing.T, e *enginetest.Table, name string, n int) {
	t.Helper()
	testutil.WaitFor(t, fmt.Sprintf("%d waiting on %s", n, name), func() bool {
		s, err := e.Get(name)
		return err == nil && len(s.Waiting) == n
	})
}

// claimRequest is a claim of count members with key, as requestor.
func claimRequest(key, requestor string, count int, wait time.Duration) engine.Request {
	return engine.Request{Request: lock.Request{Key: key, Requestor: requestor, Named: true}, Wait: wait, Count: count}
}

// claimed returns the members in got, sorted.
func claimed(got map[string]engine.Snapshot) []string {
	var names []string
	for n := range got {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// queuedClaim starts a waiting claim in the background and returns once
// it is in the pool's queue.
func queuedClaim(tb testing.TB, tab *enginetest.Table, pool, requestor string, count int) <-chan map[string]engine.Snapshot {
	tb.Helper()
	v, err := tab.Pool(pool)
	if err != nil {
		tb.Fatal(err)
	}
	before := len(v.Waiting)
	done := make(chan map[string]engine.Snapshot, 1)
	go func() {
		got, err := tab.Claim(context.Background(), pool, claimRequest(requestor, requestor, count, time.Hour))
		if err != nil {
			tb.Errorf("%s's claim: %v", requestor, err)
		}
		done <- got
	}()
	testutil.WaitFor(tb, "the claim to join the pool's queue", func() bool {
		v, err := tab.Pool(pool)
		return err == nil && len(v.Waiting) > before
	})
	return done
}

// keyed is a request for the lock "l" by requestor with key, with an
// Idempotency-Key of its own (idem).
func keyed(key, requestor, idem string, wait time.Duration) engine.Request {
	return engine.Request{Request: lock.Request{Key: key, Requestor: requestor, Named: true}, Wait: wait,
		Idem: &engine.IdempotencyKey{Scope: "PUT l " + idem, Fingerprint: "f-" + idem}}
}

// setRequest is a request for a set with key and requestor.
func setRequest(key, requestor string, wait time.Duration) engine.Request {
	return engine.Request{Request: lock.Request{Key: key, Requestor: requestor, Named: true}, Wait: wait}
}

// queuedSet starts AcquireSet with a long wait in the background and
// returns once the request is in the queue of names[0].
func queuedSet(tb testing.TB, ctx context.Context, tab *enginetest.Table, names []string, key, requestor string) <-chan error {
	tb.Helper()
	before := len(enginetest.Get(tb, tab, names[0]).Waiting)
	done := make(chan error, 1)
	go func() {
		_, err := tab.AcquireSet(ctx, names, setRequest(key, requestor, time.Hour))
		done <- err
	}()
	testutil.WaitFor(tb, "the set to join the queues", func() bool { return len(enginetest.Get(tb, tab, names[0]).Waiting) > before })
	return done
}

// settleAll ends every lease that ran out by the store's clock, as the
// expiry loop does.
func settleAll(tb testing.TB, tab *enginetest.Table) {
	tb.Helper()
	var tables txn.Tables
	if err := tab.Store.Scan(context.Background(), txn.Page{}, &tables); err != nil {
		tb.Fatal(err)
	}
	if err := engine.Update(tab.Engine, context.Background(), tables.Names, txn.Options{}, func(txn.Tx) error { return nil }); err != nil {
		tb.Fatal(err)
	}
}
