package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/pgstore"
	"github.com/locker-ci/locker/internal/stream"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

var discardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// newTestTable returns an empty table saved to a file in a temp directory
// through d (the real disk when d is nil), and the file's path.
func newTestTable(tb testing.TB, d atomicfile.FS) (*engine, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "locks.yml")
	return loadTestTable(tb, path, d, time.Now), path
}

// testHistory is how much history the tests' stores keep.
var testHistory = txn.History{Events: 100}

// openStores is the file store last opened on each path by loadTestTable.
var openStores sync.Map // path -> *filestore.Store

// loadTestTable loads the table saved in path and its journal, as the
// server does at start. A store still open on path is closed first
// without a checkpoint, as a crashed process leaves it (its journal holds
// what it was told), though its table can still be read. The store is
// closed when the test ends.
func loadTestTable(tb testing.TB, path string, d atomicfile.FS, now func() time.Time) *engine {
	tb.Helper()
	if d == nil {
		d = atomicfile.OS{}
	}
	if earlier, ok := openStores.Load(path); ok {
		_ = earlier.(*filestore.Store).Close(false)
	}
	hub := stream.NewHub()
	store, err := filestore.Open(path, d, filestore.Options{Log: discardLog, Now: now, History: testHistory, Events: hub.Publish})
	if err != nil {
		tb.Fatal(err)
	}
	openStores.Store(path, store)
	tb.Cleanup(func() { _ = store.Close(false) })
	return &engine{store: store, log: discardLog, hub: hub}
}

// newPGTable returns the table a node shares with others in the database
// at url, closed when the test ends.
func newPGTable(tb testing.TB, url, node string) *engine {
	tb.Helper()
	hub := stream.NewHub()
	store, err := pgstore.Open(context.Background(), url, node, pgstore.Options{History: testHistory, Events: hub.Publish})
	if err != nil {
		tb.Fatal(err)
	}
	e := &engine{store: store, log: discardLog, hub: hub}
	ctx, cancel := context.WithCancel(context.Background())
	var loop sync.WaitGroup
	loop.Go(func() { e.background(ctx) })
	tb.Cleanup(func() {
		cancel()
		loop.Wait()
		_ = store.Close(false)
	})
	return e
}

// storeKind is a store that the contract tests run on.
type storeKind struct {
	name string
	open func(tb testing.TB) *engine // an empty table
}

// storeKinds are the stores every test of the contract runs on: the file
// store, and PostgreSQL (skipped, saying so, where there is none, unless
// CI is set).
var storeKinds = []storeKind{
	{"file", func(tb testing.TB) *engine { e, _ := newTestTable(tb, nil); return e }},
	{"postgresql", func(tb testing.TB) *engine { return newPGTable(tb, testutil.PostgresSchema(tb), "node") }},
}

// forEachStore runs f as a subtest on each store.
func forEachStore(t *testing.T, f func(t *testing.T, open func(tb testing.TB) *engine)) {
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) { f(t, kind.open) })
	}
}

// settleAll ends every lease that ran out by the store's clock, as the
// expiry loop does.
func settleAll(tb testing.TB, e *engine) {
	tb.Helper()
	var tables txn.Tables
	if err := e.store.Scan(context.Background(), txn.Page{}, &tables); err != nil {
		tb.Fatal(err)
	}
	if err := e.update(context.Background(), tables.Names, txn.Options{}, func(txn.Tx) error { return nil }); err != nil {
		tb.Fatal(err)
	}
}

// onDisk returns what the state file at path and its journal hold.
func onDisk(tb testing.TB, path string) string {
	tb.Helper()
	return string(testutil.ReadFile(tb, path)) + "\n--- journal ---\n" + string(testutil.ReadJournal(tb, path))
}

// holderOf returns the holder of l called name, or a zero Holder.
func holderOf(l Snapshot, name string) Holder {
	h, _ := l.Holder(name)
	return h
}

// get is Get for tests, which expect it to work.
func (e *engine) get(name string) Snapshot {
	s, err := e.Get(name)
	if err != nil {
		panic(err)
	}
	return s
}

// list is the whole listing, by List's pages, for tests, which expect it
// to work.
func (e *engine) list() map[string]Snapshot {
	m := map[string]Snapshot{}
	for page := (txn.Page{Limit: 100}); ; {
		locks, next, err := e.List(context.Background(), page)
		if err != nil {
			panic(err)
		}
		for _, l := range locks {
			m[l.Name] = l.Snapshot
		}
		if next == "" {
			return m
		}
		page.After = next
	}
}

// brief is the part of a lock the original API showed.
type brief struct {
	Key      string
	LockedBy map[string]int
}

func briefOf(l Lock) brief {
	if l.Free() {
		return brief{}
	}
	return brief{Key: l.Key, LockedBy: l.LockedBy()}
}

// acquire takes a lock without waiting.
func acquire(t *engine, name, key, requestor string) (Snapshot, error) {
	return t.Acquire(context.Background(), name, acquireRequest{Request: lock.Request{Key: key, Requestor: requestor, Named: true}})
}

// step is one call on the table and what it must return.
type step struct {
	op           string // "acquire", "release" or "release-all"
	key, by      string
	wantErr      error
	wantReleased int
}

func TestLockRules(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		want  brief // the lock "l" after the last step
	}{
		{
			name:  "free lock is granted",
			steps: []step{{op: "acquire", key: "k", by: "a"}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name:  "same key shares, counts add up",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "b"}},
			want:  brief{"k", map[string]int{"a": 2, "b": 1}},
		},
		{
			name:  "other key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "other", by: "b", wantErr: errLockHeld}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name:  "a holder's other key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "other", by: "a", wantErr: errLockHeld}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name: "release takes back one count",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"},
				{op: "release", key: "k", by: "a", wantReleased: 1},
			},
			want: brief{"k", map[string]int{"a": 1}},
		},
		{
			name: "release-all takes back every count",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "b"},
				{op: "release-all", key: "k", by: "a", wantReleased: 2},
			},
			want: brief{"k", map[string]int{"b": 1}},
		},
		{
			name:  "last release frees the lock",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "a", wantReleased: 1}},
			want:  brief{},
		},
		{
			name: "freed lock takes a new key",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "a", wantReleased: 1},
				{op: "acquire", key: "new", by: "b"},
			},
			want: brief{"new", map[string]int{"b": 1}},
		},
		{
			name:  "releasing a free lock succeeds",
			steps: []step{{op: "release", key: "k", by: "a"}},
			want:  brief{},
		},
		{
			name:  "release with another key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "other", by: "a", wantErr: errLockHeld}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name:  "release-all with another key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release-all", key: "other", by: "a", wantErr: errLockHeld}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name:  "requestor holding nothing releases nothing",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "b"}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
	}
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tab := open(t)
				for i, s := range tt.steps {
					var err error
					released := 0
					switch s.op {
					case "acquire":
						_, err = acquire(tab, "l", s.key, s.by)
					case "release", "release-all":
						_, released, err = tab.Release("l", s.key, s.by, s.op == "release-all", nil)
					default:
						t.Fatalf("unknown op %q", s.op)
					}
					if !errors.Is(err, s.wantErr) {
						t.Fatalf("step %d: %s(%q, %q) = %v; want %v", i, s.op, s.key, s.by, err, s.wantErr)
					}
					if released != s.wantReleased {
						t.Errorf("step %d: %s released %d; want %d", i, s.op, released, s.wantReleased)
					}
				}
				if got := briefOf(tab.get("l").Lock); !reflect.DeepEqual(got, tt.want) {
					t.Errorf("lock = %+v; want %+v", got, tt.want)
				}
			})
		}
	})
}

func TestReleasedLocksDisappear(t *testing.T) {
	tab, path := newTestTable(t, nil)
	for _, name := range []string{"a", "b", "c"} {
		if _, err := acquire(tab, name, "k", "r"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.Release(name, "k", "r", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := tab.Len(); n != 0 {
		t.Errorf("table holds %d locks after every release; want 0", n)
	}
	if n := loadTestTable(t, path, nil, time.Now).Len(); n != 0 {
		t.Errorf("file holds %d locks; want none", n)
	}
}

func TestFailedSaveChangesNothing(t *testing.T) {
	d := &faults.Faulty{}
	tab, path := newTestTable(t, d)
	if _, err := acquire(tab, "held", "k", "a"); err != nil {
		t.Fatal(err)
	}
	before := onDisk(t, path)
	want := tab.list()

	d.Fail("jwrite")
	changes := []struct {
		name string
		do   func() error
	}{
		{"acquire a free lock", func() error { _, err := acquire(tab, "new", "k", "a"); return err }},
		{"acquire again", func() error { _, err := acquire(tab, "held", "k", "a"); return err }},
		{"share the lock", func() error { _, err := acquire(tab, "held", "k", "b"); return err }},
		{"release", func() error { _, _, err := tab.Release("held", "k", "a", false, nil); return err }},
		{"renew", func() error { _, err := tab.Renew("held", "k", "a", time.Minute, nil); return err }},
		{"force release", func() error { _, _, err := tab.ForceRelease("held", "test", nil); return err }},
	}
	for _, c := range changes {
		err := c.do()
		if !errors.Is(err, errSave) || !errors.Is(err, faults.ErrInjected) {
			t.Errorf("%s with saving failing = %v; want errSave", c.name, err)
		}
		if got := tab.list(); !reflect.DeepEqual(got, want) {
			t.Errorf("after failed %s, table = %v; want %v", c.name, got, want)
		}
		if got := onDisk(t, path); got != before {
			t.Errorf("after failed %s, the files changed:\n%s", c.name, got)
		}
	}

	// The token handed out by the failed grant was taken back too.
	d.Fail("")
	got, err := acquire(tab, "new", "k", "a")
	if err != nil {
		t.Fatalf("acquire once the disk works again = %v", err)
	}
	if want := tab.get("held").Token + 1; got.Token != want {
		t.Errorf("token after failed grants = %d; want %d", got.Token, want)
	}
}

func TestNoOpChangesDoNotWrite(t *testing.T) {
	d := &faults.Faulty{}
	tab, _ := newTestTable(t, d)
	if _, err := acquire(tab, "l", "k", "a"); err != nil {
		t.Fatal(err)
	}
	d.Took()
	if _, _, err := tab.Release("free", "k", "a", false, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tab.Release("l", "k", "nobody", false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(tab, "l", "other", "b"); !errors.Is(err, errLockHeld) {
		t.Fatal(err)
	}
	if ops := d.Took(); len(ops) != 0 {
		t.Errorf("requests that changed nothing touched the disk: %v", ops)
	}
}

func TestListAndGetReturnCopies(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		l, err := acquire(tab, "l", "k", "a")
		if err != nil {
			t.Fatal(err)
		}
		l.Holders[0].Count = 99
		tab.get("l").Holders[0].Count = 99
		tab.list()["l"].Holders[0].Count = 99
		if got := holderOf(tab.get("l"), "a").Count; got != 1 {
			t.Errorf("count after callers changed their copies = %d; want 1", got)
		}
	})
}

// queued starts Acquire with a long wait in the background and returns
// once the request is in the queue. Its result arrives on the channel.
func queued(tb testing.TB, ctx context.Context, tab *engine, name, key, requestor string) <-chan error {
	tb.Helper()
	before := len(tab.get(name).Waiting)
	done := make(chan error, 1)
	go func() {
		_, err := tab.Acquire(ctx, name, acquireRequest{Request: lock.Request{Key: key, Requestor: requestor, Named: true}, Wait: time.Hour})
		done <- err
	}()
	testutil.WaitFor(tb, "request to join the queue", func() bool { return len(tab.get(name).Waiting) > before })
	return done
}

// granted reports whether the queued request behind done was granted,
// without waiting.
func granted(tb testing.TB, done <-chan error) bool {
	tb.Helper()
	select {
	case err := <-done:
		if err != nil {
			tb.Fatalf("queued request failed: %v", err)
		}
		return true
	default:
		return false
	}
}

// mustGrant waits for the queued request behind done to be granted.
func mustGrant(tb testing.TB, done <-chan error, who string) {
	tb.Helper()
	select {
	case err := <-done:
		if err != nil {
			tb.Fatalf("%s: %v", who, err)
		}
	case <-time.After(10 * time.Second):
		tb.Fatalf("%s was not granted", who)
	}
}

func waitingOrder(s Snapshot) []string {
	var out []string
	for _, w := range s.Waiting {
		out = append(out, w.Requestor)
	}
	return out
}

func TestQueueIsFirstComeFirstServed(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		ctx := context.Background()
		if _, err := acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		b1 := queued(t, ctx, tab, "l", "B", "b1")
		a2 := queued(t, ctx, tab, "l", "A", "a2") // shares the holders' key, but b1 came first
		b3 := queued(t, ctx, tab, "l", "B", "b3")
		if got, want := waitingOrder(tab.get("l")), []string{"b1", "a2", "b3"}; !reflect.DeepEqual(got, want) {
			t.Fatalf("queue = %v; want %v", got, want)
		}

		if _, _, err := tab.Release("l", "A", "a0", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, b1, "b1")
		if granted(t, a2) || granted(t, b3) {
			t.Fatal("a waiter behind the head's batch was granted")
		}
		if got, want := briefOf(tab.get("l").Lock), (brief{"B", map[string]int{"b1": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("lock = %v; want %v", got, want)
		}

		if _, _, err := tab.Release("l", "B", "b1", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, a2, "a2")
		if granted(t, b3) {
			t.Fatal("b3 was granted while a2 holds the lock with another key")
		}
		if _, _, err := tab.Release("l", "A", "a2", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, b3, "b3")
	})
}

func TestQueueGrantsSameKeyWaitersTogether(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		ctx := context.Background()
		if _, err := acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		b1 := queued(t, ctx, tab, "l", "B", "b1")
		b2 := queued(t, ctx, tab, "l", "B", "b2")
		b3 := queued(t, ctx, tab, "l", "B", "b3")
		c4 := queued(t, ctx, tab, "l", "C", "c4")
		b5 := queued(t, ctx, tab, "l", "B", "b5")

		if _, _, err := tab.Release("l", "A", "a0", false, nil); err != nil {
			t.Fatal(err)
		}
		for i, done := range []<-chan error{b1, b2, b3} {
			mustGrant(t, done, []string{"b1", "b2", "b3"}[i])
		}
		if granted(t, c4) || granted(t, b5) {
			t.Fatal("c4 or b5 was granted; c4 has another key and b5 is behind it")
		}
		s := tab.get("l")
		if got, want := briefOf(s.Lock), (brief{"B", map[string]int{"b1": 1, "b2": 1, "b3": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("lock = %v; want %v", got, want)
		}
		if got, want := waitingOrder(s), []string{"c4", "b5"}; !reflect.DeepEqual(got, want) {
			t.Errorf("queue = %v; want %v", got, want)
		}
	})
}

func TestNewRequestsDoNotJumpTheQueue(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		b1 := queued(t, context.Background(), tab, "l", "B", "b1")

		// Same key as the holder, but b1 is waiting: no barging.
		_, err := acquire(tab, "l", "A", "a1")
		if !errors.Is(err, errLockHeld) || !strings.Contains(err.Error(), "does not jump the queue") {
			t.Errorf("PUT with the holders' key past a queued waiter = %v; want errLockHeld about the queue", err)
		}
		// A holder taking its lock again is granted at once.
		s, err := acquire(tab, "l", "A", "a0")
		if err != nil || holderOf(s, "a0").Count != 2 {
			t.Errorf("re-entrant PUT = %v, count %d; want granted, count 2", err, holderOf(s, "a0").Count)
		}
		if granted(t, b1) {
			t.Fatal("b1 was granted while a0 holds the lock")
		}
	})
}

func TestAbandonedWaiterLeavesTheQueue(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		goroutines := runtime.NumGoroutine()
		ctx, cancel := context.WithCancel(context.Background())
		b1 := queued(t, ctx, tab, "l", "B", "b1")
		a2 := queued(t, context.Background(), tab, "l", "A", "a2")

		cancel() // b1's client goes away
		select {
		case err := <-b1:
			if !errors.Is(err, errClientGone) {
				t.Errorf("abandoned wait = %v; want errClientGone", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("abandoned waiter did not return")
		}
		// With b1 gone, a2 is at the head and shares the holders' key.
		mustGrant(t, a2, "a2")
		if got, want := briefOf(tab.get("l").Lock), (brief{"A", map[string]int{"a0": 1, "a2": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("lock = %v; want %v", got, want)
		}
		if n := len(tab.get("l").Waiting); n != 0 {
			t.Errorf("%d waiters left in the queue; want 0", n)
		}
		testutil.WaitFor(t, "waiter goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines })
	})
}

func TestWaitTimesOut(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		_, err := tab.Acquire(context.Background(), "l", acquireRequest{Request: lock.Request{Key: "B", Requestor: "b1"}, Wait: 20 * time.Millisecond})
		if !errors.Is(err, errLockHeld) || !strings.Contains(err.Error(), "timed out after 20ms") || !strings.Contains(err.Error(), `key "A" by a0 (1)`) {
			t.Errorf("wait that runs out = %v; want errLockHeld saying it timed out and who holds the lock", err)
		}
		if n := len(tab.get("l").Waiting); n != 0 {
			t.Errorf("%d waiters left after a timeout; want 0", n)
		}
	})
}

func TestShutdownEndsWaits(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancelCause(context.Background())
		b1 := queued(t, ctx, tab, "l", "B", "b1")
		cancel(errShuttingDown)
		if err := <-b1; !errors.Is(err, errShuttingDown) {
			t.Errorf("wait during shutdown = %v; want errShuttingDown", err)
		}
	})
}

// TestGrantRaceWithLeaving: a waiter is granted before it notices its
// wait ended. Ending the wait, under the lock's transaction, must take the
// grant up instead of dropping it.
func TestGrantRaceWithLeaving(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := acquire(tab, "l", "A", "a0"); err != nil {
			t.Fatal(err)
		}
		req := acquireRequest{Request: lock.Request{Key: "B", Requestor: "b1"}, Wait: time.Hour}
		var w txn.Waiter
		if err := tab.update(context.Background(), []string{"l"}, txn.Options{NewWait: true}, func(tx txn.Tx) error {
			w = enqueue(tx, []string{"l"}, req) // queued, with no request waiting on it
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.Release("l", "A", "a0", false, nil); err != nil {
			t.Fatal(err)
		}
		got, granted, err := (&wait{e: tab, names: []string{"l"}, id: w.ID, req: req}).claim(context.Background(), true, false)
		s := got["l"]
		if err != nil || !granted || holderOf(s, "b1").Count != 1 {
			t.Errorf("ending the wait after the grant = %+v, %v, %v; want the granted lock", s.Lock, granted, err)
		}
		if s := tab.get("l"); len(s.Waiting) != 0 || holderOf(s, "b1").Count != 1 {
			t.Errorf("after the grant was taken up: %+v; want b1 holding, no one waiting", s)
		}
	})
}

func TestLeases(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, clock.Now)
	start := clock.Now()
	if _, err := tab.Acquire(context.Background(), "l", acquireRequest{Request: lock.Request{Key: "k", Requestor: "a", TTL: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(tab, "l", "k", "b"); err != nil { // no lease
		t.Fatal(err)
	}
	if got := holderOf(tab.get("l"), "a").ExpiresAt; !got.Equal(start.Add(time.Minute)) {
		t.Errorf("expires_at = %v; want %v", got, start.Add(time.Minute))
	}

	// Renewing moves the expiry without changing the count; a PUT without
	// ttl leaves the lease as it was.
	clock.Advance(50 * time.Second)
	if _, err := tab.Renew("l", "k", "a", time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(tab, "l", "k", "a"); err != nil {
		t.Fatal(err)
	}
	h := holderOf(tab.get("l"), "a")
	if want := start.Add(110 * time.Second); !h.ExpiresAt.Equal(want) || h.Count != 2 {
		t.Errorf("after renew: expires_at %v, count %d; want %v, 2", h.ExpiresAt, h.Count, want)
	}
	if _, err := tab.Renew("l", "other", "a", time.Minute, nil); !errors.Is(err, errLockHeld) {
		t.Errorf("renew with the wrong key = %v; want errLockHeld", err)
	}
	if _, err := tab.Renew("l", "k", "nobody", time.Minute, nil); !errors.Is(err, errLockHeld) {
		t.Errorf("renew by a non-holder = %v; want errLockHeld", err)
	}

	// The original expiry passes: nothing happens, it was renewed.
	clock.Advance(11 * time.Second)
	settleAll(t, tab)
	if got := holderOf(tab.get("l"), "a").Count; got != 2 {
		t.Fatalf("count after the renewed lease's old expiry = %d; want 2", got)
	}

	// A waiter with another key queues; when a's lease runs out, every count
	// of a goes, b still holds, and the waiter keeps waiting.
	c := queued(t, context.Background(), tab, "l", "other", "c")
	clock.Advance(time.Minute)
	settleAll(t, tab)
	if got, want := briefOf(tab.get("l").Lock), (brief{"k", map[string]int{"b": 1}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a's lease ran out, lock = %v; want %v", got, want)
	}
	if granted(t, c) {
		t.Fatal("c was granted while b holds the lock")
	}
	if _, _, err := tab.Release("l", "k", "b", false, nil); err != nil {
		t.Fatal(err)
	}
	mustGrant(t, c, "c")

	// The expiry was saved.
	reloaded := loadTestTable(t, path, nil, clock.Now)
	if got, want := briefOf(reloaded.get("l").Lock), (brief{"other", map[string]int{"c": 1}}); !reflect.DeepEqual(got, want) {
		t.Errorf("file holds %v; want %v", got, want)
	}
}

func TestLeaseExpiresWhileStopped(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, clock.Now)
	if _, err := tab.Acquire(context.Background(), "leased", acquireRequest{Request: lock.Request{Key: "k", Requestor: "a", TTL: time.Minute, Note: "build 42"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := acquire(tab, "kept", "k", "a"); err != nil {
		t.Fatal(err)
	}
	// Restarted before the lease runs out: it is still there, note and all.
	early := loadTestTable(t, path, nil, clock.Now)
	if h := holderOf(early.get("leased"), "a"); h.Note != "build 42" || h.ExpiresAt.IsZero() {
		t.Errorf("holder after a restart = %+v; want its note and lease", h)
	}
	// Restarted after: it is gone, the other lock is not.
	clock.Advance(2 * time.Minute)
	late := loadTestTable(t, path, nil, clock.Now)
	settleAll(t, late)
	if !late.get("leased").Free() || late.get("kept").Free() {
		t.Errorf("after a restart past the lease: leased = %+v, kept = %+v; want leased free, kept held",
			late.get("leased").Lock, late.get("kept").Lock)
	}
}

func TestExpireLoopReleasesOnTime(t *testing.T) {
	tab, _ := newTestTable(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tab.background(ctx)
	}()
	defer func() { cancel(); <-done }()
	if _, err := tab.Acquire(context.Background(), "l", acquireRequest{Request: lock.Request{Key: "k", Requestor: "a", TTL: 30 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the lease to expire", func() bool { return tab.get("l").Free() })
}

func TestTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, time.Now)
	first, err := acquire(tab, "l", "k", "a")
	if err != nil {
		t.Fatal(err)
	}
	again, err := acquire(tab, "l", "k", "b") // still held: same token
	if err != nil || again.Token != first.Token {
		t.Fatalf("token while held = %d, %v; want %d", again.Token, err, first.Token)
	}
	other, err := acquire(tab, "m", "k", "a")
	if err != nil || other.Token <= first.Token {
		t.Fatalf("token of another lock = %d, %v; want above %d", other.Token, err, first.Token)
	}
	for _, r := range []string{"a", "b"} {
		if _, _, err := tab.Release("l", "k", r, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := tab.Release("m", "k", "a", false, nil); err != nil {
		t.Fatal(err)
	}
	// Every lock is free and gone from the file, yet a restart does not
	// hand out a token again.
	reloaded := loadTestTable(t, path, nil, time.Now)
	next, err := acquire(reloaded, "l", "k", "a")
	if err != nil || next.Token <= other.Token {
		t.Errorf("token after a restart = %d, %v; want above %d", next.Token, err, other.Token)
	}
}

func TestForceRelease(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		for _, r := range []string{"a", "b", "a"} {
			if _, err := acquire(tab, "l", "k", r); err != nil {
				t.Fatal(err)
			}
		}
		c := queued(t, context.Background(), tab, "l", "other", "c")
		old, _, err := tab.ForceRelease("l", "test", nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := briefOf(old), (brief{"k", map[string]int{"a": 2, "b": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("force release returned %v; want what was held, %v", got, want)
		}
		mustGrant(t, c, "c")
		if got, want := briefOf(tab.get("l").Lock), (brief{"other", map[string]int{"c": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("lock after force release = %v; want the waiter's, %v", got, want)
		}
	})
}

// TestLeaseIsJudgedAtTheRequest lets a lease run out with no expiry loop
// running: every request must see it ended, not only the loop. A renewal
// is refused and another key is granted at once.
func TestLeaseIsJudgedAtTheRequest(t *testing.T) {
	t.Parallel() // mostly waits
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := tab.Acquire(context.Background(), "l", acquireRequest{Request: lock.Request{Key: "k", Requestor: "a", TTL: time.Second, Named: true}}); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, "the lease to run out", func() bool { return tab.get("l").Free() })
		if _, err := tab.Renew("l", "k", "a", time.Minute, nil); !errors.Is(err, errLockHeld) {
			t.Errorf("renewing a lease after it ran out = %v; want errLockHeld", err)
		}
		if _, err := acquire(tab, "l", "other", "b"); err != nil {
			t.Errorf("another key after the only lease ran out = %v; want it granted", err)
		}
	})
}

// TestRefusalCountsWaitersByKey checks what a 423 says of the queue: how
// many wait first, and how many of them with another key.
func TestRefusalCountsWaitersByKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func(testing.TB) *engine) {
		tab := open(t)
		if _, err := acquire(tab, "l", "k", "a"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		queued(t, ctx, tab, "l", "x", "b")
		queued(t, ctx, tab, "l", "k", "c")
		_, err := acquire(tab, "l", "k", "d")
		if want := `"l" has 2 requests waiting first (1 with another key)`; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("refusal = %v; want it to say %s", err, want)
		}
	})
}

// lockOf returns a lock held with key by requestors with the given counts.
func lockOf(key string, counts map[string]int) Lock {
	var l Lock
	for _, r := range slices.Sorted(maps.Keys(counts)) {
		l.Holders = append(l.Holders, Holder{Name: r, Hold: lock.Hold{Count: counts[r]}})
	}
	l.Key = key
	return l
}
