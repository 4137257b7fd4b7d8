package pgstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// testURL returns the URL of a new, empty schema on the test database.
func testURL(t *testing.T) string { return testutil.PostgresSchema(t) }

// open opens a node on the database at url, closed when the test ends.
func open(t *testing.T, dbURL, name string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dbURL, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func req(key, requestor string) lock.Request {
	return lock.Request{Key: key, Requestor: requestor, Named: true}
}

func mustAcquire(t *testing.T, s *Store, name string, r lock.Request) State {
	t.Helper()
	st, err := s.Acquire(context.Background(), name, r, 0, nil)
	if err != nil {
		t.Fatalf("%s: acquire %s with %q by %s: %v", s.Node(), name, r.Key, r.Requestor, err)
	}
	return st
}

func mustRelease(t *testing.T, s *Store, name, key, requestor string) State {
	t.Helper()
	st, n, err := s.Release(context.Background(), name, key, requestor, false, nil)
	if err != nil || n != 1 {
		t.Fatalf("%s: release %s by %s = %d, %v", s.Node(), name, requestor, n, err)
	}
	return st
}

func TestNodesMigrateTheSchemaAtOnce(t *testing.T) {
	u := testURL(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			s, err := Open(context.Background(), u, "n")
			if err == nil {
				s.Close()
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

func TestRulesHoldAcrossNodes(t *testing.T) {
	u := testURL(t)
	a, b := open(t, u, "a"), open(t, u, "b")
	ctx := context.Background()

	first := mustAcquire(t, a, "prod", req("deploy", "job-1"))
	var refused *Refused
	if _, err := b.Acquire(ctx, "prod", req("upgrade", "job-2"), 0, nil); !errors.As(err, &refused) || refused.Lock.Key != "deploy" {
		t.Fatalf("another key on node b = %v; want refused, held with deploy", err)
	}
	shared := mustAcquire(t, b, "prod", req("deploy", "job-3"))
	if shared.Lock.Token != first.Lock.Token || len(shared.Lock.Holders) != 2 {
		t.Errorf("same key on node b: %+v; want a second holder under token %d", shared.Lock, first.Lock.Token)
	}
	// Both nodes see the same lock.
	for _, s := range []*Store{a, b} {
		st, err := s.Get(ctx, "prod")
		if err != nil || st.Lock.LockedBy()["job-1"] != 1 || st.Lock.LockedBy()["job-3"] != 1 {
			t.Errorf("%s sees %+v, %v", s.Node(), st.Lock, err)
		}
	}
	if _, err := b.Renew(ctx, "prod", "deploy", "nobody", time.Minute, nil); !errors.Is(err, ErrNotHeld) {
		t.Errorf("renew by a requestor that holds nothing = %v; want ErrNotHeld", err)
	}
	if _, _, err := a.Release(ctx, "prod", "upgrade", "job-1", false, nil); !errors.As(err, &refused) {
		t.Errorf("release with another key = %v; want refused", err)
	}
	mustRelease(t, a, "prod", "deploy", "job-1")
	mustRelease(t, b, "prod", "deploy", "job-3")
	list, err := b.List(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("List after every release = %v, %v; want nothing", list, err)
	}

	// Tokens come from one sequence: strictly increasing across nodes, and
	// a node that joins later goes on from there.
	last := first.Lock.Token
	for i, s := range []*Store{a, b, a, open(t, u, "c")} {
		st := mustAcquire(t, s, "tokens", req("k", "r"))
		if st.Lock.Token <= last {
			t.Errorf("grant %d on %s: token %d after %d", i, s.Node(), st.Lock.Token, last)
		}
		last = st.Lock.Token
		mustRelease(t, s, "tokens", "k", "r")
	}

	old, now, err := b.ForceRelease(ctx, "forced", nil)
	if err != nil || !old.Lock.Free() || !now.Lock.Free() {
		t.Errorf("force release of a free lock = %+v, %+v, %v", old, now, err)
	}
	mustAcquire(t, a, "forced", req("k", "r"))
	if old, now, err = b.ForceRelease(ctx, "forced", nil); err != nil || old.Lock.Free() || !now.Lock.Free() {
		t.Errorf("force release on another node = %+v, %+v, %v; want it freed", old, now, err)
	}
}

// TestLeasesAreJudgedByTheDatabasesClock: a lease of one second ends for
// every node one second after the grant.
func TestLeasesAreJudgedByTheDatabasesClock(t *testing.T) {
	u := testURL(t)
	a, b := open(t, u, "a"), open(t, u, "b")
	r := req("deploy", "job-1")
	r.TTL = time.Second
	st := mustAcquire(t, a, "prod", r)
	if got := st.Lock.Holders[0].ExpiresAt.Sub(st.Lock.AcquiredAt); got != time.Second {
		t.Errorf("lease ends %v after the grant; want 1s", got)
	}
	if _, err := b.Acquire(context.Background(), "prod", req("other", "job-2"), 0, nil); err == nil {
		t.Fatal("granted another key while the lease runs")
	}
	// b waits, and is granted once the lease has run out; the node whose
	// change ended the hold says so.
	var mu sync.Mutex
	var ended []Expiry
	for _, s := range []*Store{a, b} {
		s.OnExpired(func(name string, holds []Expiry) {
			mu.Lock()
			defer mu.Unlock()
			ended = append(ended, holds...)
		})
	}
	start := time.Now()
	got, err := b.Acquire(context.Background(), "prod", req("other", "job-2"), 10*time.Second, nil)
	if err != nil || got.Lock.Key != "other" {
		t.Fatalf("waiting for the lease to end: %+v, %v", got, err)
	}
	t.Logf("granted %v after the wait began (the lease had under 1 s left)", time.Since(start).Round(time.Millisecond))
	mu.Lock()
	defer mu.Unlock()
	if len(ended) != 1 || ended[0].Holder != "job-1" || ended[0].Key != "deploy" || !ended[0].At.Equal(st.Lock.Holders[0].ExpiresAt) {
		t.Errorf("expiries told = %+v; want job-1's hold on deploy, once, at its lease's end", ended)
	}
}

// TestQueueIsFirstComeFirstServedAcrossNodes: a waiter on node b that
// queued before a waiter on node c is granted first, when the holder on
// node a lets go.
func TestQueueIsFirstComeFirstServedAcrossNodes(t *testing.T) {
	u := testURL(t)
	a, b, c := open(t, u, "a"), open(t, u, "b"), open(t, u, "c")
	mustAcquire(t, a, "prod", req("holder", "h"))
	type result struct {
		who string
		st  State
		err error
		at  time.Time
	}
	results := make(chan result, 2)
	wait := func(s *Store, key string) {
		st, err := s.Acquire(context.Background(), "prod", req(key, key), 30*time.Second, nil)
		results <- result{key, st, err, time.Now()}
	}
	go wait(b, "first")
	waitForQueue(t, a, "prod", 1)
	go wait(c, "second")
	waitForQueue(t, a, "prod", 2)

	released := time.Now()
	mustRelease(t, a, "prod", "holder", "h")
	r := <-results
	if r.err != nil || r.who != "first" {
		t.Fatalf("after the release, %s got %+v, %v; want first", r.who, r.st.Lock, r.err)
	}
	t.Logf("handoff from node a to a waiter on node b: %v", r.at.Sub(released).Round(time.Millisecond))
	select {
	case r := <-results:
		t.Fatalf("%s was granted while first holds the lock: %+v", r.who, r.st.Lock)
	case <-time.After(300 * time.Millisecond):
	}
	mustRelease(t, b, "prod", "first", "first")
	if r := <-results; r.err != nil || r.who != "second" {
		t.Fatalf("second got %+v, %v", r.st.Lock, r.err)
	}
}

func waitForQueue(t *testing.T, s *Store, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := s.Get(context.Background(), name)
		if err == nil && len(st.Waiting) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never had %d waiting (%+v, %v)", name, n, st.Waiting, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWaitsEnd: a wait that runs out is refused and leaves the queue; a
// waiter whose client leaves is never left holding, even when the grant
// comes at that moment.
func TestWaitsEnd(t *testing.T) {
	u := testURL(t)
	a, b := open(t, u, "a"), open(t, u, "b")
	mustAcquire(t, a, "prod", req("holder", "h"))
	var refused *Refused
	if _, err := b.Acquire(context.Background(), "prod", req("other", "w"), 300*time.Millisecond, nil); !errors.As(err, &refused) || !refused.TimedOut {
		t.Errorf("a wait that ran out = %v; want refused, timed out", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, "prod", req("other", "gone"), time.Minute, nil)
		done <- err
	}()
	waitForQueue(t, a, "prod", 1)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("a wait whose client left = %v", err)
	}
	mustRelease(t, a, "prod", "holder", "h")
	if st, err := a.Get(context.Background(), "prod"); err != nil || !st.Lock.Free() || len(st.Waiting) != 0 {
		t.Errorf("after the holder let go: %+v, %v; want free, no one waiting", st, err)
	}
}

// TestADeadNodesWaitersAreDropped: a node that stops beating (as after
// kill -9) has its waiters dropped, and they are never granted; the locks
// it granted stay held.
func TestADeadNodesWaitersAreDropped(t *testing.T) {
	u := testURL(t)
	a := open(t, u, "a")
	dead, err := Open(context.Background(), u, "dead")
	if err != nil {
		t.Fatal(err)
	}
	mustAcquire(t, dead, "held-by-dead", req("k", "r"))
	mustAcquire(t, a, "prod", req("holder", "h"))
	go func() { _, _ = dead.Acquire(context.Background(), "prod", req("other", "w"), time.Minute, nil) }()
	waitForQueue(t, a, "prod", 1)
	dead.stop() // no more heartbeats; its pool and its wait stay, as in a process the kernel has not reaped
	dead.done.Wait()
	t.Cleanup(dead.pool.Close)

	start := time.Now()
	waitForQueue(t, a, "prod", 0)
	t.Logf("the dead node's waiter was dropped %v after its last heartbeat could be missed", time.Since(start).Round(100*time.Millisecond))
	st := mustRelease(t, a, "prod", "holder", "h")
	if !st.Lock.Free() {
		t.Errorf("after the release the lock went to %+v; want free: the dead node's waiter is never granted", st.Lock)
	}
	if st, err := a.Get(context.Background(), "held-by-dead"); err != nil || st.Lock.Free() {
		t.Errorf("the lock the dead node granted: %+v, %v; want it still held", st.Lock, err)
	}
}

// TestIdempotencyKeysAcrossNodes: a retry of a change with the same
// Idempotency-Key, on any node, gets the first answer and changes
// nothing; the key with another request is refused.
func TestIdempotencyKeysAcrossNodes(t *testing.T) {
	u := testURL(t)
	a, b := open(t, u, "a"), open(t, u, "b")
	ctx := context.Background()
	put := &Idem{Scope: "PUT prod k1", Fingerprint: "f1"}
	first, err := a.Acquire(ctx, "prod", req("deploy", "job"), 0, put)
	if err != nil || first.Replayed {
		t.Fatalf("first PUT: %+v, %v", first, err)
	}
	again, err := b.Acquire(ctx, "prod", req("deploy", "job"), 0, put)
	if err != nil || !again.Replayed || again.Lock.Token != first.Lock.Token {
		t.Errorf("the retry on node b = %+v, %v; want the first answer, replayed", again, err)
	}
	if st, _ := a.Get(ctx, "prod"); st.Lock.LockedBy()["job"] != 1 {
		t.Errorf("after the retry, job holds %d counts; want 1", st.Lock.LockedBy()["job"])
	}
	if _, err := b.Acquire(ctx, "prod", req("deploy", "other"), 0, &Idem{Scope: "PUT prod k1", Fingerprint: "f2"}); !errors.Is(err, ErrKeyReused) {
		t.Errorf("the key with another request = %v; want ErrKeyReused", err)
	}
	del := &Idem{Scope: "DELETE prod k2", Fingerprint: "f3"}
	if _, n, err := b.Release(ctx, "prod", "deploy", "job", false, del); err != nil || n != 1 {
		t.Fatalf("DELETE: %d, %v", n, err)
	}
	mustAcquire(t, a, "prod", req("deploy", "job")) // taken again meanwhile
	if st, n, err := a.Release(ctx, "prod", "deploy", "job", false, del); err != nil || n != 1 || !st.Replayed {
		t.Errorf("the DELETE's retry = %d, %+v, %v; want the first answer (1 count), replayed", n, st, err)
	}
	if st, _ := a.Get(ctx, "prod"); st.Lock.LockedBy()["job"] != 1 {
		t.Errorf("the DELETE's retry gave back a second count: %+v", st.Lock)
	}
}

// throughProxy returns the URL of u through a proxy that can cut the
// database away.
func throughProxy(t *testing.T, u string) (string, *testutil.Proxy) {
	t.Helper()
	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	px := testutil.NewProxy(t, parsed.Host)
	parsed.Host = px.Addr()
	return parsed.String(), px
}

// TestDatabaseLossWithWaiters cuts the database away while a request
// waits: changes fail at once with an error (never a hang), the wait ends
// with its answer or an error by its deadline, and once the database is
// back the store goes on, tokens still going up.
func TestDatabaseLossWithWaiters(t *testing.T) {
	u, px := throughProxy(t, testURL(t))
	a, b := open(t, u, "a"), open(t, u, "b")
	ctx := context.Background()
	first := mustAcquire(t, a, "prod", req("holder", "h"))
	type answer struct {
		st  State
		err error
		at  time.Time
	}
	waiter := make(chan answer, 1)
	start := time.Now()
	go func() {
		st, err := b.Acquire(ctx, "prod", req("other", "w"), 4*time.Second, nil)
		waiter <- answer{st, err, time.Now()}
	}()
	waitForQueue(t, a, "prod", 1)

	down := make(chan struct{})
	go func() { px.Outage(1500 * time.Millisecond); close(down) }()
	time.Sleep(200 * time.Millisecond)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := a.Acquire(cctx, "other", req("k", "r"), 0, nil); err == nil {
		t.Error("a change while the database is away succeeded")
	}
	if err := a.Ready(ctx); err == nil {
		t.Error("Ready while the database is away = nil")
	}
	<-down
	// Back: the holder lets go, and the waiter, whose wait has 2 s left, gets it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, err := a.Release(ctx, "prod", "holder", "h", false, nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("release after the database came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	w := <-waiter
	if w.err != nil || w.st.Lock.Key != "other" || w.st.Lock.Token <= first.Lock.Token {
		t.Errorf("the waiter, through the outage = %+v, %v; want the lock, with a token above %d", w.st.Lock, w.err, first.Lock.Token)
	}
	if w.at.Sub(start) > 4*time.Second {
		t.Errorf("the waiter answered %v after it began, past its 4 s wait", w.at.Sub(start))
	}
	next := mustAcquire(t, b, "after", req("k", "r"))
	if next.Lock.Token <= first.Lock.Token {
		t.Errorf("after the outage a grant got token %d, not above %d", next.Lock.Token, first.Lock.Token)
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
	u := testURL(t)
	a := open(t, u, "a")
	var last uint64
	for i := range 5 {
		st := mustAcquire(t, a, fmt.Sprintf("l%d", i), req("k", "r"))
		last = st.Lock.Token
	}
	if out, err := exec.Command("sh", "-c", restart).CombinedOutput(); err != nil {
		t.Fatalf("restarting PostgreSQL (%s): %v\n%s", restart, err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := a.Acquire(context.Background(), "after-restart", req("k", "r"), 0, nil)
		if err == nil {
			if st.Lock.Token <= last {
				t.Errorf("after the restart a grant got token %d, not above %d", st.Lock.Token, last)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node did not get through to PostgreSQL within 30 s of its restart: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st, err := a.Get(context.Background(), "l4"); err != nil || st.Lock.Free() {
		t.Errorf("a lock taken before the restart: %+v, %v; want it held", st.Lock, err)
	}
}

// TestAWaiterThatComesBackKeepsItsPlace: a request with an
// Idempotency-Key whose wait ran out keeps its place for its next round,
// on any node; a request without one that queued meanwhile stays behind.
func TestAWaiterThatComesBackKeepsItsPlace(t *testing.T) {
	u := testURL(t)
	a, b := open(t, u, "a"), open(t, u, "b")
	ctx := context.Background()
	mustAcquire(t, a, "prod", req("holder", "h"))
	round := &Idem{Scope: "PUT prod round", Fingerprint: "f"}
	var refused *Refused
	if _, err := b.Acquire(ctx, "prod", req("first", "first"), 200*time.Millisecond, round); !errors.As(err, &refused) || !refused.TimedOut {
		t.Fatalf("the first round = %v; want it timed out", err)
	}
	type answer struct {
		who string
		err error
	}
	answers := make(chan answer, 2)
	go func() {
		_, err := a.Acquire(ctx, "prod", req("second", "second"), 20*time.Second, nil)
		answers <- answer{"second", err}
	}()
	waitForQueue(t, a, "prod", 1)
	go func() {
		_, err := a.Acquire(ctx, "prod", req("first", "first"), 20*time.Second, round) // the next round, on another node
		answers <- answer{"first", err}
	}()
	waitForQueue(t, b, "prod", 2)
	if st, _ := b.Get(ctx, "prod"); st.Waiting[0].Requestor != "first" {
		t.Errorf("queue = %+v; want first, back in its place, ahead of second", st.Waiting)
	}
	mustRelease(t, a, "prod", "holder", "h")
	if got := <-answers; got.who != "first" || got.err != nil {
		t.Fatalf("after the release %s got it (%v); want first", got.who, got.err)
	}
	mustRelease(t, b, "prod", "first", "first")
	if got := <-answers; got.who != "second" || got.err != nil {
		t.Errorf("then %s (%v); want second", got.who, got.err)
	}
}
