package filestore

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// TestOldEventsAreForgotten: events older than the store keeps are never
// read, are dropped from memory when their lock next changes, and a stream resumed
// before them is told of the gap; across a restart too.
func TestOldEventsAreForgotten(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "locks.yml")
	open := func() *Store {
		s, err := Open(path, atomicfile.OS{}, Options{Log: slog.New(slog.DiscardHandler), History: txn.History{Events: 100, Age: time.Hour},
			Events: func([]lock.Event) {}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	changes := 0
	record := func(name string, at time.Time) {
		t.Helper()
		changes++ // a change of no lock records nothing
		if err := s.Update(ctx, []string{name}, txn.Options{}, func(tx txn.Tx) error {
			tx.Set(name, lock.Lock{Key: "k", Holders: []lock.Holder{{Name: "a", Hold: lock.Hold{Count: changes}}}})
			tx.Record(lock.Event{Lock: name, Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, At: at})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	record("prod", now.Add(-3*time.Hour))
	record("prod", now.Add(-2*time.Hour))
	if h, err := s.History(ctx, "prod", 0, 10); err != nil || len(h) != 0 {
		t.Errorf("the history of prod: %v, %v; want nothing older than an hour", h, err)
	}
	if err := s.Close(false); err != nil {
		t.Fatal(err)
	}
	s = open()
	defer s.Close(false)
	record("prod", now)
	h, err := s.History(ctx, "prod", 0, 10)
	if err != nil || len(h) != 1 || !h[0].At.Equal(now) {
		t.Fatalf("after a restart and a new event, the history of prod: %v, %v; want the new event alone", h, err)
	}
	if kept := len(s.history["prod"]); kept != 1 {
		t.Errorf("prod's history holds %d events in memory; want the old ones dropped at its change", kept)
	}
	// The backlog holds an event once it went to the followers, after
	// the journal's sync: a moment after the change returns.
	var page txn.Backlog
	testutil.WaitFor(t, "the new event in the backlog", func() bool {
		page, err = s.Backlog(ctx, txn.Mark{}, 10)
		return err != nil || len(page.Events) > 0
	})
	if err != nil || len(page.Events) != 1 || page.Forgotten != h[0].ID-1 {
		t.Errorf("the backlog from the start: %v, forgotten %d, %v; want the new event, and the two before it forgotten", page.Events, page.Forgotten, err)
	}
}

// TestGroupByLockKeepsEachLocksOrder: events of many locks, interleaved
// at random, come out with each lock's together and in their order.
func TestGroupByLockKeepsEachLocksOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		events := make([]lock.Event, r.IntN(200))
		for i := range events {
			events[i] = lock.Event{ID: uint64(i + 1), Lock: fmt.Sprintf("lock-%d", r.IntN(1+round))}
		}
		want := map[string][]uint64{}
		for _, e := range events {
			want[e.Lock] = append(want[e.Lock], e.ID)
		}
		groupByLock(events)
		got, seen := map[string][]uint64{}, map[string]bool{}
		for i, e := range events {
			if i > 0 && e.Lock != events[i-1].Lock && seen[e.Lock] {
				t.Fatalf("round %d: %s's events are not together: %v", round, e.Lock, events)
			}
			seen[e.Lock] = true
			got[e.Lock] = append(got[e.Lock], e.ID)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round %d: each lock's events %v; want %v", round, got, want)
		}
	}
}

// newHistoryStore is a store on a new file that keeps each lock's last
// keep events, told of none.
func newHistoryStore(tb testing.TB, keep int) *Store {
	tb.Helper()
	s, err := Open(filepath.Join(tb.TempDir(), "locks.yml"), atomicfile.OS{}, Options{Log: slog.New(slog.DiscardHandler), History: txn.History{Events: keep}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close(false) })
	return s
}

// TestBacklogPagesThroughTheHistories: events recorded on many locks,
// some dropped (each lock keeps its last 3), some undone, some not yet
// durable: Backlog's pages, read one after another from any ID, give
// every kept durable event once, in the order of their IDs.
func TestBacklogPagesThroughTheHistories(t *testing.T) {
	ctx := context.Background()
	s := newHistoryStore(t, 3)
	r := rand.New(rand.NewPCG(3, 4))
	id := uint64(0)
	for range 20000 {
		batch := make([]lock.Event, 1+r.IntN(3))
		for i := range batch {
			id++
			batch[i] = lock.Event{ID: id, Lock: fmt.Sprintf("l%d", r.IntN(500)), At: time.Now()}
		}
		s.record(batch)
		if r.IntN(10) == 0 {
			s.unrecord(batch)
			id -= uint64(len(batch))
		}
	}
	s.sent = id - 5 // the last events are not durable yet
	var want []uint64
	for _, h := range s.history {
		for _, e := range h {
			if e.ID <= s.sent {
				want = append(want, e.ID)
			}
		}
	}
	slices.Sort(want)
	for _, from := range []uint64{0, want[len(want)/2], s.sent} {
		var got []uint64
		for mark := (txn.Mark{After: from}); ; {
			page, err := s.Backlog(ctx, mark, 100)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page.Events {
				got = append(got, e.ID)
			}
			if mark = page.Next; !page.More {
				break
			}
		}
		i, _ := slices.BinarySearch(want, from+1)
		if !slices.Equal(got, want[i:]) {
			t.Errorf("the backlog after %d: %d events; want %d, the kept durable ones in order (first difference near %v)",
				from, len(got), len(want[i:]), got[:min(len(got), 5)])
		}
	}
	if stale := s.byID.stale; len(s.byID.refs)-stale > len(want)+5 || stale > len(s.byID.refs)/2+1024 {
		t.Errorf("the index holds %d events, %d of them dropped, for %d kept; want the dropped ones taken out", len(s.byID.refs), stale, len(want))
	}
}

// TestBacklogReadsOnlyItsPage: with 200,000 events kept, a page of 1,000
// costs what a page costs, not what the history holds (it is read under
// the store's mutex, which every change waits for: a stream resuming
// from an old event stalled every change when each page gathered and
// sorted every kept event).
func TestBacklogReadsOnlyItsPage(t *testing.T) {
	ctx := context.Background()
	s := newHistoryStore(t, 2)
	batch := make([]lock.Event, 0, 1000)
	for i := range 200000 {
		batch = append(batch, lock.Event{ID: uint64(i + 1), Lock: fmt.Sprintf("lock-%d", i/2), At: time.Now(), Kind: lock.Taken})
		if len(batch) == cap(batch) {
			s.record(batch)
			batch = make([]lock.Event, 0, 1000)
		}
	}
	s.sent = 200000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	page, err := s.Backlog(ctx, txn.Mark{}, 1000)
	runtime.ReadMemStats(&after)
	if err != nil || len(page.Events) != 1000 || page.Events[0].ID != 1 || page.Events[999].ID != 1000 || !page.More || page.Next.After != 1000 {
		t.Fatalf("the first page: %d events, more %v, next %+v, %v; want events 1 to 1,000, more after 1,000", len(page.Events), page.More, page.Next, err)
	}
	perEvent := int(unsafe.Sizeof(lock.Event{}))
	if n := after.TotalAlloc - before.TotalAlloc; n > uint64(4*1000*perEvent) {
		t.Errorf("a page of 1,000 events of 200,000 allocated %d bytes; want about %d, a page's", n, 1000*perEvent)
	}
}
