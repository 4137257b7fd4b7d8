package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// TestTheStreamIsTheSameOnBothStores follows GET /events on each store:
// every change's events as they commit, the ones missed since a
// Last-Event-ID, a lock's alone, and a 400 for a Last-Event-ID that is
// not one.
func TestTheStreamIsTheSameOnBothStores(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		srv := httptest.NewServer(serveTable(tab, "", "", "").handler)
		t.Cleanup(srv.Close) // after the streams close (cleanups run last first)
		all := testutil.OpenStream(t, srv.URL, "", "")
		prodOnly := testutil.OpenStream(t, srv.URL, "?lock=prod", "")
		for _, name := range []string{"prod", "staging", "prod"} {
			if _, err := enginetest.Acquire(tab, name, "k", "a"); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := tab.Release(context.Background(), "prod", "k", "a", true, nil); err != nil {
			t.Fatal(err)
		}
		var seen []lock.Event
		for _, want := range []enginetest.Said{
			{Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, Token: true},
			{Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, Token: true},
			{Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, Token: true},
			{Kind: lock.Released, Holder: "a", Key: "k", Counts: 2, Token: true},
		} {
			e := all.NextEvent(t)
			got := enginetest.SaidOf(e)
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
		if _, err := enginetest.Acquire(tab, "staging", "k", "b"); err != nil {
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
	a, b := enginetest.Postgres(t, url, "a"), enginetest.Postgres(t, url, "b")
	srv := httptest.NewServer(serveTable(b, "", "", "").handler)
	t.Cleanup(srv.Close)
	s := testutil.OpenStream(t, srv.URL, "", "")
	var want []string
	for i := range 20 {
		node, by := a, "node-a"
		if i%3 == 0 {
			node, by = b, "node-b"
		}
		if _, err := enginetest.Acquire(node, "prod", "k", by); err != nil {
			t.Fatal(err)
		}
		want = append(want, "taken by "+by)
		if _, _, err := node.Release(context.Background(), "prod", "k", by, false, nil); err != nil {
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
		req := engine.Request{Request: lock.Request{Key: key, Requestor: by, Note: strings.Repeat("n", 1024), Named: true}}
		if _, err := a.Acquire(context.Background(), "long", req); err != nil {
			t.Fatal(err)
		}
		holders = append(holders, by)
		want = append(want, "taken by "+by)
	}
	if _, _, err := a.ForceRelease(context.Background(), "long", "admin", nil); err != nil {
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

// TestAResumedStreamSendsEveryKeptEventOnce: a stream resumed from the
// first event, over pages of kept events, while changes go on, sends
// every kept event and every new one, each once. Both stores.
func TestAResumedStreamSendsEveryKeptEventOnce(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		srv := httptest.NewServer(serveTable(tab, "", "", "").handler)
		t.Cleanup(srv.Close)
		change := func(name string) {
			if _, err := enginetest.Acquire(tab, name, "k", "a"); err != nil {
				t.Error(err)
			}
			if _, _, err := tab.Release(context.Background(), name, "k", "a", false, nil); err != nil {
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
			for from := (txn.Mark{}); ; {
				page, err := tab.Backlog(context.Background(), from, 500)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range page.Events {
					want[e.ID] = true
				}
				if from = page.Next; !page.More {
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
