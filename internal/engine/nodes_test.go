package engine_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/testutil"
)

// The engine over PostgreSQL with several nodes: what only a shared
// database shows (nodes that die, a database that goes away). The rules
// themselves are the contract tests', run on every store.

func TestRulesHoldAcrossNodes(t *testing.T) {
	u := testutil.PostgresSchema(t)
	a, b := enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, u, "b")
	first := mustAcquire(t, a, "prod", req("deploy", "job-1"))
	if _, err := b.Acquire(context.Background(), "prod", engine.Request{Request: req("upgrade", "job-2")}); !errors.Is(err, engine.ErrHeld) || !strings.Contains(err.Error(), `key "deploy"`) {
		t.Fatalf("another key on node b = %v; want refused, held with deploy", err)
	}
	shared := mustAcquire(t, b, "prod", req("deploy", "job-3"))
	if shared.Token != first.Token || len(shared.Holders) != 2 {
		t.Errorf("same key on node b: %+v; want a second holder under token %d", shared.Lock, first.Token)
	}
	for _, e := range []*enginetest.Table{a, b} {
		if s, err := e.Get("prod"); err != nil || s.LockedBy()["job-1"] != 1 || s.LockedBy()["job-3"] != 1 {
			t.Errorf("a node sees %+v, %v", s.Lock, err)
		}
	}
	// Tokens come from one sequence: strictly increasing across nodes, and
	// a node that joins later goes on from there.
	last := first.Token
	for i, e := range []*enginetest.Table{a, b, a, enginetest.Postgres(t, u, "c")} {
		s := mustAcquire(t, e, "tokens", req("k", "r"))
		if s.Token <= last {
			t.Errorf("grant %d: token %d after %d", i, s.Token, last)
		}
		last = s.Token
		mustRelease(t, e, "tokens", "k", "r")
	}
}

// TestLeasesAreJudgedByTheDatabasesClock: a lease of one second ends for
// every node one second after the grant, and the node whose change ended
// it logs it, once.
func TestLeasesAreJudgedByTheDatabasesClock(t *testing.T) {
	t.Parallel() // mostly waits
	u := testutil.PostgresSchema(t)
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a, b := enginetest.PostgresLogged(t, u, "a", log), enginetest.PostgresLogged(t, u, "b", log)
	r := req("deploy", "job-1")
	r.TTL = time.Second
	s := mustAcquire(t, a, "prod", r)
	if got := s.Holders[0].ExpiresAt.Sub(s.AcquiredAt); got != time.Second {
		t.Errorf("lease ends %v after the grant; want 1s", got)
	}
	if _, err := b.Acquire(context.Background(), "prod", engine.Request{Request: req("other", "job-2")}); err == nil {
		t.Fatal("granted another key while the lease runs")
	}
	start := time.Now()
	got, err := b.Acquire(context.Background(), "prod", engine.Request{Request: req("other", "job-2"), Wait: 10 * time.Second})
	if err != nil || got.Key != "other" {
		t.Fatalf("waiting for the lease to end: %+v, %v", got, err)
	}
	t.Logf("granted %v after the wait began (the lease had under 1 s left)", time.Since(start).Round(time.Millisecond))
	if n := strings.Count(logs.String(), `msg="lease expired; hold released" lock=prod key=deploy holder=job-1`); n != 1 {
		t.Errorf("the lease's end was logged %d times; want once:\n%s", n, logs.String())
	}
}

// TestQueueIsFirstComeFirstServedAcrossNodes: a waiter on node b that
// queued before a waiter on node c is granted first, when the holder on
// node a lets go.
func TestQueueIsFirstComeFirstServedAcrossNodes(t *testing.T) {
	u := testutil.PostgresSchema(t)
	a, b, c := enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, u, "b"), enginetest.Postgres(t, u, "c")
	mustAcquire(t, a, "prod", req("holder", "h"))
	type result struct {
		who string
		s   engine.Snapshot
		err error
		at  time.Time
	}
	results := make(chan result, 2)
	wait := func(e *enginetest.Table, key string) {
		s, err := e.Acquire(context.Background(), "prod", engine.Request{Request: req(key, key), Wait: 30 * time.Second})
		results <- result{key, s, err, time.Now()}
	}
	go wait(b, "first")
	waitForQueue(t, a, "prod", 1)
	go wait(c, "second")
	waitForQueue(t, a, "prod", 2)

	released := time.Now()
	mustRelease(t, a, "prod", "holder", "h")
	r := <-results
	if r.err != nil || r.who != "first" {
		t.Fatalf("after the release, %s got %+v, %v; want first", r.who, r.s.Lock, r.err)
	}
	t.Logf("handoff from node a to a waiter on node b: %v", r.at.Sub(released).Round(time.Millisecond))
	select {
	case r := <-results:
		t.Fatalf("%s was granted while first holds the lock: %+v", r.who, r.s.Lock)
	case <-time.After(300 * time.Millisecond):
	}
	mustRelease(t, b, "prod", "first", "first")
	if r := <-results; r.err != nil || r.who != "second" {
		t.Fatalf("second got %+v, %v", r.s.Lock, r.err)
	}
}

// TestADeadNodesWaitersAreDropped: a node that can no longer reach the
// database (its heartbeats stop, as after kill -9 or a network cut) has
// its waiters dropped by the others, and they are never granted; the
// locks it was granted stay held.
func TestADeadNodesWaitersAreDropped(t *testing.T) {
	t.Parallel() // mostly waits
	u := testutil.PostgresSchema(t)
	cut, px := testutil.ThroughProxy(t, u)
	a, dead := enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, cut, "dead")
	mustAcquire(t, dead, "held-by-dead", req("k", "r"))
	mustAcquire(t, a, "prod", req("holder", "h"))
	go func() {
		_, _ = dead.Acquire(context.Background(), "prod", engine.Request{Request: req("other", "w"), Wait: time.Minute})
	}()
	waitForQueue(t, a, "prod", 1)
	px.Down()

	start := time.Now()
	waitForQueue(t, a, "prod", 0)
	t.Logf("the dead node's waiter was dropped %v after its node was cut off", time.Since(start).Round(100*time.Millisecond))
	s := mustRelease(t, a, "prod", "holder", "h")
	if !s.Free() {
		t.Errorf("after the release the lock went to %+v; want free: the dead node's waiter is never granted", s.Lock)
	}
	if s, err := a.Get("held-by-dead"); err != nil || s.Free() {
		t.Errorf("the lock the dead node was granted: %+v, %v; want it still held", s.Lock, err)
	}
}

// TestIdempotencyKeysAcrossNodes: a retry of a change with the same
// Idempotency-Key, on any node, gets the first answer and changes
// nothing; the key with another request is refused.
func TestIdempotencyKeysAcrossNodes(t *testing.T) {
	u := testutil.PostgresSchema(t)
	a, b := enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, u, "b")
	ctx := context.Background()
	put := &engine.IdempotencyKey{Scope: "PUT prod k1", Fingerprint: "f1"}
	first, err := a.Acquire(ctx, "prod", engine.Request{Request: req("deploy", "job"), Idem: put})
	if err != nil || first.Replayed {
		t.Fatalf("first PUT: %+v, %v", first, err)
	}
	again, err := b.Acquire(ctx, "prod", engine.Request{Request: req("deploy", "job"), Idem: put})
	if err != nil || !again.Replayed || again.Token != first.Token {
		t.Errorf("the retry on node b = %+v, %v; want the first answer, replayed", again, err)
	}
	if s, _ := a.Get("prod"); s.LockedBy()["job"] != 1 {
		t.Errorf("after the retry, job holds %d counts; want 1", s.LockedBy()["job"])
	}
	if _, err := b.Acquire(ctx, "prod", engine.Request{Request: req("deploy", "other"), Idem: &engine.IdempotencyKey{Scope: "PUT prod k1", Fingerprint: "f2"}}); !errors.Is(err, engine.ErrKeyReused) {
		t.Errorf("the key with another request = %v; want engine.ErrKeyReused", err)
	}
	del := &engine.IdempotencyKey{Scope: "DELETE prod k2", Fingerprint: "f3"}
	if _, n, err := b.Release(context.Background(), "prod", "deploy", "job", false, del); err != nil || n != 1 {
		t.Fatalf("DELETE: %d, %v", n, err)
	}
	mustAcquire(t, a, "prod", req("deploy", "job")) // taken again meanwhile
	if s, n, err := a.Release(context.Background(), "prod", "deploy", "job", false, del); err != nil || n != 1 || !s.Replayed {
		t.Errorf("the DELETE's retry = %d, %+v, %v; want the first answer (1 count), replayed", n, s, err)
	}
	if s, _ := a.Get("prod"); s.LockedBy()["job"] != 1 {
		t.Errorf("the DELETE's retry gave back a second count: %+v", s.Lock)
	}
}

// TestDatabaseLossWithWaiters cuts the database away while a request
// waits: changes fail at once with an error (never a hang), the wait
// rides out the outage and is granted the lock, and once the database is
// back the engine goes on, tokens still going up. (The wait is long: on
// a busy machine the nodes take a while to reconnect, and a wait that ran
// out first would be answered 423, rightly.)
func TestDatabaseLossWithWaiters(t *testing.T) {
	t.Parallel() // mostly waits
	u, px := testutil.ThroughProxy(t, testutil.PostgresSchema(t))
	a, b := enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, u, "b")
	first := mustAcquire(t, a, "prod", req("holder", "h"))
	type answer struct {
		s   engine.Snapshot
		err error
	}
	waiter := make(chan answer, 1)
	go func() {
		s, err := b.Acquire(context.Background(), "prod", engine.Request{Request: req("other", "w"), Wait: time.Minute})
		waiter <- answer{s, err}
	}()
	waitForQueue(t, a, "prod", 1)

	// The database away for 1.5 s, from before the change below is sent
	// (a goroutine that cuts it may not have run yet on a loaded machine).
	px.Down()
	back := time.Now().Add(1500 * time.Millisecond)
	if _, err := a.Acquire(context.Background(), "other", engine.Request{Request: req("k", "r")}); !errors.Is(err, engine.ErrUnavailable) {
		t.Errorf("a change while the database is away = %v; want engine.ErrUnavailable", err)
	}
	if err := a.Ready(); err == nil {
		t.Error("Ready while the database is away = nil")
	}
	time.Sleep(time.Until(back))
	px.Up()
	// Back: the holder lets go, and the waiter, whose wait has 2 s left, gets it.
	testutil.WaitFor(t, "the release after the database came back", func() bool {
		_, _, err := a.Release(context.Background(), "prod", "holder", "h", false, nil)
		return err == nil
	})
	var w answer
	select {
	case w = <-waiter:
	case <-time.After(2 * time.Minute):
		t.Fatal("the waiter was not answered within twice its wait")
	}
	if w.err != nil || w.s.Key != "other" || w.s.Token <= first.Token {
		t.Errorf("the waiter, through the outage = %+v, %v; want the lock, with a token above %d", w.s.Lock, w.err, first.Token)
	}
	next := mustAcquire(t, b, "after", req("k", "r"))
	if next.Token <= first.Token {
		t.Errorf("after the outage a grant got token %d, not above %d", next.Token, first.Token)
	}
}

// TestTokensAcrossADatabaseRestart restarts PostgreSQL itself with the
// command in LOCKER_TEST_RESTART_POSTGRES (make test runs it on its own,
// after the other tests, when that is set; .ci/run sets it): the node
// reconnects by itself, and the tokens go on from the sequence, above
// every one handed out before.
func TestTokensAcrossADatabaseRestart(t *testing.T) {
	restart := os.Getenv("LOCKER_TEST_RESTART_POSTGRES")
	if restart == "" {
		t.Skip("LOCKER_TEST_RESTART_POSTGRES is not set: PostgreSQL was not restarted (it is the command that restarts it, e.g. pg_ctlcluster 15 main restart)")
	}
	a := enginetest.Postgres(t, testutil.PostgresSchema(t), "a")
	var last uint64
	for i := range 5 {
		last = mustAcquire(t, a, fmt.Sprintf("l%d", i), req("k", "r")).Token
	}
	if out, err := exec.Command("sh", "-c", restart).CombinedOutput(); err != nil {
		t.Fatalf("restarting PostgreSQL (%s): %v\n%s", restart, err, out)
	}
	var after engine.Snapshot
	testutil.WaitFor(t, "the node to get through to PostgreSQL after its restart", func() bool {
		s, err := a.Acquire(context.Background(), "after-restart", engine.Request{Request: req("k", "r")})
		after = s
		return err == nil
	})
	if after.Token <= last {
		t.Errorf("after the restart a grant got token %d, not above %d", after.Token, last)
	}
	if s, err := a.Get("l4"); err != nil || s.Free() {
		t.Errorf("a lock taken before the restart: %+v, %v; want it held", s.Lock, err)
	}
}

// TestAWaiterThatComesBackKeepsItsPlace: a request with an
// Idempotency-Key whose wait ran out keeps its place for its next round,
// on any node; a request without one that queued meanwhile stays behind.
func TestAWaiterThatComesBackKeepsItsPlace(t *testing.T) {
	u := testutil.PostgresSchema(t)
	a, b := enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, u, "b")
	ctx := context.Background()
	mustAcquire(t, a, "prod", req("holder", "h"))
	round := &engine.IdempotencyKey{Scope: "PUT prod round", Fingerprint: "f"}
	if _, err := b.Acquire(ctx, "prod", engine.Request{Request: req("first", "first"), Wait: 200 * time.Millisecond, Idem: round}); !errors.Is(err, engine.ErrHeld) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("the first round = %v; want it timed out", err)
	}
	type answer struct {
		who string
		err error
	}
	answers := make(chan answer, 2)
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := a.Acquire(ctx, "prod", engine.Request{Request: req("second", "second"), Wait: 20 * time.Second})
		answers <- answer{"second", err}
	})
	waitForQueue(t, a, "prod", 1)
	wg.Go(func() {
		_, err := a.Acquire(ctx, "prod", engine.Request{Request: req("first", "first"), Wait: 20 * time.Second, Idem: round}) // the next round, on another node
		answers <- answer{"first", err}
	})
	waitForQueue(t, b, "prod", 2)
	if s, _ := b.Get("prod"); s.Waiting[0].Requestor != "first" {
		t.Errorf("queue = %+v; want first, back in its place, ahead of second", s.Waiting)
	}
	mustRelease(t, a, "prod", "holder", "h")
	if got := <-answers; got.who != "first" || got.err != nil {
		t.Fatalf("after the release %s got it (%v); want first", got.who, got.err)
	}
	mustRelease(t, b, "prod", "first", "first")
	if got := <-answers; got.who != "second" || got.err != nil {
		t.Errorf("then %s (%v); want second", got.who, got.err)
	}
	wg.Wait()
}

// TestADeadNodesGrantIsGivenBack: a waiter is granted just as its node is
// cut off from the database for good (as after kill -9), so that no
// request will ever take the grant up. Once the node is taken for dead,
// the grant is given back and the next waiter has the lock: nobody holds
// it for a client that was never told.
func TestADeadNodesGrantIsGivenBack(t *testing.T) {
	t.Parallel() // mostly waits
	u := testutil.PostgresSchema(t)
	cut, px := testutil.ThroughProxy(t, u)
	a, dead := enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, cut, "dead")
	mustAcquire(t, a, "prod", req("holder", "h"))
	go func() {
		_, _ = dead.Acquire(context.Background(), "prod", engine.Request{Request: req("dead", "w"), Wait: time.Minute})
	}()
	waitForQueue(t, a, "prod", 1)
	next := make(chan error, 1)
	go func() {
		_, err := a.Acquire(context.Background(), "prod", engine.Request{Request: req("next", "n"), Wait: time.Minute})
		next <- err
	}()
	waitForQueue(t, a, "prod", 2)
	px.Down()
	if s := mustRelease(t, a, "prod", "holder", "h"); s.Key != "dead" {
		t.Fatalf("the release granted %+v; want the dead node's waiter, still counted alive", s.Lock)
	}
	select {
	case err := <-next:
		if err != nil {
			t.Fatalf("the next waiter = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the grant to the dead node was never given back: %+v", enginetest.Get(t, a, "prod"))
	}
	s := enginetest.Get(t, a, "prod")
	if _, holds := s.Holder("w"); holds || s.Key != "next" {
		t.Errorf("after the dead node's grant was given back: %+v; want next alone", s.Lock)
	}
}

// TestAFreeLockCostsNoRow: names sent once (releases of locks never
// held, locks taken and given back) leave no row in the database once
// the sweep has been by.
func TestAFreeLockCostsNoRow(t *testing.T) {
	t.Parallel() // mostly waits
	u := testutil.PostgresSchema(t)
	a := enginetest.Postgres(t, u, "a")
	for i := range 50 {
		name := fmt.Sprintf("never-held-%d", i)
		if _, _, err := a.Release(context.Background(), name, "k", "r", false, nil); err != nil {
			t.Fatal(err)
		}
		mustAcquire(t, a, "taken", req("k", "r"))
		mustRelease(t, a, "taken", "k", "r")
	}
	mustAcquire(t, a, "held", req("k", "r"))
	conn, err := pgx.Connect(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	testutil.WaitFor(t, "the rows of free locks to go (a sweep a second)", func() bool {
		var rows int
		if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM locker_locks").Scan(&rows); err != nil {
			t.Fatal(err)
		}
		return rows == 1 // the held lock's
	})
}

// TestExclusionWhileRowsComeAndGo: clients on two nodes take one lock
// with keys of their own, over and over, through a few sweeps that delete
// its row while it is free, sometimes as a transaction is about to lock
// it. No two clients ever hold it at once.
func TestExclusionWhileRowsComeAndGo(t *testing.T) {
	t.Parallel() // mostly waits
	u := testutil.PostgresSchema(t)
	nodes := []*enginetest.Table{enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, u, "b")}
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for c := range 6 {
		wg.Go(func() {
			e := nodes[c%2]
			key := fmt.Sprintf("client-%d", c)
			for start := time.Now(); time.Since(start) < 3*time.Second; { // a few sweeps
				wait := time.Duration(0)
				if c%3 != 0 {
					wait = 10 * time.Second // some wait, some are refused
				}
				if _, err := e.Acquire(context.Background(), "x", engine.Request{Request: req(key, key), Wait: wait}); err != nil {
					if !errors.Is(err, engine.ErrHeld) {
						t.Error(err)
					}
					continue
				}
				n := inside.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				inside.Add(-1)
				if _, _, err := e.Release(context.Background(), "x", key, key, false, nil); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m != 1 {
		t.Errorf("%d clients held the lock at once; want 1", m)
	}
}
