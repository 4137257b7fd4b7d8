package filestore

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/filelock"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/journal"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
	"github.com/locker-ci/locker/internal/txn"
)

// disk is the store's files: the state file, its journal and its kernel
// lock, and how each is read and written.
type disk struct {
	path    string // the state file, its links followed
	fsys    atomicfile.FS
	journal *journal.Journal
	owner   *filelock.Lock // held from open to close: one server per state file
	log     *slog.Logger

	// savedSeq is the last change the state file holds; original holds
	// the file's bytes while it is still in the original locker's format.
	// Both are used by writeCheckpoint only.
	savedSeq uint64
	original []byte

	// checkpointBytes is the journal size below which no checkpoint is
	// asked for; past it, a checkpoint is asked for once the journal is
	// twice the state file's size.
	checkpointBytes int64

	buf  bytes.Buffer // encodes one change at a time, under the store's mutex
	enc  *json.Encoder
	line []byte // the same, without reflection (appendChange)
}

// newDisk returns the files of the state file at path (log nil: none).
func newDisk(path string, fsys atomicfile.FS, checkpointBytes int64, log *slog.Logger) *disk {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &disk{path: path, fsys: fsys, checkpointBytes: cmp.Or(checkpointBytes, DefaultCheckpointBytes), log: log}
	d.enc = json.NewEncoder(&d.buf)
	d.enc.SetEscapeHTML(false) // names and notes hold URLs; keep & and < readable
	return d
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
	d := newDisk(path, fsys, DefaultCheckpointBytes, nil)
	if err := d.resolve(); err != nil {
		return Saved{}, err
	}
	_, lockErr := os.Stat(d.lockPath())
	_, journalErr := os.Stat(d.journalPath())
	st, err := d.open(func(from uint64, _ error) uint64 { return from })
	if err != nil {
		return Saved{}, err
	}
	// A journal opened only to be read, and not there before, goes again.
	err = errors.Join(d.journal.Close(errors.Is(journalErr, fs.ErrNotExist)), d.owner.Release())
	if errors.Is(lockErr, fs.ErrNotExist) {
		_ = os.Remove(d.lockPath())
	}
	return st, err
}

// open locks the state file, reads it and replays the journal onto it.
// A state file reached through a symbolic link is the file it points to:
// its journal and kernel lock are beside that file, so that two servers
// on one file through different paths find each other, and a checkpoint
// replaces the file, not the link.
func (d *disk) open(undo func(from uint64, err error) uint64) (st Saved, err error) {
	if err := d.resolve(); err != nil {
		return Saved{}, err
	}
	if err := d.lock(); err != nil {
		return Saved{}, err
	}
	defer func() {
		if err != nil {
			_ = d.owner.Release()
		}
	}()
	st, size, err := d.load()
	var pathErr *fs.PathError
	switch {
	case errors.As(err, &pathErr):
		return Saved{}, fmt.Errorf("%w\nlocker did not start and left the file as it was: make it readable and writable by the user locker runs as (do not move it aside: it holds the locks)", err)
	case err != nil:
		return Saved{}, fmt.Errorf("%w\nlocker did not start and left the file as it was: fix it, or move it aside to start empty", err)
	}
	giveTokens(&st)
	snapSeq := st.Seq
	j, _, err := journal.Open(d.journalPath(), d.fsys, snapSeq, func(payload []byte) (uint64, error) {
		return replay(&st, snapSeq, payload)
	}, func(from uint64, err error) uint64 {
		return undo(from, fmt.Errorf("%w: %w", txn.ErrNotSaved, err))
	})
	if err != nil {
		return Saved{}, fmt.Errorf("%w\nlocker did not start and left the journal as it was: move it aside to start from the state file alone", err)
	}
	if n, kept := j.Torn(); n > 0 {
		d.log.Warn("the journal ended in a torn or damaged record, which was dropped: a crash as it was written leaves one, never acknowledged; a damaged disk can damage one that was",
			"journal", d.journalPath(), "bytes", n, "kept_in", kept)
	}
	j.CompactAt(max(d.checkpointBytes, 2*size))
	d.journal = j
	return st, nil
}

// resolve makes d.path the real path of the state file: its links
// followed, or its directory's when it does not exist yet.
func (d *disk) resolve() error {
	real, err := filepath.EvalSymlinks(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		dir, derr := filepath.EvalSymlinks(filepath.Dir(d.path))
		if derr != nil {
			return nil // lock reports a missing directory in its own words
		}
		real, err = filepath.Join(dir, filepath.Base(d.path)), nil
	}
	if err != nil {
		return fmt.Errorf("LOCKER_CONFIG %s: following its links: %w", d.path, err)
	}
	if real != d.path {
		d.log.Info("LOCKER_CONFIG is a link; the state is kept in the file it points to", "state_file", d.path, "real_path", real)
	}
	d.path = real
	return nil
}

// append queues c as one journal line. Callers hold d.mu.
func (d *disk) append(c Change) error {
	line, fast := appendChange(d.line[:0], c)
	if fast {
		d.line = line // its room serves the next change
	} else {
		d.buf.Reset()
		if err := d.enc.Encode(c); err != nil {
			return fmt.Errorf("%w: encoding the change: %w", txn.ErrNotSaved, err)
		}
		line = bytes.TrimSuffix(d.buf.Bytes(), []byte("\n"))
	}
	// The journal copies the line; buf is free again when append returns.
	err := d.journal.Append(c.Seq, line)
	if errors.Is(err, journal.ErrClosed) {
		return txn.ErrClosed
	}
	return err
}

// journalPath is where the changes since the snapshot are kept.
func (d *disk) journalPath() string { return d.path + ".journal" }

// lockPath is the file whose kernel lock says which server owns the state.
func (d *disk) lockPath() string { return d.path + ".lock" }

// lock takes the state file for this server alone, before anything is
// read: a second server on the same file would grant the same locks.
func (d *disk) lock() error {
	owner, err := filelock.Acquire(d.lockPath())
	var held *filelock.HeldError
	switch {
	case errors.As(err, &held) && held.PID > 0:
		return fmt.Errorf("LOCKER_CONFIG %s is in use by another locker server, process %d (it holds %s): stop it first, or give this server its own LOCKER_CONFIG", d.path, held.PID, held.Path)
	case errors.As(err, &held):
		return fmt.Errorf("LOCKER_CONFIG %s is in use by another locker server (it holds %s): stop it first, or give this server its own LOCKER_CONFIG", d.path, held.Path)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("LOCKER_CONFIG %s: the directory %s does not exist: create it, or point LOCKER_CONFIG at a file in a directory that does", d.path, filepath.Dir(d.path))
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("LOCKER_CONFIG %s: %w", d.path, permissionError(err))
	case err != nil:
		return fmt.Errorf("LOCKER_CONFIG %s: taking it for this server: %w", d.path, err)
	}
	d.owner = owner
	return nil
}

// permissionError explains err, a refusal to write a file beside the
// state file: who locker runs as, and who owns the file, or its directory
// when the file is not there yet.
func permissionError(err error) error {
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		return err
	}
	target, what := pe.Path, "file"
	fi, statErr := os.Stat(target)
	if errors.Is(statErr, fs.ErrNotExist) {
		target, what = filepath.Dir(pe.Path), "directory"
		fi, statErr = os.Stat(target)
	}
	me := "uid " + strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil {
		me = u.Username
	}
	whose := ""
	if statErr == nil {
		whose = fmt.Sprintf(" (mode %v", fi.Mode())
		if o := owner(fi); o != "" {
			whose += ", owned by " + o
		}
		whose += ")"
	}
	return fmt.Errorf("locker runs as user %s and may not write the %s %s%s (%w). Give %s write access to it (e.g. sudo chown %s %s), or point LOCKER_CONFIG at a file in a directory %s may write",
		me, what, target, whose, pe, me, me, target, me)
}

// load reads the state file and returns it and its size. Leftover
// temporary files of an interrupted save are removed first.
func (d *disk) load() (Saved, int64, error) {
	for _, p := range []string{d.path, d.journalPath()} {
		if err := atomicfile.RemoveTemps(d.fsys, p); err != nil {
			return Saved{}, 0, err
		}
	}
	data, err := os.ReadFile(d.path) // the operator's LOCKER_CONFIG
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(d.journalPath()); err == nil {
			return Saved{}, 0, fmt.Errorf("LOCKER_CONFIG %s is missing but its journal %s is there: restore the state file, or move the journal aside to start empty",
				d.path, d.journalPath())
		}
		// The journal first: a crash between the two must not leave a
		// sealed state file without its journal.
		j, err := d.fsys.OpenInPlace(d.journalPath())
		if err != nil {
			return Saved{}, 0, fmt.Errorf("creating journal: %w", err)
		}
		_ = j.Close() // empty: nothing to lose; save syncs the directory
		st := Saved{Locks: map[string]lock.Lock{}}
		n, err := d.save(st)
		if err != nil {
			return Saved{}, 0, fmt.Errorf("creating state file: %w", err)
		}
		return st, n, nil
	}
	if err != nil {
		return Saved{}, 0, fmt.Errorf("LOCKER_CONFIG %s cannot be read: %w", d.path, err)
	}
	st, err := statefile.Decode(data)
	if err != nil {
		return Saved{}, 0, fmt.Errorf("LOCKER_CONFIG %s: %w", d.path, err)
	}
	if _, err := os.Stat(d.journalPath()); st.Sealed && errors.Is(err, fs.ErrNotExist) {
		return Saved{}, 0, fmt.Errorf("LOCKER_CONFIG %s holds the changes up to %d, and its journal %s, which holds any after them, is missing: restore the journal beside it; or, to start from the state file alone and lose any changes after it, delete the state file's last line (its sha256 seal)",
			d.path, st.Seq, d.journalPath())
	}
	if st.Original {
		d.original = data
	}
	d.savedSeq = st.Seq
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
	st.Pools = applyChanges(st.Pools, c.Pools)
	st.Credentials = applyChanges(st.Credentials, c.Credentials)
	if len(c.Forget) > 0 {
		st.Requests = slices.DeleteFunc(st.Requests, func(e idempotency.Entry) bool { return slices.Contains(c.Forget, e.Scope) })
	}
	st.Requests = append(st.Requests, c.Remember...)
	st.History = append(st.History, c.Events...)
	st.LastEvent = max(st.LastEvent, c.LastEvent)
	return c.Seq, nil
}

// save writes st to the state file and returns its size; when it returns,
// the file is on disk.
func (d *disk) save(st Saved) (int64, error) {
	return atomicfile.WriteFile(d.fsys, d.path, func(w io.Writer) error {
		return statefile.Encode(w, st)
	})
}

// writeCheckpoint writes st to the state file, then drops the journal records
// that it holds. A file that already holds st.Seq is left alone, so that
// a server that changed nothing leaves the file as it found it. Before the
// first rewrite of a file in the original locker's format, its bytes are
// kept beside it as LOCKER_CONFIG.orig.
func (d *disk) writeCheckpoint(st Saved) error {
	if st.Seq == d.savedSeq {
		return nil
	}
	if d.original != nil {
		if err := d.keepOriginal(); err != nil {
			return err
		}
	}
	n, err := d.save(st)
	if err != nil {
		return fmt.Errorf("writing a snapshot: %w", err)
	}
	d.savedSeq = st.Seq
	d.journal.CompactAt(max(d.checkpointBytes, 2*n))
	return d.journal.Compact(st.Seq)
}

// keepOriginal saves the original locker's state file as LOCKER_CONFIG.orig,
// unless a .orig is there already (from an earlier upgrade: that one is
// the original).
func (d *disk) keepOriginal() error {
	orig := d.path + ".orig"
	if _, err := os.Stat(orig); err == nil {
		d.original = nil
		return nil
	}
	if _, err := atomicfile.WriteFile(d.fsys, orig, func(w io.Writer) error {
		_, err := w.Write(d.original)
		return err
	}); err != nil {
		return fmt.Errorf("keeping the original locker's state file as %s: %w", orig, err)
	}
	d.log.Warn("the state file was in the original locker's format; it is rewritten in Locker's, and its old bytes are kept",
		"state_file", d.path, "original", orig,
		"to_roll_back", "stop this server and move the .orig file back over the state file")
	d.original = nil
	return nil
}

// mergeRequests returns the outcomes of have and then of add, oldest
// first by when each was answered; add's in place of have's of the same
// scope.
func mergeRequests(have, add []idempotency.Entry) []idempotency.Entry {
	if len(add) == 0 {
		return have
	}
	scopes := map[string]bool{}
	for _, e := range add {
		scopes[e.Scope] = true
	}
	out := slices.DeleteFunc(slices.Clone(have), func(e idempotency.Entry) bool { return scopes[e.Scope] })
	out = append(out, add...)
	slices.SortStableFunc(out, func(a, b idempotency.Entry) int { return a.At.Compare(b.At) })
	return out
}

// Write puts c into the state file at path, which must hold no locks, as
// a checkpoint does (the state file whole and synced, then its journal
// emptied), with the token counter past c's last token and every lock's
// token, and c's pools in place of any of the same names: what locker
// migrate writes.
func Write(path string, fsys atomicfile.FS, c txn.Contents) error {
	locks, lastToken := c.Locks, c.LastToken
	d := newDisk(path, fsys, DefaultCheckpointBytes, nil)
	st, err := d.open(func(from uint64, _ error) uint64 { return from })
	if err != nil {
		return err
	}
	if len(st.Locks) > 0 {
		return errors.Join(fmt.Errorf("it holds %d locks: migrate does not overwrite locks; give it a new file", len(st.Locks)),
			d.journal.Close(false), d.owner.Release())
	}
	st.Locks, st.LastToken = locks, max(st.LastToken, lastToken)
	if events := txn.Renumbered(c.History, st.LastEvent); len(events) > 0 {
		st.History = append(st.History, events...)
		st.LastEvent = max(st.LastEvent, events[len(events)-1].ID)
	}
	st.LastEvent = max(st.LastEvent, c.LastEvent)
	st.Requests = mergeRequests(st.Requests, c.Requests)
	for _, cred := range c.Credentials {
		if st.Credentials == nil {
			st.Credentials = map[string]access.Credential{}
		}
		st.Credentials[cred.Name] = cred
	}
	for name, p := range c.Pools {
		if st.Pools == nil {
			st.Pools = map[string]lock.Pool{}
		}
		st.Pools[name] = p
	}
	for _, l := range locks {
		st.LastToken = max(st.LastToken, l.Token)
	}
	if _, err := d.save(st); err != nil {
		return errors.Join(err, d.journal.Close(false), d.owner.Release())
	}
	if err := d.journal.Compact(st.Seq); err != nil {
		return errors.Join(err, d.journal.Close(false), d.owner.Release())
	}
	return errors.Join(d.journal.Close(false), d.owner.Release())
}
