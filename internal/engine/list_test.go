package engine_test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/txn"
)

// pagesOf reads the whole listing from page on by List, following each
// page's next name, and returns the names in the order read and the size
// of the largest page.
func pagesOf(tb testing.TB, e *enginetest.Table, page txn.Page) (names []string, largest int) {
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
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		names := []string{"a", "a/b", "a/c", "ab", "b", "prod-1", "prod-2", "prod-3", "prod-4", "prod-5", "Z", "z", "é", "éa", "ü", "\U0010FFFF"}
		for _, name := range names {
			if _, err := enginetest.Acquire(tab, name, "k", "r"); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		waiter := enginetest.Queued(t, ctx, tab, "b", "other", "w") // "b" has a queue now
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
		if err := tab.Each(context.Background(), "a", "", func(l engine.Listed) error { each = append(each, l.Name); return nil }); err != nil {
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
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		var want []string
		for i := range engine.ScanPage + 1 {
			name := fmt.Sprintf("lock-%05d", i)
			want = append(want, name)
			if _, err := enginetest.Acquire(tab, name, "k", "r"); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		if err := tab.Each(context.Background(), "", "", func(l engine.Listed) error { got = append(got, l.Name); return nil }); err != nil {
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
