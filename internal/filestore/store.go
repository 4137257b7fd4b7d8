// Package filestore keeps the lock table in memory, each change durable
// in a journal beside the YAML state file before anyone hears of it
// (group-committed: one fsync for the changes that arrive together), and
// the whole table written to the state file now and then so that the
// journal stays short. It implements the transactions of internal/txn
// for one server: a kernel lock on the state file keeps a second server
// away.
package filestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/journal"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/statefile"
	"github.com/locker-ci/locker/internal/txn"
)

// Saved is the lock table as the state file keeps it.
type Saved = statefile.State

// Change is one journal record: one transaction's locks as they are after
// it (nil for a lock it freed), the token counter, and the outcomes by
// Idempotency-Key it remembers and forgets.
type Change struct {
	Seq uint64 `json:"seq"`
	// Prev is the change this one was made on: the journal must hold it
	// (or the state file), or records are missing. 0 in journals written
	// before it was kept.
	Prev      uint64                `json:"prev,omitempty"`
	LastToken uint64                `json:"last_token"`
	Locks     map[string]*lock.Lock `json:"locks"`
	Remember  []idempotency.Entry   `json:"remember,omitempty"`
	Forget    []string              `json:"forget,omitempty"`
	Pools     map[string]*lock.Pool `json:"pools,omitempty"` // the pools it changed, as they are after it (nil: removed)
	// Credentials are the credentials it changed, as they are after it
	// (nil: removed): their secrets' hashes.
	Credentials map[string]*access.Credential `json:"credentials,omitempty"`
	// Events are the events it adds to its locks' histories, and
	// LastEvent the event counter after it.
	Events    []lock.Event `json:"events,omitempty"`
	LastEvent uint64       `json:"last_event,omitempty"`
}

// DefaultCheckpointBytes is the journal size below which no checkpoint is
// asked for: replaying a few megabytes at start takes milliseconds.
const DefaultCheckpointBytes = 8 << 20

// Store keeps the table in the YAML state file at path, as a snapshot,
// and each change since in a journal beside it (path + ".journal"), one
// line a change, group-committed.
type Store struct {
	*disk
	metrics *metrics.Metrics // nil records nothing
	now     func() time.Time
	wake    chan struct{} // tells the expiry loop that a new lease may come first

	mu          sync.Mutex // guards the fields below
	locks       map[string]lock.Lock
	queues      map[string][]txn.Waiter // waiters per lock, first come first served
	names       *btree.BTreeG[string]   // the names in locks or queues, in order: the listing's pages
	pools       map[string]lock.Pool
	credentials map[string]access.Credential // by name: hashes, never secrets
	lastToken   uint64                       // the highest fencing token handed out
	lastWaiter  int64                        // the highest waiter ID handed out
	leases      leaseHeap
	seq         uint64                  // the change the table now shows; replies wait for it
	lastSeq     uint64                  // the last seq handed out; seqs are never reused
	undo        []undo                  // changes not yet known to be durable, oldest first
	requests    idempotency.Set         // outcomes by Idempotency-Key
	history     map[string][]lock.Event // each lock's events, oldest first, held or free
	byID        eventIndex              // the events of history by ID, for Backlog
	lastEvent   uint64                  // the highest event ID handed out
	keep        txn.History             // how much history to keep
	forgotten   uint64                  // the highest event ID no longer kept
	unsent      []unsent                // events of changes not yet durable, oldest first
	sent        uint64                  // the highest event ID handed to onEvents
	onEvents    func([]lock.Event)      // told of each change's events once durable, in order

	watchMu  sync.Mutex // guards watchers; taken under mu, never the other way round
	watchers map[int64][]chan struct{}

	// durableSeq is the latest change that a wait found durable: the
	// changes up to it can no longer be undone.
	durableSeq atomic.Uint64
}

// Options are the store's settings beyond its file.
type Options struct {
	// CheckpointBytes is the journal size below which no checkpoint is
	// asked for (0: 8 MiB).
	CheckpointBytes int64
	Log             *slog.Logger     // nil logs nothing
	Metrics         *metrics.Metrics // nil counts nothing
	Now             func() time.Time // nil is time.Now
	// History is how much of each lock's history to keep (zero: none).
	History txn.History
	// Events, if set, is told of each change's events once the change is
	// durable, in the order of the changes, from one goroutine at a time.
	// It must be quick.
	Events func([]lock.Event)
}

// Open takes the state file at path for this process, reads it (creating
// it empty if it is missing) and replays its journal onto it. A file that
// cannot be read is an error and is left as it is.
func Open(path string, fsys atomicfile.FS, opts Options) (*Store, error) {
	s := &Store{disk: newDisk(path, fsys, opts.CheckpointBytes, opts.Log), metrics: opts.Metrics,
		wake: make(chan struct{}, 1), queues: map[string][]txn.Waiter{}, watchers: map[int64][]chan struct{}{},
		history: map[string][]lock.Event{}, keep: opts.History, onEvents: opts.Events}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	// Milliseconds are precise enough for leases and easier to read.
	s.now = func() time.Time { return now().UTC().Truncate(time.Millisecond) }
	st, err := s.open(s.rollback)
	if err != nil {
		return nil, err
	}
	s.locks, s.pools, s.lastToken, s.seq, s.lastSeq = st.Locks, st.Pools, st.LastToken, st.Seq, st.Seq
	if s.locks == nil {
		s.locks = map[string]lock.Lock{}
	}
	if s.pools == nil {
		s.pools = map[string]lock.Pool{}
	}
	if s.credentials = st.Credentials; s.credentials == nil {
		s.credentials = map[string]access.Credential{}
	}
	s.names = btree.NewOrderedG[string](32)
	for _, name := range slices.Sorted(maps.Keys(s.locks)) {
		s.names.ReplaceOrInsert(name)
	}
	for _, e := range st.Requests {
		s.requests.Put(e)
	}
	s.lastEvent, s.sent = st.LastEvent, st.LastEvent
	s.load(intern(st.History, s.locks))
	s.durableSeq.Store(st.Seq)
	for name, l := range s.locks {
		s.scheduleLeases(name, lock.Lock{}, l)
	}
	s.journal.OnSync(func(d time.Duration, records int, durable uint64) {
		s.metrics.Synced(d, records)
		s.send(durable)
	})
	return s, nil
}

// Update runs apply in a transaction over the locks named, and returns
// once its change is on disk (every change before it too: a reply never
// shows what could still be undone).
func (s *Store) Update(_ context.Context, names []string, opts txn.Options, apply func(txn.Tx) error) error {
	s.mu.Lock()
	x := s.begin(names, opts.Pool, "")
	if err := apply(x); err != nil {
		x.abort()
		s.mu.Unlock()
		return err
	}
	err := x.commit()
	seq := s.seq
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.durable(seq)
}

// View runs fn over the locks named, once what it sees is on disk.
func (s *Store) View(_ context.Context, names []string, fn func(txn.Reader) error) error {
	s.mu.Lock()
	err := fn(s.begin(names, "", ""))
	seq := s.seq
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.durable(seq)
}

// Credentials returns every credential, by name, once what it shows is
// on disk.
func (s *Store) Credentials(context.Context) (map[string]access.Credential, error) {
	s.mu.Lock()
	creds, seq := maps.Clone(s.credentials), s.seq
	s.mu.Unlock()
	return creds, s.durable(seq)
}

// UpdateCredential changes the credential called name as change says,
// in a change of its own, and returns once it is on disk.
func (s *Store) UpdateCredential(_ context.Context, name string, change txn.ChangeCredential) error {
	s.mu.Lock()
	x := s.begin(nil, "", name)
	c, ok := x.cred.get(s.credentials, name)
	next, err := change(c, ok)
	switch {
	case err != nil || next == nil && !ok:
		s.mu.Unlock()
		return err
	case next == nil:
		x.cred.remove(s.credentials, name)
	default:
		x.cred.set(s.credentials, name, *next)
	}
	err = x.commit()
	seq := s.seq
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.durable(seq)
}

// Pools returns a copy of every pool, once what it shows is on disk.
func (s *Store) Pools(context.Context) (map[string]lock.Pool, error) {
	s.mu.Lock()
	pools, seq := maps.Clone(s.pools), s.seq
	s.mu.Unlock()
	return pools, s.durable(seq)
}

// Scan reads a copy of a page of the table into t, once it is on disk.
// The mutex is held while the page is copied, no longer.
func (s *Store) Scan(_ context.Context, page txn.Page, t *txn.Tables) error {
	t.Reset()
	s.mu.Lock()
	s.tables(page, t)
	seq := s.seq
	s.mu.Unlock()
	return s.durable(seq)
}

// durable returns once change seq is durable, or why it never will be.
func (s *Store) durable(seq uint64) error {
	err := s.journal.Wait(seq)
	for old := s.durableSeq.Load(); err == nil && seq > old && !s.durableSeq.CompareAndSwap(old, seq); {
		old = s.durableSeq.Load()
	}
	if err != nil && !errors.Is(err, atomicfile.ErrUncertain) && !errors.Is(err, txn.ErrNotSaved) {
		return fmt.Errorf("%w: %w", txn.ErrNotSaved, err)
	}
	return err
}

// Watch returns a channel signalled when waiter id is granted.
func (s *Store) Watch(id int64) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.watchMu.Lock()
	s.watchers[id] = append(s.watchers[id], ch)
	s.watchMu.Unlock()
	return ch, func() {
		s.watchMu.Lock()
		defer s.watchMu.Unlock()
		s.watchers[id] = slices.DeleteFunc(s.watchers[id], func(c chan struct{}) bool { return c == ch })
		if len(s.watchers[id]) == 0 {
			delete(s.watchers, id)
		}
	}
}

// tell signals the watchers of the waiters granted. Callers hold s.mu.
func (s *Store) tell(granted []grant) {
	if len(granted) == 0 {
		return
	}
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	for _, g := range granted {
		for _, ch := range s.watchers[g.id] {
			select {
			case ch <- struct{}{}:
			default: // told already
			}
		}
	}
}

// Now is the store's clock, to the millisecond.
func (s *Store) Now() time.Time { return s.now() }

// Recheck is 0: every grant is told.
func (s *Store) Recheck() time.Duration { return 0 }

// Waiter returns the waiter with id in each queue of names it is in (of
// every lock, for nil names).
func (s *Store) Waiter(ctx context.Context, id int64, names []string) (map[string]txn.Waiter, error) {
	if names == nil {
		s.mu.Lock()
		for name, q := range s.queues {
			if slices.ContainsFunc(q, func(w txn.Waiter) bool { return w.ID == id }) {
				names = append(names, name)
			}
		}
		s.mu.Unlock()
	}
	found := map[string]txn.Waiter{}
	err := s.View(ctx, names, func(r txn.Reader) error {
		for _, name := range names {
			if i := slices.IndexFunc(r.Queue(name), func(w txn.Waiter) bool { return w.ID == id }); i >= 0 {
				found[name] = r.Queue(name)[i]
			}
		}
		return nil
	})
	return found, err
}

// Run ends leases when they run out and checkpoints when the journal asks,
// until ctx is done.
func (s *Store) Run(ctx context.Context, settle func(ctx context.Context, names []string) error) {
	var loops sync.WaitGroup
	loops.Go(func() { s.expireLoop(ctx, settle) })
	loops.Go(func() { s.checkpointLoop(ctx) })
	loops.Wait()
}

// Ready says whether the journal can take changes: its last write
// succeeded, and no sync has failed.
func (s *Store) Ready(context.Context) error {
	err := s.journal.Healthy()
	var room *journal.NoRoomError
	switch {
	case errors.As(err, &room):
		return fmt.Errorf("%w: %w (%w)", txn.ErrNotSaved, &txn.NoRoomError{Need: room.Need}, err)
	case err != nil:
		return fmt.Errorf("%w: the journal beside LOCKER_CONFIG cannot be written: %w", txn.ErrNotSaved, err)
	}
	return nil
}

// Broken delivers a failure after which the state on disk is in doubt.
func (s *Store) Broken() <-chan error { return s.journal.Fatal() }

// Close stops the store. Clean, it first writes the whole table to the
// state file, so that at rest the state file holds it and the journal
// beside it is empty (it stays: the state file's seal says it is there);
// else the journal keeps what it has. Callers make sure no change is under
// way.
func (s *Store) Close(clean bool) error {
	if !clean {
		return errors.Join(s.journal.Close(false), s.owner.Release())
	}
	if err := s.checkpoint(); err != nil {
		return errors.Join(err, s.journal.Close(false), s.owner.Release())
	}
	return errors.Join(s.journal.Close(false), s.owner.Release())
}

// Len returns the number of held locks.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.locks)
}

// saved returns the table as it is now, sharing its Lock values.
func (s *Store) saved() Saved {
	s.mu.Lock()
	s.requests.Prune(s.now())
	st := Saved{Seq: s.seq, LastToken: s.lastToken, Locks: maps.Clone(s.locks), Pools: maps.Clone(s.pools), Credentials: maps.Clone(s.credentials), Requests: s.requests.All(),
		LastEvent: s.lastEvent}
	history := maps.Clone(s.history) // its slices are shared: see history.go
	s.mu.Unlock()
	st.History = s.kept(history)
	return st
}

// checkpoint saves the whole table to the state file, so that the journal
// can forget the changes it holds. The table is copied under its mutex, a
// quick copy of the map, and saved without it.
func (s *Store) checkpoint() error {
	st := s.saved()
	if err := s.durable(st.Seq); err != nil {
		return err
	}
	return s.writeCheckpoint(st)
}

// checkpointLoop checkpoints whenever the journal asks, until ctx is done.
func (s *Store) checkpointLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.journal.Full():
			start := time.Now()
			if err := s.checkpoint(); err != nil {
				s.log.Error("checkpointing the journal into the state file", "err", err)
				continue
			}
			s.metrics.Checkpointed(time.Since(start))
			s.log.Info("journal checkpointed into the state file", "locks", s.Len(), "duration", time.Since(start))
		}
	}
}
