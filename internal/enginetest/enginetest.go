// Package enginetest opens lock engines for tests, over each store: a
// file store in the test's temporary directory, a PostgreSQL node in a
// schema of its own (internal/testutil.PostgresSchema). The engine's
// contract tests and the API's tests open their tables here, so that both
// run on both stores.
package enginetest

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/pgstore"
	"github.com/locker-ci/locker/internal/stream"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// Table is an engine over a store, with what tests reach beside it.
type Table struct {
	*engine.Engine
	Store engine.Store
	Hub   *stream.Hub // where the store's events go as they commit
	Path  string      // the state file, for a file store
}

// DiscardLog logs nothing.
var DiscardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// History is how much history the tests' stores keep.
var History = txn.History{Events: 100}

// File returns an empty table saved to a file in a temporary directory
// through d (the real disk when d is nil).
func File(tb testing.TB, d atomicfile.FS) *Table {
	tb.Helper()
	return Load(tb, filepath.Join(tb.TempDir(), "locks.yml"), d, time.Now)
}

// openFiles is the file store last opened on each path by Load.
var openFiles sync.Map // path -> *filestore.Store

// Load loads the table saved in path and its journal, as the server does
// at start, with the clock now. A store still open on path is closed
// first without a checkpoint, as a crashed process leaves it (its journal
// holds what it was told), though its table can still be read. The store
// is closed when the test ends.
func Load(tb testing.TB, path string, d atomicfile.FS, now func() time.Time) *Table {
	tb.Helper()
	if d == nil {
		d = atomicfile.OS{}
	}
	if earlier, ok := openFiles.Load(path); ok {
		_ = earlier.(*filestore.Store).Close(false)
	}
	hub := stream.NewHub()
	store, err := filestore.Open(path, d, filestore.Options{Log: DiscardLog, Now: now, History: History, Events: hub.Publish})
	if err != nil {
		tb.Fatal(err)
	}
	openFiles.Store(path, store)
	tb.Cleanup(func() { _ = store.Close(false) })
	return &Table{Engine: engine.New(store, engine.Options{Log: DiscardLog}), Store: store, Hub: hub, Path: path}
}

// Postgres returns the table a node shares with others in the database
// at url, its background work running, closed when the test ends.
func Postgres(tb testing.TB, url, node string) *Table {
	tb.Helper()
	return PostgresLogged(tb, url, node, DiscardLog)
}

// PostgresLogged is Postgres with the engine's log going to log.
func PostgresLogged(tb testing.TB, url, node string, log *slog.Logger) *Table {
	tb.Helper()
	hub := stream.NewHub()
	store, err := pgstore.Open(context.Background(), url, node, pgstore.Options{History: History, Events: hub.Publish})
	if err != nil {
		tb.Fatal(err)
	}
	t := &Table{Engine: engine.New(store, engine.Options{Log: log}), Store: store, Hub: hub}
	ctx, cancel := context.WithCancel(context.Background())
	var loop sync.WaitGroup
	loop.Go(func() { t.Run(ctx) })
	tb.Cleanup(func() {
		cancel()
		loop.Wait()
		_ = store.Close(false)
	})
	return t
}

// Kind is a store the contract tests run on.
type Kind struct {
	Name string
	Open func(tb testing.TB) *Table // an empty table
}

// Kinds are the stores every test of the contract runs on: the file
// store, and PostgreSQL (skipped, saying so, where there is none, unless
// CI is set).
var Kinds = []Kind{
	{"file", func(tb testing.TB) *Table { return File(tb, nil) }},
	{"postgresql", func(tb testing.TB) *Table { return Postgres(tb, testutil.PostgresSchema(tb), "node") }},
}

// ForEachStore runs f as a subtest on each store.
func ForEachStore(t *testing.T, f func(t *testing.T, open func(tb testing.TB) *Table)) {
	for _, kind := range Kinds {
		t.Run(kind.Name, func(t *testing.T) { f(t, kind.Open) })
	}
}

// Get returns the lock called name and its queue, failing the test if
// it cannot be read.
func Get(tb testing.TB, e *Table, name string) engine.Snapshot {
	tb.Helper()
	s, err := e.Get(name)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// List returns the whole listing, by List's pages.
func List(tb testing.TB, e *Table) map[string]engine.Snapshot {
	tb.Helper()
	m := map[string]engine.Snapshot{}
	for page := (txn.Page{Limit: 100}); ; {
		locks, next, err := e.List(context.Background(), page)
		if err != nil {
			tb.Fatal(err)
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

// Acquire takes a lock without waiting, for requestor (named) with key.
func Acquire(e *Table, name, key, requestor string) (engine.Snapshot, error) {
	return e.Acquire(context.Background(), name, engine.Request{Request: lock.Request{Key: key, Requestor: requestor, Named: true}})
}

// HolderOf returns the holder of s called name, or a zero Holder.
func HolderOf(s engine.Snapshot, name string) lock.Holder {
	h, _ := s.Holder(name)
	return h
}

// Queued starts Acquire with a long wait in the background and returns
// once the request is in the queue. Its result arrives on the channel.
func Queued(tb testing.TB, ctx context.Context, tab *Table, name, key, requestor string) <-chan error {
	tb.Helper()
	before := len(Get(tb, tab, name).Waiting)
	done := make(chan error, 1)
	go func() {
		_, err := tab.Acquire(ctx, name, engine.Request{Request: lock.Request{Key: key, Requestor: requestor, Named: true}, Wait: time.Hour})
		done <- err
	}()
	testutil.WaitFor(tb, "request to join the queue", func() bool { return len(Get(tb, tab, name).Waiting) > before })
	return done
}

// LockOf returns a lock held with key by requestors with the given counts.
func LockOf(key string, counts map[string]int) lock.Lock {
	var l lock.Lock
	for _, r := range slices.Sorted(maps.Keys(counts)) {
		l.Holders = append(l.Holders, lock.Holder{Name: r, Hold: lock.Hold{Count: counts[r]}})
	}
	l.Key = key
	return l
}

// Said is an event as a test compares it: what happened, without the
// store's ID and clock.
type Said struct {
	Kind          lock.Kind
	Holder, Key   string
	Counts        int
	Note, By      string
	Reason        string
	Waited, Token bool // some wait, a token
	Held          bool // held for some time
}

func SaidOf(e lock.Event) Said {
	return Said{Kind: e.Kind, Holder: e.Holder, Key: e.Key, Counts: e.Counts, Note: e.Note, By: e.By, Reason: e.Reason,
		Waited: e.Waited > 0, Token: e.Token > 0, Held: e.Held > 0}
}
