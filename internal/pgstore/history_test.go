package pgstore

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
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
