package engine_test

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestHistoryIsTheSameOnBothStores drives one lock through every kind of
// event on each store and checks the history each keeps: the same, event
// for event.
func TestHistoryIsTheSameOnBothStores(t *testing.T) {
	t.Parallel() // waits for a lease
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		ctx := context.Background()
		take := func(key, by, note string, ttl time.Duration) {
			t.Helper()
			if _, err := tab.Acquire(ctx, "prod", engine.Request{Request: lock.Request{Key: key, Requestor: by, Note: note, TTL: ttl, Named: true}}); err != nil {
				t.Fatal(err)
			}
		}
		take("k1", "a", "build 1", 0)
		take("k1", "b", "", 0)
		take("k1", "a", "", 0)
		if _, err := enginetest.Acquire(tab, "prod", "other", "x"); err == nil {
			t.Fatal("another key was granted a held lock")
		}
		if _, _, err := tab.Release(context.Background(), "prod", "k1", "a", true, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := tab.Renew(context.Background(), "prod", "k1", "b", time.Hour, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // a hold long enough to see: the store's clock counts milliseconds
		if _, _, err := tab.ForceRelease(context.Background(), "prod", "admin (10.0.0.1)", nil, engine.Because("stuck")); err != nil {
			t.Fatal(err)
		}
		take("k2", "c", "", time.Second)
		testutil.WaitFor(t, "the lease to run out", func() bool { settleAll(t, tab); return enginetest.Get(t, tab, "prod").Free() })
		take("k3", "d", "", 0)
		waiter := enginetest.Queued(t, ctx, tab, "prod", "k4", "e")
		time.Sleep(5 * time.Millisecond) // a wait long enough to see
		if _, _, err := tab.Release(context.Background(), "prod", "k3", "d", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, waiter, "e")

		want := []enginetest.Said{
			{Kind: lock.Taken, Holder: "a", Key: "k1", Counts: 1, Note: "build 1", Token: true},
			{Kind: lock.Taken, Holder: "b", Key: "k1", Counts: 1, Token: true},
			{Kind: lock.Taken, Holder: "a", Key: "k1", Counts: 1, Note: "build 1", Token: true}, // the hold's note
			{Kind: lock.Released, Holder: "a", Key: "k1", Counts: 2, Token: true, Held: true},
			{Kind: lock.Forced, Holder: "b", Key: "k1", Counts: 1, By: "admin (10.0.0.1)", Reason: "stuck", Token: true, Held: true},
			{Kind: lock.Taken, Holder: "c", Key: "k2", Counts: 1, Token: true},
			{Kind: lock.Expired, Holder: "c", Key: "k2", Counts: 1, Token: true, Held: true},
			{Kind: lock.Taken, Holder: "d", Key: "k3", Counts: 1, Token: true},
			{Kind: lock.Released, Holder: "d", Key: "k3", Counts: 1, Token: true},
			{Kind: lock.Taken, Holder: "e", Key: "k4", Counts: 1, Token: true, Waited: true},
		}
		got := history(t, tab, "prod")
		// Held is a duration that may round to nothing on a fast machine
		// for the holds released at once; compare it where it must show.
		for i := range got {
			if i < len(want) && !want[i].Held {
				got[i].Held = false
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("history of prod:\n%s\nwant\n%s", lines(got), lines(want))
		}
		if h := history(t, tab, "never-taken"); len(h) != 0 {
			t.Errorf("a lock never taken has a history: %v", h)
		}
	})
}

// TestNoHistoryKeepsNone: with LOCKER_HISTORY=0 a change keeps no event,
// and the change is made as ever.
func TestNoHistoryKeepsNone(t *testing.T) {
	store, err := filestore.Open(filepath.Join(t.TempDir(), "locks.yml"), atomicfile.OS{}, filestore.Options{Log: enginetest.DiscardLog})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close(false)
	tab := &enginetest.Table{Engine: engine.New(store, engine.Options{}), Store: store}
	if _, err := enginetest.Acquire(tab, "prod", "k", "a"); err != nil {
		t.Fatal(err)
	}
	if h := history(t, tab, "prod"); len(h) != 0 || enginetest.Get(t, tab, "prod").Free() {
		t.Errorf("with no history kept: history %v, lock free %v; want none, and the lock held", h, enginetest.Get(t, tab, "prod").Free())
	}
}

// TestALeaseRunsOutWithoutAChangeOnPostgreSQL: a lease that runs out on a
// lock no one touches again is ended by the nodes, its event recorded,
// as the file store's expiry loop does.
func TestALeaseRunsOutWithoutAChangeOnPostgreSQL(t *testing.T) {
	t.Parallel() // waits for a lease
	tab := enginetest.Postgres(t, testutil.PostgresSchema(t), "node")
	if _, err := tab.Acquire(context.Background(), "prod", engine.Request{Request: lock.Request{Key: "k", Requestor: "a", TTL: time.Second, Named: true}}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the lease's end in the history", func() bool {
		h := history(t, tab, "prod")
		return len(h) == 2 && h[1].Kind == lock.Expired
	})
}
