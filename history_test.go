package main

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// said is an event as a test compares it: what happened, without the
// store's ID and clock.
type said struct {
	Kind          lock.Kind
	Holder, Key   string
	Counts        int
	Note, By      string
	Waited, Token bool // some wait, a token
	Held          bool // held for some time
}

func saidOf(e lock.Event) said {
	return said{Kind: e.Kind, Holder: e.Holder, Key: e.Key, Counts: e.Counts, Note: e.Note, By: e.By,
		Waited: e.Waited > 0, Token: e.Token > 0, Held: e.Held > 0}
}

// history returns the events of the lock called name, oldest first,
// checking that their IDs rise and that the pages agree with one another.
func history(tb testing.TB, tab *engine, name string) []said {
	tb.Helper()
	events, err := tab.History(name, 0, 1000)
	if err != nil {
		tb.Fatal(err)
	}
	var out []said
	for i := len(events) - 1; i >= 0; i-- {
		e := events[i]
		if i < len(events)-1 && e.ID <= events[i+1].ID {
			tb.Fatalf("event %d comes before event %d, newest first: IDs must fall", events[i+1].ID, e.ID)
		}
		if e.Lock != name {
			tb.Fatalf("event %d of %q names lock %q", e.ID, name, e.Lock)
		}
		out = append(out, saidOf(e))
	}
	if len(events) > 1 {
		older, err := tab.History(name, events[0].ID, 1)
		if err != nil || len(older) != 1 || older[0].ID != events[1].ID {
			tb.Fatalf("the page before event %d = %v, %v; want event %d", events[0].ID, older, err, events[1].ID)
		}
	}
	return out
}

// TestHistoryIsTheSameOnBothStores drives one lock through every kind of
// event on each store and checks the history each keeps: the same, event
// for event.
func TestHistoryIsTheSameOnBothStores(t *testing.T) {
	t.Parallel() // waits for a lease
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		ctx := context.Background()
		take := func(key, by, note string, ttl time.Duration) {
			t.Helper()
			if _, err := tab.Acquire(ctx, "prod", acquireRequest{Request: lock.Request{Key: key, Requestor: by, Note: note, TTL: ttl, Named: true}}); err != nil {
				t.Fatal(err)
			}
		}
		take("k1", "a", "build 1", 0)
		take("k1", "b", "", 0)
		take("k1", "a", "", 0)
		if _, err := acquire(tab, "prod", "other", "x"); err == nil {
			t.Fatal("another key was granted a held lock")
		}
		if _, _, err := tab.Release("prod", "k1", "a", true, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := tab.Renew("prod", "k1", "b", time.Hour, nil); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.ForceRelease("prod", "admin (10.0.0.1)", nil); err != nil {
			t.Fatal(err)
		}
		take("k2", "c", "", time.Second)
		testutil.WaitFor(t, "the lease to run out", func() bool { settleAll(t, tab); return tab.get("prod").Free() })
		take("k3", "d", "", 0)
		waiter := queued(t, ctx, tab, "prod", "k4", "e")
		time.Sleep(5 * time.Millisecond) // a wait long enough to see
		if _, _, err := tab.Release("prod", "k3", "d", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, waiter, "e")

		want := []said{
			{Kind: lock.Taken, Holder: "a", Key: "k1", Counts: 1, Note: "build 1", Token: true},
			{Kind: lock.Taken, Holder: "b", Key: "k1", Counts: 1, Token: true},
			{Kind: lock.Taken, Holder: "a", Key: "k1", Counts: 1, Note: "build 1", Token: true}, // the hold's note
			{Kind: lock.Released, Holder: "a", Key: "k1", Counts: 2, Token: true, Held: true},
			{Kind: lock.Forced, Holder: "b", Key: "k1", Counts: 1, By: "admin (10.0.0.1)", Token: true, Held: true},
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

func lines(events []said) string {
	var s string
	for _, e := range events {
		s += fmt.Sprintf("  %+v\n", e)
	}
	return s
}
