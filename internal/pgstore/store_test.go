package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// testURL returns the URL of a new, empty schema on the test database.
func testURL(t *testing.T) string { return testutil.PostgresSchema(t) }

// twoNodes opens two nodes, a and b, on a new schema, closed when the
// test ends.
func twoNodes(t *testing.T) (a, b *Store) {
	t.Helper()
	u := testURL(t)
	for i, node := range []**Store{&a, &b} {
		s, err := Open(context.Background(), u, string(rune('a'+i)), Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close(false) })
		*node = s
	}
	return a, b
}

func TestNodesMigrateTheSchemaAtOnce(t *testing.T) {
	u := testURL(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			s, err := Open(context.Background(), u, "n", Options{})
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
	s, err := Open(ctx, u, "n", Options{})
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
	a, err := Open(ctx, u, "a", Options{})
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

// TestChangesThatComeTogetherShareATransaction: while one change's
// transaction is open, the changes that come wait, then run together in
// one transaction, each seeing what the ones before it did; one that
// fails is undone alone, and the others are committed.
func TestChangesThatComeTogetherShareATransaction(t *testing.T) {
	s, err := Open(context.Background(), testURL(t), "n", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(false)
	ctx := context.Background()
	hold := func(tx txn.Tx, name, holder string) {
		tx.Set(name, lock.Give(tx.Lock(name), lock.Request{Key: "k", Requestor: holder}, tx.Now(), func() uint64 { return 1 }))
	}

	// The first change holds the committer until the others are queued.
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.Update(ctx, []string{"a"}, txn.Options{}, func(tx txn.Tx) error {
			<-release
			hold(tx, "a", "first")
			return nil
		})
	}()
	testutil.WaitFor(t, "the first change to hold the committer", func() bool { return s.batches.Load() == 1 })

	refused := fmt.Errorf("refused by its rules")
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Go(func() {
			errs[i] = s.Update(ctx, []string{"b", fmt.Sprint("own-", i)}, txn.Options{}, func(tx txn.Tx) error {
				hold(tx, "b", fmt.Sprint("holder-", i))
				hold(tx, fmt.Sprint("own-", i), "x")
				if i == 2 {
					return refused // after its changes: they must be undone, and only they
				}
				return nil
			})
		})
	}
	time.Sleep(200 * time.Millisecond) // the five reach the queue; nothing else would run them
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n := s.batches.Load(); n != 2 {
		t.Errorf("the five changes ran in %d transactions after the first; want 1", n-1)
	}
	for i, err := range errs {
		if want := error(nil); i == 2 {
			if !errors.Is(err, refused) {
				t.Errorf("change 2 = %v; want its own error", err)
			}
		} else if err != want {
			t.Errorf("change %d = %v; want nil", i, err)
		}
	}
	err = s.View(ctx, []string{"b", "own-1", "own-2"}, func(r txn.Reader) error {
		b := r.Lock("b")
		var names []string
		for _, h := range b.Holders {
			names = append(names, h.Name)
		}
		if want := []string{"holder-0", "holder-1", "holder-3", "holder-4"}; !slices.Equal(names, want) {
			t.Errorf("b is held by %q; want %q: each change saw the ones before it, and the refused one is undone", names, want)
		}
		if !r.Lock("own-2").Free() || r.Lock("own-1").Free() {
			t.Errorf("own-2 held: %v, own-1 free: %v; want the refused change's lock free, the others' held", !r.Lock("own-2").Free(), r.Lock("own-1").Free())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAChangeThatPanicsFailsAlone: a change whose rules panic (a bug)
// gets an error, is undone, and the node goes on serving changes.
func TestAChangeThatPanicsFailsAlone(t *testing.T) {
	s, err := Open(context.Background(), testURL(t), "n", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(false)
	ctx := context.Background()
	err = s.Update(ctx, []string{"a"}, txn.Options{}, func(tx txn.Tx) error {
		tx.Set("a", lock.Give(tx.Lock("a"), lock.Request{Key: "k", Requestor: "r"}, tx.Now(), func() uint64 { return 1 }))
		_ = tx.Lock("not-named") // the transaction's guard panics
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), `lock "not-named" is not one the change named`) {
		t.Fatalf("a change that panics = %v; want its panic as an error", err)
	}
	err = s.Update(ctx, []string{"a"}, txn.Options{}, func(tx txn.Tx) error {
		if !tx.Lock("a").Free() {
			t.Errorf("the change that panicked was kept: a is %+v", tx.Lock("a"))
		}
		return nil
	})
	if err != nil {
		t.Errorf("the next change = %v; want the node still serving", err)
	}
}

// TestAVanishedNodesRowLocksAreFreed: a node that stops in the middle of
// a transaction, its rows locked and its connection still open (a frozen
// machine, a cut network), holds up the other nodes' changes to those
// locks only until the database ends its idle transaction.
func TestAVanishedNodesRowLocksAreFreed(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)

	// Node a's connection, mid-transaction, then silent.
	conn, err := a.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, q := range []string{"BEGIN", "INSERT INTO locker_locks (name) VALUES ('prod') ON CONFLICT (name) DO NOTHING",
		"SELECT lock FROM locker_locks WHERE name = 'prod' FOR UPDATE"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	start := time.Now()
	err = b.Update(ctx, []string{"prod"}, txn.Options{Token: true}, func(tx txn.Tx) error {
		tx.Set("prod", lock.Give(tx.Lock("prod"), lock.Request{Key: "k", Requestor: "r"}, tx.Now(), tx.NextToken))
		return nil
	})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("a change on node b, behind node a's idle transaction: %v after %v", err, took)
	}
	if took < idleInTransaction-time.Second {
		t.Errorf("the change waited %v; node a's transaction held the row, so it must have waited until the database ended it (%v)", took, idleInTransaction)
	}
}

// TestEveryWakeIsToldWhateverItsNumber: a change that wakes 2,000
// waiters at once (a release that 2,000 same-key requests wait for)
// commits, and another node hears of each: a notification's payload
// must stay under PostgreSQL's 8,000 bytes, or the change fails.
func TestEveryWakeIsToldWhateverItsNumber(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	wake := func(ids []int64) error {
		return a.Update(ctx, []string{"l"}, txn.Options{}, func(tx txn.Tx) error {
			for _, id := range ids {
				tx.Wake(id)
			}
			return nil
		})
	}
	const probe = 1 << 50
	heard, stop := b.Watch(probe)
	testutil.WaitFor(t, "node b to listen", func() bool {
		if err := wake([]int64{probe}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-heard:
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	})
	stop()
	ids := make([]int64, 2000)
	woken := make([]<-chan struct{}, len(ids))
	for i := range ids {
		ids[i] = probe + 1 + int64(i) // 16 digits each: 34,000 bytes of IDs in all
		var stop func()
		woken[i], stop = b.Watch(ids[i])
		defer stop()
	}
	if err := wake(ids); err != nil {
		t.Fatalf("a change that wakes %d waiters: %v", len(ids), err)
	}
	for i, ch := range woken {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("node b was not told of waiter %d of %d", i+1, len(ids))
		}
	}
}

// TestEveryNodeHearsOfACredentialChange: a credential changed on one node
// is told to the others (CredentialsChanged), which read it at once.
func TestEveryNodeHearsOfACredentialChange(t *testing.T) {
	u := testURL(t)
	ctx := context.Background()
	a, err := Open(ctx, u, "a", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(false)
	told := make(chan struct{}, 100)
	b, err := Open(ctx, u, "b", Options{CredentialsChanged: func() { told <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(false)
	_, hash := access.NewSecret()
	for _, change := range []struct {
		what string
		next *access.Credential
	}{
		{"made", &access.Credential{Name: "ci", Hash: hash, Grants: []access.Grant{{Role: access.Lock, Prefix: "a/"}}}},
		{"revoked", nil},
	} {
		for len(told) > 0 {
			<-told // heartbeats
		}
		if err := a.UpdateCredential(ctx, "ci", func(access.Credential, bool) (*access.Credential, error) { return change.next, nil }); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, "node b to be told and read the credential "+change.what, func() bool {
			select {
			case <-told:
			case <-time.After(50 * time.Millisecond):
				return false
			}
			creds, err := b.Credentials(ctx)
			_, there := creds["ci"]
			return err == nil && there == (change.next != nil)
		})
	}
}

// TestUnreachableSaysWhenToTryAgain: a node that starts while the
// database is away tries again (Unreachable) when the connection times
// out, is cut, or is refused, and stops on a wrong password: a node
// restarted among kills and lost answers stopped at once on "timeout:
// context deadline exceeded".
func TestUnreachableSaysWhenToTryAgain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // takes connections, never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = c.Close() })
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, stalled := Open(ctx, "postgres://x@"+ln.Addr().String()+"/db?sslmode=disable", "n", Options{})
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{stalled, true},
		{fmt.Errorf("opening: %w", context.DeadlineExceeded), true},
		{fmt.Errorf("reading: %w", io.ErrUnexpectedEOF), true},
		{&pgconn.PgError{Code: "57P03"}, true},
		{&pgconn.PgError{Code: "28P01"}, false}, // a wrong password
		{&pgconn.PgError{Code: "3D000"}, false}, // no such database
	} {
		if got := Unreachable(tc.err); got != tc.want {
			t.Errorf("Unreachable(%v) = %v; want %v", tc.err, got, tc.want)
		}
	}
}
