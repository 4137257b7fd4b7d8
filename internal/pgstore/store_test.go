package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// testURL returns the URL of a new, empty schema on the test database.
func testURL(t *testing.T) string { return testutil.PostgresSchema(t) }

func TestNodesMigrateTheSchemaAtOnce(t *testing.T) {
	u := testURL(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			s, err := Open(context.Background(), u, "n")
			if err == nil {
				_ = s.Close(false)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a node starting with three others: %v", err)
		}
	}
	conn, err := pgx.Connect(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n, v int
	if err := conn.QueryRow(context.Background(), "SELECT count(*), max(version) FROM locker_schema").Scan(&n, &v); err != nil || n != len(migrations) || v != len(migrations) {
		t.Errorf("locker_schema has %d rows up to version %d (%v); want each of the %d migrations once", n, v, err, len(migrations))
	}
}

// TestOutcomesMoveToTheEnginesShape: an outcome kept by an earlier
// version (its lock under "state") reads, after migration 5, as the
// engine keeps it: the lock and its queue under "lock", what a force
// release freed under "old".
func TestOutcomesMoveToTheEnginesShape(t *testing.T) {
	u := testURL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for v, m := range migrations[:4] {
		if _, err := conn.Exec(ctx, m); err != nil {
			t.Fatalf("migration %d: %v", v+1, err)
		}
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE locker_schema (version int NOT NULL); INSERT INTO locker_schema VALUES (1), (2), (3), (4);
		INSERT INTO locker_requests (scope, fingerprint, outcome, at) VALUES
		('PUT a k', 'f', '{"state": {"lock": {"key": "k", "token": 7, "holders": [{"name": "r", "count": 1}]}, "waiting": [{"key": "x", "requestor": "w", "since": "2026-12-01T00:00:00Z"}]}, "released": 0}', now()),
		('DELETE a k', 'f', '{"state": {"lock": {"key": "", "holders": null}, "waiting": null}, "old": {"lock": {"key": "k", "token": 7, "holders": [{"name": "r", "count": 2}]}, "waiting": null}, "released": 0}', now())`); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, u, "n")
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close(false)
	want := map[string]string{
		"PUT a k":    `{"lock": {"key": "k", "token": 7, "Waiting": [{"key": "x", "since": "2026-12-01T00:00:00Z", "requestor": "w"}], "holders": [{"name": "r", "count": 1}]}, "released": 0}`,
		"DELETE a k": `{"old": {"key": "k", "token": 7, "holders": [{"name": "r", "count": 2}]}, "lock": {"key": "", "Waiting": null, "holders": null}, "released": 0}`,
	}
	for scope, w := range want {
		var got, wantV any
		var raw []byte
		if err := conn.QueryRow(ctx, "SELECT outcome FROM locker_requests WHERE scope = $1", scope).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		_ = json.Unmarshal(raw, &got)
		_ = json.Unmarshal([]byte(w), &wantV)
		if gj, _ := json.Marshal(got); string(gj) != mustJSON(t, wantV) {
			t.Errorf("outcome %q after migration 5 = %s; want %s", scope, raw, w)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSweepingRowsKeepsExclusion: rows of free locks are deleted by the
// sweep while transactions take and free the lock over and over; a
// transaction that was about to lock a row the sweep deleted begins
// again instead of going on without a row lock, so no two ever take it.
func TestSweepingRowsKeepsExclusion(t *testing.T) {
	u := testURL(t)
	ctx := context.Background()
	a, err := Open(ctx, u, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close(false) }()
	stop := make(chan struct{})
	var sweeps sync.WaitGroup
	sweeps.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				a.sweep(ctx)
			}
		}
	})
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", c)
			for range 150 {
				took := false
				if err := a.Update(ctx, []string{"x"}, txn.Options{Token: true}, func(tx txn.Tx) error {
					if l := tx.Lock("x"); l.Free() {
						tx.Set("x", lock.Give(l, lock.Request{Key: key, Requestor: key}, tx.Now(), tx.NextToken))
						took = true
					}
					return nil
				}); err != nil || !took {
					continue
				}
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				inside.Add(-1)
				if err := a.Update(ctx, []string{"x"}, txn.Options{}, func(tx txn.Tx) error {
					tx.Set("x", lock.Lock{})
					return nil
				}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	sweeps.Wait()
	if m := most.Load(); m != 1 {
		t.Errorf("%d transactions held the lock at once; want 1", m)
	}
}
