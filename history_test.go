package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/stream"
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

// TestTheStreamIsTheSameOnBothStores follows GET /events on each store:
// every change's events as they commit, the ones missed since a
// Last-Event-ID, a lock's alone, and a 400 for a Last-Event-ID that is
// not one.
func TestTheStreamIsTheSameOnBothStores(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		srv := httptest.NewServer(serveTable(tab, "", "", "").handler)
		t.Cleanup(srv.Close) // after the streams close (cleanups run last first)
		all := testutil.OpenStream(t, srv.URL, "", "")
		prodOnly := testutil.OpenStream(t, srv.URL, "?lock=prod", "")
		for _, name := range []string{"prod", "staging", "prod"} {
			if _, err := acquire(tab, name, "k", "a"); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := tab.Release("prod", "k", "a", true, nil); err != nil {
			t.Fatal(err)
		}
		var seen []lock.Event
		for _, want := range []said{
			{Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, Token: true},
			{Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, Token: true},
			{Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, Token: true},
			{Kind: lock.Released, Holder: "a", Key: "k", Counts: 2, Token: true},
		} {
			e := all.NextEvent(t)
			got := saidOf(e)
			got.Held = false
			if got != want {
				t.Fatalf("stream event %d = %+v; want %+v", len(seen)+1, got, want)
			}
			if len(seen) > 0 && e.ID <= seen[len(seen)-1].ID {
				t.Fatalf("event %d came after event %d", e.ID, seen[len(seen)-1].ID)
			}
			seen = append(seen, e)
		}
		if locks := []string{seen[0].Lock, seen[1].Lock, seen[2].Lock, seen[3].Lock}; !reflect.DeepEqual(locks, []string{"prod", "staging", "prod", "prod"}) {
			t.Errorf("the stream's events are of %v; want prod, staging, prod, prod", locks)
		}
		for _, want := range []uint64{seen[0].ID, seen[2].ID, seen[3].ID} {
			if e := prodOnly.NextEvent(t); e.ID != want || e.Lock != "prod" {
				t.Errorf("?lock=prod sent event %d of %q; want event %d", e.ID, e.Lock, want)
			}
		}

		// A client that saw the first event resumes: the rest, then what
		// comes after.
		resumed := testutil.OpenStream(t, srv.URL, "", strconv.FormatUint(seen[0].ID, 10))
		for _, want := range seen[1:] {
			if e := resumed.NextEvent(t); e.ID != want.ID {
				t.Fatalf("resumed after event %d, got event %d; want event %d", seen[0].ID, e.ID, want.ID)
			}
		}
		if _, err := acquire(tab, "staging", "k", "b"); err != nil {
			t.Fatal(err)
		}
		if e := resumed.NextEvent(t); e.Holder != "b" || e.Kind != lock.Taken {
			t.Errorf("after the missed events the resumed stream sent %+v; want b's taking", e)
		}

		for _, bad := range []struct{ query, lastID, want string }{
			{"", "abc", "Last-Event-ID"},
			{"?last_event_id=-1", "", "Last-Event-ID"},
			{"?lock=a&pool=b", "", "not both"},
			{"?pool=nothing", "", "no pool"},
			{"?loc=prod", "", "unknown query parameter"},
		} {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/events"+bad.query, nil)
			if bad.lastID != "" {
				req.Header.Set("Last-Event-ID", bad.lastID)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 != 4 || !strings.Contains(string(body), bad.want) || !strings.HasPrefix(string(body), `{"error":`) {
				t.Errorf("GET /events%s with Last-Event-ID %q = %d %s; want a 4xx JSON error saying %q", bad.query, bad.lastID, resp.StatusCode, body, bad.want)
			}
		}
	})
}

// TestEveryNodeStreamsEveryNodesEvents takes a lock on one PostgreSQL
// node and hears of it on another's stream, in commit order.
func TestEveryNodeStreamsEveryNodesEvents(t *testing.T) {
	url := testutil.PostgresSchema(t)
	a, b := newPGTable(t, url, "a"), newPGTable(t, url, "b")
	srv := httptest.NewServer(serveTable(b, "", "", "").handler)
	t.Cleanup(srv.Close)
	s := testutil.OpenStream(t, srv.URL, "", "")
	var want []string
	for i := range 20 {
		node, by := a, "node-a"
		if i%3 == 0 {
			node, by = b, "node-b"
		}
		if _, err := acquire(node, "prod", "k", by); err != nil {
			t.Fatal(err)
		}
		want = append(want, "taken by "+by)
		if _, _, err := node.Release("prod", "k", by, false, nil); err != nil {
			t.Fatal(err)
		}
		want = append(want, "released by "+by)
	}
	// Five holders with the longest names, notes and key a request may
	// give, freed at once: one transaction whose events are too long for
	// a notification, so node b reads them by their IDs.
	key := strings.Repeat("k", 1024)
	var holders []string
	for i := range 5 {
		by := fmt.Sprintf("%d%s", i, strings.Repeat("h", 1023))
		req := acquireRequest{Request: lock.Request{Key: key, Requestor: by, Note: strings.Repeat("n", 1024), Named: true}}
		if _, err := a.Acquire(context.Background(), "long", req); err != nil {
			t.Fatal(err)
		}
		holders = append(holders, by)
		want = append(want, "taken by "+by)
	}
	if _, _, err := a.ForceRelease("long", "admin", nil); err != nil {
		t.Fatal(err)
	}
	for _, by := range holders {
		want = append(want, "forced by "+by)
	}
	var last uint64
	for i, w := range want {
		e := s.NextEvent(t)
		if got := string(e.Kind) + " by " + e.Holder; got != w || e.ID <= last {
			t.Fatalf("event %d on node b's stream: %.40s (id %d, after %d); want %.40s", i+1, got, e.ID, last, w)
		}
		last = e.ID
	}
}

// TestNoHistoryKeepsNone: with LOCKER_HISTORY=0 a change keeps no event,
// and the change is made as ever.
func TestNoHistoryKeepsNone(t *testing.T) {
	store, err := filestore.Open(filepath.Join(t.TempDir(), "locks.yml"), atomicfile.OS{}, filestore.Options{Log: discardLog})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close(false)
	tab := &engine{store: store, log: discardLog, hub: stream.NewHub()}
	if _, err := acquire(tab, "prod", "k", "a"); err != nil {
		t.Fatal(err)
	}
	if h := history(t, tab, "prod"); len(h) != 0 || tab.get("prod").Free() {
		t.Errorf("with no history kept: history %v, lock free %v; want none, and the lock held", h, tab.get("prod").Free())
	}
}

// TestALeaseRunsOutWithoutAChangeOnPostgreSQL: a lease that runs out on a
// lock no one touches again is ended by the nodes, its event recorded,
// as the file store's expiry loop does.
func TestALeaseRunsOutWithoutAChangeOnPostgreSQL(t *testing.T) {
	t.Parallel() // waits for a lease
	tab := newPGTable(t, testutil.PostgresSchema(t), "node")
	if _, err := tab.Acquire(context.Background(), "prod", acquireRequest{Request: lock.Request{Key: "k", Requestor: "a", TTL: time.Second, Named: true}}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the lease's end in the history", func() bool {
		h := history(t, tab, "prod")
		return len(h) == 2 && h[1].Kind == lock.Expired
	})
}

// TestAResumedStreamSendsEveryKeptEventOnce: a stream resumed from the
// first event, over pages of kept events, while changes go on, sends
// every kept event and every new one, each once. Both stores.
func TestAResumedStreamSendsEveryKeptEventOnce(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		srv := httptest.NewServer(serveTable(tab, "", "", "").handler)
		t.Cleanup(srv.Close)
		change := func(name string) {
			if _, err := acquire(tab, name, "k", "a"); err != nil {
				t.Error(err)
			}
			if _, _, err := tab.Release(name, "k", "a", false, nil); err != nil {
				t.Error(err)
			}
		}
		var wg sync.WaitGroup
		for w := range 8 { // 2,400 events: more than two pages
			wg.Go(func() {
				for i := range 150 {
					change(fmt.Sprintf("l-%d-%d", w, i))
				}
			})
		}
		wg.Wait()
		s := testutil.OpenStream(t, srv.URL, "", "0")
		wg.Go(func() {
			for i := range 100 {
				change(fmt.Sprintf("live-%d", i%3))
			}
		})
		wg.Wait()
		// Every event kept, read a page at a time; on the file store an
		// event is read once the journal's sync has sent it, a moment
		// after its change returned.
		want := map[uint64]bool{}
		testutil.WaitFor(t, "the 2,600 events to be kept", func() bool {
			clear(want)
			for after := uint64(0); ; {
				page, _, err := tab.Backlog(context.Background(), after, 500)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range page {
					want[e.ID] = true
					after = max(after, e.ID)
				}
				if len(page) < 500 {
					return len(want) == 2600
				}
			}
		})
		got := map[uint64]int{}
		for len(got) < len(want) {
			e := s.NextEvent(t)
			if got[e.ID]++; got[e.ID] > 1 {
				t.Fatalf("event %d was sent twice", e.ID)
			}
			if !want[e.ID] {
				t.Fatalf("event %d was sent, and is not kept", e.ID)
			}
		}
	})
}
