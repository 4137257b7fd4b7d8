package filestore

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"testing"
	"time"

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
	var events []lock.Event
	var forgotten uint64
	testutil.WaitFor(t, "the new event in the backlog", func() bool {
		events, forgotten, err = s.Backlog(ctx, 0, 10)
		return err != nil || len(events) > 0
	})
	if err != nil || len(events) != 1 || forgotten != h[0].ID-1 {
		t.Errorf("the backlog from the start: %v, forgotten %d, %v; want the new event, and the two before it forgotten", events, forgotten, err)
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
