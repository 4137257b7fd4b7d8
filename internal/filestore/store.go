// Package filestore keeps the lock table in memory, each change durable
// in a journal beside the YAML state file before anyone hears of it
// (group-committed: one fsync for the changes that arrive together), and
// the whole table written to the state file now and then so that the
// journal stays short. It implements the transactions of internal/txn
// for one server: a kernel lock on the state file keeps a second server
// away.
package filestore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/filelock"
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
}

// DefaultCheckpointBytes is the journal size below which no checkpoint is
// asked for: replaying a few megabytes at start takes milliseconds.
const DefaultCheckpointBytes = 8 << 20

// Store keeps the table in the YAML state file at path, as a snapshot,
// and each change since in a journal beside it (path + ".journal"), one
// line a change, group-committed.
type Store struct {
	path    string
	fsys    atomicfile.FS
	journal *journal.Journal
	owner   *filelock.Lock // held from Open to Close: one server per state file
	log     *slog.Logger
	metrics *metrics.Metrics // nil records nothing
	now     func() time.Time
	wake    chan struct{} // tells the expiry loop that a new lease may come first

	// savedSeq is the last change the state file holds; original holds
	// the file's bytes while it is still in the original locker's format.
	// Both are used by Checkpoint only.
	savedSeq uint64
	original []byte

	// checkpointBytes is the journal size below which no checkpoint is
	// asked for; past it, a checkpoint is asked for once the journal is
	// twice the state file's size.
	checkpointBytes int64

	mu         sync.Mutex // guards the fields below
	locks      map[string]lock.Lock
	queues     map[string][]txn.Waiter // waiters per lock, first come first served
	lastToken  uint64                  // the highest fencing token handed out
	lastWaiter int64                   // the highest waiter ID handed out
	leases     leaseHeap
	seq        uint64          // the change the table now shows; replies wait for it
	lastSeq    uint64          // the last seq handed out; seqs are never reused
	undo       []undo          // changes not yet known to be durable, oldest first
	requests   idempotency.Set // outcomes by Idempotency-Key
	buf        bytes.Buffer    // encodes one change at a time
	enc        *json.Encoder

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
}

// Open takes the state file at path for this process, reads it (creating
// it empty if it is missing) and replays its journal onto it. A file that
// cannot be read is an error and is left as it is.
func Open(path string, fsys atomicfile.FS, opts Options) (*Store, error) {
	s := &Store{path: path, fsys: fsys, checkpointBytes: opts.CheckpointBytes, log: opts.Log, metrics: opts.Metrics,
		wake: make(chan struct{}, 1), queues: map[string][]txn.Waiter{}, watchers: map[int64][]chan struct{}{}}
	if s.checkpointBytes == 0 {
		s.checkpointBytes = DefaultCheckpointBytes
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	// Milliseconds are precise enough for leases and easier to read.
	s.now = func() time.Time { return now().UTC().Truncate(time.Millisecond) }
	s.enc = json.NewEncoder(&s.buf)
	s.enc.SetEscapeHTML(false) // names and notes hold URLs; keep & and < readable
	st, err := s.open()
	if err != nil {
		return nil, err
	}
	s.locks, s.lastToken, s.seq, s.lastSeq = st.Locks, st.LastToken, st.Seq, st.Seq
	if s.locks == nil {
		s.locks = map[string]lock.Lock{}
	}
	for _, e := range st.Requests {
		s.requests.Put(e)
	}
	s.durableSeq.Store(st.Seq)
	for name, l := range s.locks {
		s.scheduleLeases(name, lock.Lock{}, l)
	}
	s.journal.OnSync(s.metrics.Synced)
	return s, nil
}

// Read returns the table a state file and its journal hold, for locker
// migrate; it opens the file as Open does, and closes it.
// A state file that does not exist is an error: Read creates nothing
// (the kernel lock's file, taken to keep a server away while it reads, is
// removed again unless it was there before).
func Read(path string, fsys atomicfile.FS) (Saved, error) {
	if _, err := os.Stat(path); err != nil {
		return Saved{}, fmt.Errorf("%w (check the path: migrate reads its source and never creates it)", err)
	}
	s := &Store{path: path, fsys: fsys, checkpointBytes: DefaultCheckpointBytes, log: slog.New(slog.DiscardHandler)}
	if err := s.resolve(); err != nil {
		return Saved{}, err
	}
	_, lockErr := os.Stat(s.lockPath())
	_, journalErr := os.Stat(s.journalPath())
	st, err := s.open()
	if err != nil {
		return Saved{}, err
	}
	// A journal opened only to be read, and not there before, goes again.
	err = errors.Join(s.journal.Close(errors.Is(journalErr, fs.ErrNotExist)), s.owner.Release())
	if errors.Is(lockErr, fs.ErrNotExist) {
		_ = os.Remove(s.lockPath())
	}
	return st, err
}

// Update runs apply in a transaction over the locks named, and returns
// once its change is on disk (every change before it too: a reply never
// shows what could still be undone).
func (s *Store) Update(_ context.Context, names []string, _ txn.Options, apply func(txn.Tx) error) error {
	s.mu.Lock()
	x := s.begin(names)
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
	err := fn(s.begin(names))
	seq := s.seq
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.durable(seq)
}

// Scan returns a copy of the whole table, once it is on disk. The copy
// is quick: locks and queues are shared, never changed in place.
func (s *Store) Scan(context.Context) (*txn.Tables, error) {
	s.mu.Lock()
	t, seq := s.tables(), s.seq
	s.mu.Unlock()
	return t, s.durable(seq)
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
// state file, so that at rest the state file alone holds it, and removes
// the journal; else the journal keeps what it has. Callers make sure no
// change is under way.
func (s *Store) Close(clean bool) error {
	if !clean {
		return errors.Join(s.journal.Close(false), s.owner.Release())
	}
	if err := s.checkpoint(); err != nil {
		return errors.Join(err, s.journal.Close(false), s.owner.Release())
	}
	return errors.Join(s.journal.Close(true), s.owner.Release())
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
	defer s.mu.Unlock()
	s.requests.Prune(s.now())
	return Saved{Seq: s.seq, LastToken: s.lastToken, Locks: maps.Clone(s.locks), Requests: s.requests.All()}
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

// open locks the state file, reads it and replays the journal onto it.
// A state file reached through a symbolic link is the file it points to:
// its journal and kernel lock are beside that file, so that two servers
// on one file through different paths find each other, and a checkpoint
// replaces the file, not the link.
func (s *Store) open() (st Saved, err error) {
	if err := s.resolve(); err != nil {
		return Saved{}, err
	}
	if err := s.lock(); err != nil {
		return Saved{}, err
	}
	defer func() {
		if err != nil {
			_ = s.owner.Release()
		}
	}()
	st, size, err := s.load()
	var pathErr *fs.PathError
	switch {
	case errors.As(err, &pathErr):
		return Saved{}, fmt.Errorf("%w\nlocker did not start and left the file as it was: make it readable and writable by the user locker runs as (do not move it aside: it holds the locks)", err)
	case err != nil:
		return Saved{}, fmt.Errorf("%w\nlocker did not start and left the file as it was: fix it, or move it aside to start empty", err)
	}
	giveTokens(&st)
	snapSeq := st.Seq
	j, _, err := journal.Open(s.journalPath(), s.fsys, snapSeq, func(payload []byte) (uint64, error) {
		return replay(&st, snapSeq, payload)
	}, func(from uint64, err error) uint64 {
		return s.rollback(from, fmt.Errorf("%w: %w", txn.ErrNotSaved, err))
	})
	if err != nil {
		return Saved{}, fmt.Errorf("%w\nlocker did not start and left the journal as it was: move it aside to start from the state file alone", err)
	}
	if n, kept := j.Torn(); n > 0 {
		s.log.Warn("the journal ended in a torn or damaged record, which was dropped: a crash as it was written leaves one, never acknowledged; a damaged disk can damage one that was",
			"journal", s.journalPath(), "bytes", n, "kept_in", kept)
	}
	j.CompactAt(max(s.checkpointBytes, 2*size))
	s.journal = j
	return st, nil
}

// resolve makes s.path the real path of the state file: its links
// followed, or its directory's when it does not exist yet.
func (s *Store) resolve() error {
	real, err := filepath.EvalSymlinks(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		dir, derr := filepath.EvalSymlinks(filepath.Dir(s.path))
		if derr != nil {
			return nil // lock reports a missing directory in its own words
		}
		real, err = filepath.Join(dir, filepath.Base(s.path)), nil
	}
	if err != nil {
		return fmt.Errorf("LOCKER_CONFIG %s: following its links: %w", s.path, err)
	}
	if real != s.path {
		s.log.Info("LOCKER_CONFIG is a link; the state is kept in the file it points to", "state_file", s.path, "real_path", real)
	}
	s.path = real
	return nil
}

// append queues c as one journal line. Callers hold s.mu.
func (s *Store) append(c Change) error {
	s.buf.Reset()
	if err := s.enc.Encode(c); err != nil {
		return fmt.Errorf("%w: encoding the change: %w", txn.ErrNotSaved, err)
	}
	// The journal copies the line; buf is free again when append returns.
	err := s.journal.Append(c.Seq, bytes.TrimSuffix(s.buf.Bytes(), []byte("\n")))
	if errors.Is(err, journal.ErrClosed) {
		return txn.ErrClosed
	}
	return err
}

// journalPath is where the changes since the snapshot are kept.
func (s *Store) journalPath() string { return s.path + ".journal" }

// lockPath is the file whose kernel lock says which server owns the state.
func (s *Store) lockPath() string { return s.path + ".lock" }

// lock takes the state file for this server alone, before anything is
// read: a second server on the same file would grant the same locks.
func (s *Store) lock() error {
	owner, err := filelock.Acquire(s.lockPath())
	var held *filelock.HeldError
	switch {
	case errors.As(err, &held) && held.PID > 0:
		return fmt.Errorf("LOCKER_CONFIG %s is in use by another locker server, process %d (it holds %s): stop it first, or give this server its own LOCKER_CONFIG", s.path, held.PID, held.Path)
	case errors.As(err, &held):
		return fmt.Errorf("LOCKER_CONFIG %s is in use by another locker server (it holds %s): stop it first, or give this server its own LOCKER_CONFIG", s.path, held.Path)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("LOCKER_CONFIG %s: the directory %s does not exist: create it, or point LOCKER_CONFIG at a file in a directory that does", s.path, filepath.Dir(s.path))
	case err != nil:
		return fmt.Errorf("LOCKER_CONFIG %s: taking it for this server: %w", s.path, err)
	}
	s.owner = owner
	return nil
}

// load reads the state file and returns it and its size. Leftover
// temporary files of an interrupted save are removed first.
func (s *Store) load() (Saved, int64, error) {
	for _, p := range []string{s.path, s.journalPath()} {
		if err := atomicfile.RemoveTemps(s.fsys, p); err != nil {
			return Saved{}, 0, err
		}
	}
	data, err := os.ReadFile(s.path) // the operator's LOCKER_CONFIG
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(s.journalPath()); err == nil {
			return Saved{}, 0, fmt.Errorf("LOCKER_CONFIG %s is missing but its journal %s is there: restore the state file, or move the journal aside to start empty",
				s.path, s.journalPath())
		}
		st := Saved{Locks: map[string]lock.Lock{}}
		n, err := s.save(st)
		if err != nil {
			return Saved{}, 0, fmt.Errorf("creating state file: %w", err)
		}
		return st, n, nil
	}
	if err != nil {
		return Saved{}, 0, fmt.Errorf("LOCKER_CONFIG %s cannot be read: %w", s.path, err)
	}
	st, err := statefile.Decode(data)
	if err != nil {
		return Saved{}, 0, fmt.Errorf("LOCKER_CONFIG %s: %w", s.path, err)
	}
	if st.Original {
		s.original = data
	}
	s.savedSeq = st.Seq
	return st, int64(len(data)), nil
}

// giveTokens gives the locks that have no fencing token (a state file of
// the original locker) tokens above every other, in name order: the same
// ones at every start until a checkpoint writes them, so that a journal
// replayed onto the file finds what it was written against.
func giveTokens(st *Saved) {
	for _, name := range slices.Sorted(maps.Keys(st.Locks)) {
		if l := st.Locks[name]; l.Token == 0 {
			st.LastToken++
			l.Token = st.LastToken
			st.Locks[name] = l
		}
	}
}

// replay applies one journal record to st, which holds every change up to
// snapSeq, and returns its seq.
func replay(st *Saved, snapSeq uint64, payload []byte) (uint64, error) {
	var c Change
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return 0, fmt.Errorf("record: %w", err)
	}
	if c.Seq <= st.Seq {
		if c.Seq > snapSeq {
			return 0, fmt.Errorf("seq %d does not follow seq %d", c.Seq, st.Seq)
		}
		return c.Seq, nil // already in the snapshot
	}
	if c.Prev != st.Seq && c.Prev != 0 {
		return 0, fmt.Errorf("record %d was made on change %d, but the state file and the records before it reach only change %d: records are missing (deleted or lost from the middle of the journal)",
			c.Seq, c.Prev, st.Seq)
	}
	for name, l := range c.Locks {
		if l == nil || l.Free() {
			delete(st.Locks, name)
		} else {
			st.Locks[name] = *l
		}
	}
	st.Seq, st.LastToken = c.Seq, c.LastToken
	if len(c.Forget) > 0 {
		st.Requests = slices.DeleteFunc(st.Requests, func(e idempotency.Entry) bool { return slices.Contains(c.Forget, e.Scope) })
	}
	st.Requests = append(st.Requests, c.Remember...)
	return c.Seq, nil
}

// save writes st to the state file and returns its size; when it returns,
// the file is on disk.
func (s *Store) save(st Saved) (int64, error) {
	return atomicfile.WriteFile(s.fsys, s.path, func(w io.Writer) error {
		return statefile.Encode(w, st)
	})
}

// writeCheckpoint writes st to the state file, then drops the journal records
// that it holds. A file that already holds st.Seq is left alone, so that
// a server that changed nothing leaves the file as it found it. Before the
// first rewrite of a file in the original locker's format, its bytes are
// kept beside it as LOCKER_CONFIG.orig.
func (s *Store) writeCheckpoint(st Saved) error {
	if st.Seq == s.savedSeq {
		return nil
	}
	if s.original != nil {
		if err := s.keepOriginal(); err != nil {
			return err
		}
	}
	n, err := s.save(st)
	if err != nil {
		return fmt.Errorf("writing a snapshot: %w", err)
	}
	s.savedSeq = st.Seq
	s.journal.CompactAt(max(s.checkpointBytes, 2*n))
	return s.journal.Compact(st.Seq)
}

// keepOriginal saves the original locker's state file as LOCKER_CONFIG.orig,
// unless a .orig is there already (from an earlier upgrade: that one is
// the original).
func (s *Store) keepOriginal() error {
	orig := s.path + ".orig"
	if _, err := os.Stat(orig); err == nil {
		s.original = nil
		return nil
	}
	if _, err := atomicfile.WriteFile(s.fsys, orig, func(w io.Writer) error {
		_, err := w.Write(s.original)
		return err
	}); err != nil {
		return fmt.Errorf("keeping the original locker's state file as %s: %w", orig, err)
	}
	s.log.Warn("the state file was in the original locker's format; it is rewritten in Locker's, and its old bytes are kept",
		"state_file", s.path, "original", orig,
		"to_roll_back", "stop this server and move the .orig file back over the state file")
	s.original = nil
	return nil
}

// Write puts locks into the state file at path, which must hold none, as
// a checkpoint does (the state file whole and synced, then its journal
// removed), with the token counter past lastToken and every lock's token:
// what locker migrate writes.
func Write(path string, fsys atomicfile.FS, locks map[string]lock.Lock, lastToken uint64) error {
	s := &Store{path: path, fsys: fsys, checkpointBytes: DefaultCheckpointBytes, log: slog.New(slog.DiscardHandler)}
	st, err := s.open()
	if err != nil {
		return err
	}
	if len(st.Locks) > 0 {
		return errors.Join(fmt.Errorf("it holds %d locks: migrate does not overwrite locks; give it a new file", len(st.Locks)),
			s.journal.Close(false), s.owner.Release())
	}
	st.Locks, st.LastToken = locks, max(st.LastToken, lastToken)
	for _, l := range locks {
		st.LastToken = max(st.LastToken, l.Token)
	}
	if _, err := s.save(st); err != nil {
		return errors.Join(err, s.journal.Close(false), s.owner.Release())
	}
	return errors.Join(s.journal.Close(true), s.owner.Release())
}
