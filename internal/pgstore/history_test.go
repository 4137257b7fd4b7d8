package pgstore

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// TestBacklogSendsWhatCommittedOutOfOrder: a transaction writes an event
// and commits only after another, with a higher ID, has committed (two
// nodes, two locks). A client that saw the later one and resumes after it
// must still get the earlier one.
func TestBacklogSendsWhatCommittedOutOfOrder(t *testing.T) {
	ctx := context.Background()
	u := testURL(t)
	s, err := Open(ctx, u, "n", Options{History: txn.History{Events: 100}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(false)
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	slow, err := conn.Begin(ctx) // another node's batch, slow to commit
	if err != nil {
		t.Fatal(err)
	}
	var slowID uint64
	if err := slow.QueryRow(ctx, `INSERT INTO locker_events (name, at, event) VALUES ('slow', now(), '{"lock":"slow","event":"taken"}') RETURNING id`).Scan(&slowID); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, []string{"fast"}, txn.Options{}, func(tx txn.Tx) error {
		tx.Set("fast", lock.Lock{Key: "k", Holders: []lock.Holder{{Name: "a", Hold: lock.Hold{Count: 1}}}})
		tx.Record(lock.Event{Lock: "fast", Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, At: tx.Now()})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fast, err := s.History(ctx, "fast", 0, 1)
	if err != nil || len(fast) != 1 || fast[0].ID <= slowID {
		t.Fatalf("the fast change's event: %v, %v; want one with an ID above %d", fast, err, slowID)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	events, _, err := s.Backlog(ctx, fast[0].ID, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(events, func(e lock.Event) bool { return e.ID == slowID }) {
		t.Errorf("the backlog after event %d is %v; want event %d, which committed after it", fast[0].ID, events, slowID)
	}
}

// TestOldEventsAreForgotten: the heartbeats delete the events older than
// the store keeps, found by their IDs, and note the highest one deleted, so
// that a stream resumed before it is told of the gap; a read never shows
// them, deleted or not, and the young ones stay.
func TestOldEventsAreForgotten(t *testing.T) {
	ctx := context.Background()
	u := testURL(t)
	s, err := Open(ctx, u, "n", Options{History: txn.History{Events: 100, Age: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(false)
	record := func(name string, at time.Time) {
		t.Helper()
		if err := s.Update(ctx, []string{name}, txn.Options{}, func(tx txn.Tx) error {
			tx.Record(lock.Event{Lock: name, Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, At: at})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	record("old", now.Add(-3*time.Hour))
	record("old", now.Add(-2*time.Hour))
	record("young", now.Add(-time.Minute))
	// An old event with an ID above a young one (a lease's end is dated
	// when it ran out): not read, and deleted once nothing below it is
	// young.
	record("late", now.Add(-2*time.Hour))
	for _, name := range []string{"old", "late"} {
		if h, err := s.History(ctx, name, 0, 10); err != nil || len(h) != 0 {
			t.Errorf("the history of %s: %v, %v; want nothing older than an hour", name, h, err)
		}
	}
	var oldest, forgotten uint64
	testutil.WaitFor(t, "a heartbeat to delete the old events", func() bool {
		if err := s.pool.QueryRow(ctx, "SELECT min(id), (SELECT id FROM locker_events_forgotten) FROM locker_events").Scan(&oldest, &forgotten); err != nil {
			t.Fatal(err)
		}
		return forgotten > 0
	})
	young, err := s.History(ctx, "young", 0, 10)
	if err != nil || len(young) != 1 {
		t.Fatalf("the history of young: %v, %v; want its one event", young, err)
	}
	if oldest != young[0].ID || forgotten != young[0].ID-1 {
		t.Errorf("after the heartbeat the oldest event kept is %d and the highest forgotten %d; want %d and %d", oldest, forgotten, young[0].ID, young[0].ID-1)
	}
}
