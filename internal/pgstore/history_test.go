package pgstore

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// historyStore opens a node on the database at u that keeps 100 events a
// lock, closed when the test ends.
func historyStore(t *testing.T, u string) *Store {
	t.Helper()
	s, err := Open(context.Background(), u, "n", Options{History: txn.History{Events: 100}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(false) })
	return s
}

// storeAndSlowWriter opens a node as historyStore does, and begins a
// transaction on a connection of its own beside it (rolled back at the
// end unless committed).
func storeAndSlowWriter(t *testing.T) (*Store, pgx.Tx) {
	t.Helper()
	ctx := context.Background()
	u := testURL(t)
	s := historyStore(t, u)
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(ctx) })
	slow, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = slow.Rollback(ctx) })
	return s, slow
}

// TestBacklogSendsWhatCommittedOutOfOrder: a transaction writes an event
// and commits only after another, with a higher ID, has committed (two
// nodes, two locks). A client that saw the later one and resumes after it
// must still get the earlier one.
func TestBacklogSendsWhatCommittedOutOfOrder(t *testing.T) {
	ctx := context.Background()
	s, slow := storeAndSlowWriter(t) // another node's batch, slow to commit
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
	page, err := s.Backlog(ctx, txn.Mark{After: fast[0].ID}, 100)
	if err != nil {
		t.Fatal(err)
	}
	events := page.Events
	if !slices.ContainsFunc(events, func(e lock.Event) bool { return e.ID == slowID }) {
		t.Errorf("the backlog after event %d is %v; want event %d, which committed after it", fast[0].ID, events, slowID)
	}
}

// TestBacklogPagesCatchWhatCommitsLate: a stream reads a page while a
// transaction that wrote an event with a lower ID is still running; the
// next page, from the first one's mark, holds that event once it has
// committed.
func TestBacklogPagesCatchWhatCommitsLate(t *testing.T) {
	ctx := context.Background()
	s, slow := storeAndSlowWriter(t)
	var slowID uint64
	if err := slow.QueryRow(ctx, `WITH x AS MATERIALIZED (SELECT pg_current_xact_id() AS xid)
		INSERT INTO locker_events (name, at, event, xid) SELECT 'slow', now(), '{"lock":"slow","event":"taken"}', x.xid FROM x RETURNING id`).Scan(&slowID); err != nil {
		t.Fatal(err)
	}
	take(t, s, "fast")
	first, err := s.Backlog(ctx, txn.Mark{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Events) != 1 || first.Events[0].Lock != "fast" || first.More {
		t.Fatalf("the first page: %v (more: %v); want fast's event alone", first.Events, first.More)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	next, err := s.Backlog(ctx, first.Next, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(next.Events, func(e lock.Event) bool { return e.ID == slowID }) {
		t.Errorf("the page after %+v is %v; want event %d, which committed after the first page was read", first.Next, next.Events, slowID)
	}
}

// take takes the lock called name for a, recording the event.
func take(t *testing.T, s *Store, name string) {
	t.Helper()
	if err := s.Update(context.Background(), []string{name}, txn.Options{}, func(tx txn.Tx) error {
		tx.Set(name, lock.Lock{Key: "k", Holders: []lock.Holder{{Name: "a", Hold: lock.Hold{Count: 1}}}})
		tx.Record(lock.Event{Lock: name, Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, At: tx.Now()})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestAResumedPageIsAPage: a client resumes from an event in the middle
// of 3,000 that one transaction wrote (as locker migrate writes a
// history), then follows the pages: each holds at most a page of events
// (a resumed page once held every event of that transaction below the
// client's, 1,499 of them, and each next one as many: a stream read
// 200,000 events for minutes), and together they hold every event after
// the client's once.
func TestAResumedPageIsAPage(t *testing.T) {
	ctx := context.Background()
	s := historyStore(t, testURL(t))
	var ids []uint64
	rows, err := s.pool.Query(ctx, `INSERT INTO locker_events (name, at, event)
		SELECT 'lock-' || n, now(), json_build_object('lock', 'lock-' || n, 'event', 'taken') FROM generate_series(1, 3000) n RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, uint64(id))
	}
	if rows.Close(); rows.Err() != nil || len(ids) != 3000 {
		t.Fatalf("wrote %d events: %v", len(ids), rows.Err())
	}
	slices.Sort(ids)
	for i := range 5 {
		take(t, s, fmt.Sprintf("later-%d", i))
	}
	const limit = 100
	seen := map[uint64]int{}
	pages := 0
	for from := (txn.Mark{After: ids[1499]}); ; pages++ {
		page, err := s.Backlog(ctx, from, limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Events) > limit {
			t.Fatalf("the page from %+v holds %d events; want at most %d", from, len(page.Events), limit)
		}
		for _, e := range page.Events {
			seen[e.ID]++
		}
		if from = page.Next; !page.More {
			break
		}
	}
	if len(seen) != 1500+5 {
		t.Errorf("the pages held %d events; want the 1,505 after the client's", len(seen))
	}
	for _, id := range ids[:1500] {
		if seen[id] > 0 {
			t.Errorf("event %d, at or before the client's, was sent again", id)
			break
		}
	}
	t.Logf("%d pages", pages+1)
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

// TestAResumedStreamIsNotSentWhatItHad: a client resumes after event A
// while some transaction older than A's, elsewhere in the cluster, is
// still running (so the page's mark looks back past A). The next page
// must not hold A, nor an event written before it by A's transaction:
// the client had them (a stream sent event 1 again after the events
// after it, with another test's transaction running beside).
func TestAResumedStreamIsNotSentWhatItHad(t *testing.T) {
	ctx := context.Background()
	s, old := storeAndSlowWriter(t)
	if _, err := old.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil { // holds the cluster's xmin back
		t.Fatal(err)
	}
	var had []uint64
	if err := s.Update(ctx, []string{"a1", "a2"}, txn.Options{}, func(tx txn.Tx) error {
		for _, name := range []string{"a1", "a2"} {
			tx.Set(name, lock.Lock{Key: "k", Holders: []lock.Holder{{Name: "a", Hold: lock.Hold{Count: 1}}}})
			tx.Record(lock.Event{Lock: name, Kind: lock.Taken, Holder: "a", Key: "k", Counts: 1, At: tx.Now()})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a1", "a2"} {
		events, err := s.History(ctx, name, 0, 1)
		if err != nil || len(events) != 1 {
			t.Fatalf("%s's history: %v, %v", name, events, err)
		}
		had = append(had, events[0].ID)
	}
	slices.Sort(had)
	take(t, s, "b")
	take(t, s, "c")
	from := txn.Mark{After: had[1]}
	var got []uint64
	for range 3 {
		page, err := s.Backlog(ctx, from, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Events {
			got = append(got, e.ID)
		}
		from = page.Next
	}
	for _, id := range had {
		if slices.Contains(got, id) {
			t.Errorf("pages after event %d held events %v; want neither of %v, which the client had", had[1], got, had)
		}
	}
	if len(got) < 2 {
		t.Errorf("pages after event %d held %v; want b's and c's events", had[1], got)
	}
}
