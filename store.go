package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/filelock"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/journal"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
)

// Store keeps the lock table durable. The table makes each change in
// memory, under its mutex, and hands it to the store in order; no client
// hears of a change, or of anything computed from it, until Wait says it
// is durable.
type Store interface {
	// Open returns the table as the store kept it. The store calls undo
	// when changes it was given could not be made durable: the table
	// undoes every change from seq from on and returns the last one it
	// undid.
	Open(undo func(from uint64, err error) (undoneTo uint64)) (Saved, error)
	// Append queues change c. Callers hold the table's mutex, so that
	// changes are queued in the order they were made.
	Append(c Change) error
	// Wait returns once change seq is durable, or says why it never will
	// be.
	Wait(seq uint64) error
	// CheckpointDue is signalled when the store would like a Checkpoint.
	CheckpointDue() <-chan struct{}
	// Checkpoint saves the whole table, which holds every change up to
	// s.Seq, so that the store can forget those changes.
	Checkpoint(s Saved) error
	// Ready returns why the store cannot make a change durable now, or nil.
	Ready() error
	// Broken delivers the failure after which nothing more is durable:
	// the server must stop and start again from what the store kept.
	Broken() <-chan error
	// Close stops the store. checkpointed says that a Checkpoint of the
	// final table has just succeeded.
	Close(checkpointed bool) error
}

// Saved is the lock table as a store keeps it.
type Saved = statefile.State

// Change is one change to the table: the locks it touched as they are
// after it (nil for a lock it freed), and the token counter.
type Change struct {
	Seq       uint64                `json:"seq"`
	LastToken uint64                `json:"last_token"`
	Locks     map[string]*lock.Lock `json:"locks"`
	// Remember and Forget are the outcomes by Idempotency-Key that the
	// change remembers and forgets, durable with it.
	Remember []idempotency.Entry `json:"remember,omitempty"`
	Forget   []string            `json:"forget,omitempty"`
}

// errUncertain marks a failure after which the server cannot know what the
// disk holds (a failed fsync): changes may or may not survive a crash.
var errUncertain = atomicfile.ErrUncertain

// defaultCheckpointBytes is the journal size below which no checkpoint is
// asked for: replaying a few megabytes at start takes milliseconds.
const defaultCheckpointBytes = 8 << 20

// fileStore keeps the table in the YAML state file at path, as a snapshot,
// and each change since in a journal beside it (path + ".journal"), one
// line a change, group-committed.
type fileStore struct {
	path    string
	fsys    atomicfile.FS
	journal *journal.Journal
	owner   *filelock.Lock // held from Open to Close: one server per state file

	// savedSeq is the last change the state file holds; original holds
	// the file's bytes while it is still in the original locker's format.
	// Both are used by Checkpoint only.
	savedSeq uint64
	original []byte
	log      *slog.Logger

	// checkpointBytes is the journal size below which no checkpoint is
	// asked for; past it, a checkpoint is asked for once the journal is
	// twice the state file's size.
	checkpointBytes int64

	// buf and enc encode one change at a time: Append's callers hold the
	// table's mutex.
	buf bytes.Buffer
	enc *json.Encoder
}

func newFileStore(path string, fsys atomicfile.FS) *fileStore {
	s := &fileStore{path: path, fsys: fsys, checkpointBytes: defaultCheckpointBytes, log: slog.New(slog.DiscardHandler)}
	s.enc = json.NewEncoder(&s.buf)
	s.enc.SetEscapeHTML(false) // names and notes hold URLs; keep & and < readable
	return s
}

// journalPath is where the changes since the snapshot are kept.
func (s *fileStore) journalPath() string { return s.path + ".journal" }

// lockPath is the file whose kernel lock says which server owns the state.
func (s *fileStore) lockPath() string { return s.path + ".lock" }

// Open reads the state file, creating it empty if it is missing, and
// replays the journal onto it. A file that cannot be read is an error and
// is left as it is.
func (s *fileStore) Open(undo func(from uint64, err error) uint64) (st Saved, err error) {
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
	snapSeq := st.Seq
	j, _, err := journal.Open(s.journalPath(), s.fsys, snapSeq, func(payload []byte) (uint64, error) {
		return replay(&st, snapSeq, payload)
	}, func(from uint64, err error) uint64 {
		return undo(from, fmt.Errorf("%w: %w", errSave, err))
	})
	if err != nil {
		return Saved{}, fmt.Errorf("%w\nlocker did not start and left the journal as it was: move it aside to start from the state file alone", err)
	}
	j.CompactAt(max(s.checkpointBytes, 2*size))
	s.journal = j
	return st, nil
}

// lock takes the state file for this server alone, before anything is
// read: a second server on the same file would grant the same locks.
func (s *fileStore) lock() error {
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
func (s *fileStore) load() (Saved, int64, error) {
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
func (s *fileStore) save(st Saved) (int64, error) {
	return atomicfile.WriteFile(s.fsys, s.path, func(w io.Writer) error {
		return statefile.Encode(w, st)
	})
}

// Append queues c as one journal line.
func (s *fileStore) Append(c Change) error {
	s.buf.Reset()
	if err := s.enc.Encode(c); err != nil {
		return fmt.Errorf("%w: encoding the change: %w", errSave, err)
	}
	// The journal copies the line; buf is free again when Append returns.
	err := s.journal.Append(c.Seq, bytes.TrimSuffix(s.buf.Bytes(), []byte("\n")))
	if errors.Is(err, journal.ErrClosed) {
		return errShuttingDown
	}
	return err
}

// Wait returns once change seq is in the journal on disk. A change that
// could not be written was undone: errSave.
func (s *fileStore) Wait(seq uint64) error {
	err := s.journal.Wait(seq)
	if err != nil && !errors.Is(err, errUncertain) && !errors.Is(err, errSave) {
		return fmt.Errorf("%w: %w", errSave, err)
	}
	return err
}

func (s *fileStore) CheckpointDue() <-chan struct{} { return s.journal.Full() }

// Ready says whether the journal can take changes: its last write
// succeeded, and no sync has failed.
func (s *fileStore) Ready() error {
	if err := s.journal.Healthy(); err != nil {
		return fmt.Errorf("the journal beside LOCKER_CONFIG cannot be written: %w", err)
	}
	return nil
}
func (s *fileStore) Broken() <-chan error { return s.journal.Fatal() }

// Checkpoint writes st to the state file, then drops the journal records
// that it holds. A file that already holds st.Seq is left alone, so that
// a server that changed nothing leaves the file as it found it. Before the
// first rewrite of a file in the original locker's format, its bytes are
// kept beside it as LOCKER_CONFIG.orig.
func (s *fileStore) Checkpoint(st Saved) error {
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
func (s *fileStore) keepOriginal() error {
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

// Close stops the journal; after a checkpoint the state file holds it all,
// and the journal file is removed.
func (s *fileStore) Close(checkpointed bool) error {
	return errors.Join(s.journal.Close(checkpointed), s.owner.Release())
}
