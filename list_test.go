package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
	"github.com/locker-ci/locker/internal/txn"
)

// pagesOf reads the whole listing from page on by List, following each
// page's next name, and returns the names in the order read and the size
// of the largest page.
func pagesOf(tb testing.TB, e *engine, page txn.Page) (names []string, largest int) {
	tb.Helper()
	for range 1000 {
		locks, next, err := e.List(context.Background(), page)
		if err != nil {
			tb.Fatal(err)
		}
		largest = max(largest, len(locks))
		for _, l := range locks {
			names = append(names, l.Name)
		}
		if next == "" {
			return names, largest
		}
		page.After = next
	}
	tb.Fatalf("the listing from %+v did not end", page)
	return nil, 0
}

// TestListingPages: pages follow on in byte order, without a lock twice
// or missed, with a prefix, after a name, across a lock with a queue,
// and past the engine's own page size; on both stores.
func TestListingPages(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		names := []string{"a", "a/b", "a/c", "ab", "b", "prod-1", "prod-2", "prod-3", "prod-4", "prod-5", "Z", "z", "é", "éa", "ü", "\U0010FFFF"}
		for _, name := range names {
			if _, err := acquire(tab, name, "k", "r"); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		waiter := queued(t, ctx, tab, "b", "other", "w") // "b" has a queue now
		slices.Sort(names)

		for _, tt := range []struct {
			page txn.Page
			want []string
		}{
			{txn.Page{Limit: 3}, names},
			{txn.Page{Limit: 1}, names},
			{txn.Page{Limit: 100}, names},
			{txn.Page{Prefix: "prod-", Limit: 2}, []string{"prod-1", "prod-2", "prod-3", "prod-4", "prod-5"}},
			{txn.Page{Prefix: "a", After: "a/b", Limit: 1}, []string{"a/c", "ab"}},
			{txn.Page{Prefix: "é", Limit: 5}, []string{"é", "éa"}},
			{txn.Page{Prefix: "prod-6", Limit: 5}, nil},
			{txn.Page{After: "z", Limit: 2}, []string{"é", "éa", "ü", "\U0010FFFF"}},
		} {
			got, largest := pagesOf(t, tab, tt.page)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("pages from %+v = %q; want %q", tt.page, got, tt.want)
			}
			if largest > tt.page.Limit {
				t.Errorf("pages from %+v: a page of %d locks", tt.page, largest)
			}
		}
		var each []string
		if err := tab.Each(context.Background(), "a", "", func(l Listed) error { each = append(each, l.Name); return nil }); err != nil {
			t.Fatal(err)
		}
		if want := []string{"a", "a/b", "a/c", "ab"}; !reflect.DeepEqual(each, want) {
			t.Errorf("Each with prefix a = %q; want %q", each, want)
		}
		locks, _, err := tab.List(context.Background(), txn.Page{Prefix: "b", Limit: 1})
		if err != nil || len(locks) != 1 || len(locks[0].Waiting) != 1 {
			t.Errorf("the page of b = %+v, %v; want b with its waiter", locks, err)
		}
		cancel()
		<-waiter
	})
}

// TestEachReadsPastOnePage: a listing longer than the engine's page is
// read whole, in order, once each.
func TestEachReadsPastOnePage(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		var want []string
		for i := range scanPage + 1 {
			name := fmt.Sprintf("lock-%05d", i)
			want = append(want, name)
			if _, err := acquire(tab, name, "k", "r"); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		if err := tab.Each(context.Background(), "", "", func(l Listed) error { got = append(got, l.Name); return nil }); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Each read %d locks (first %q, last %q); want the %d taken, in order", len(got), got[:min(1, len(got))], got[max(0, len(got)-1):], len(want))
		}
		if n := tab.Len(); n != len(want) {
			t.Errorf("Len = %d; want %d", n, len(want))
		}
	})
}

// TestListingOverHTTP: over the real server, GET /locks without a limit
// answers what an encoded map of every lock would be, byte for byte (the
// original's clients parse it), though it is written a page at a time;
// with ?limit= the Link headers lead through every lock once.
func TestListingOverHTTP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	st := statefile.State{Seq: 0, LastToken: 3000, Locks: map[string]lock.Lock{}}
	for i := range 3000 {
		st.Locks[fmt.Sprintf("team-%d/lock-%04d", i%3, i)] = lock.Lock{Key: "k", Token: uint64(i + 1),
			Holders: []lock.Holder{{Name: "job <&>", Hold: lock.Hold{Count: 1, Note: "https://ci.example.com/?a=1&b=2"}}}}
	}
	var file bytes.Buffer
	if err := statefile.Encode(&file, st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, file.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".journal", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": path})

	status, body := ls.call(t, "GET", "/locks", "")
	if status != http.StatusOK {
		t.Fatalf("GET /locks = %d %s", status, body)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(body, &all); err != nil {
		t.Fatalf("GET /locks: %v", err)
	}
	var again bytes.Buffer
	enc := json.NewEncoder(&again)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(all); err != nil {
		t.Fatal(err)
	}
	if len(all) != len(st.Locks) || !bytes.Equal(body, again.Bytes()) {
		t.Fatalf("GET /locks: %d locks, %d bytes; want %d locks, the %d bytes of the map encoded", len(all), len(body), len(st.Locks), again.Len())
	}

	var paged []string
	next := "/locks?limit=700&prefix=team-1/"
	for pages := 0; next != ""; pages++ {
		if pages > 10 {
			t.Fatal("the Link headers go on past every lock")
		}
		resp, err := ls.client.Get(ls.url + next)
		if err != nil {
			t.Fatal(err)
		}
		var page map[string]json.RawMessage
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("GET %s = %d, %v", next, resp.StatusCode, err)
		}
		if len(page) > 700 {
			t.Fatalf("GET %s: %d locks", next, len(page))
		}
		paged = append(paged, slices.Sorted(maps.Keys(page))...)
		next = ""
		if link := resp.Header.Get("Link"); link != "" {
			u, ok := strings.CutSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
			if !ok {
				t.Fatalf("Link: %s", link)
			}
			next = u
		}
	}
	var want []string
	for name := range all {
		if strings.HasPrefix(name, "team-1/") {
			want = append(want, name)
		}
	}
	slices.Sort(want)
	if !reflect.DeepEqual(paged, want) {
		t.Errorf("the pages of team-1/ hold %d locks; want the %d there are, in order", len(paged), len(want))
	}
}
