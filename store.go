package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"gopkg.in/yaml.v2"
)

// stateVersion is the version of the state file format this server writes.
const stateVersion = 1

// stateHeader opens every state file this server writes.
const stateHeader = `# Locker's lock table, rewritten by the locker server on every change.
# Stop the server before editing it by hand.
`

// stateFile is the YAML document kept in LOCKER_CONFIG.
type stateFile struct {
	Version   int                  `yaml:"version"`
	LastToken uint64               `yaml:"last_token"`
	Locks     map[string]lockEntry `yaml:"locks"`
}

// lockEntry is one lock in the state file. Key and LockedBy have the shape
// the original locker wrote as JSON, so that its files load unchanged; the
// other fields are this server's own.
type lockEntry struct {
	Key        string                 `yaml:"key" json:"key"`
	LockedBy   map[string]int         `yaml:"locked_by" json:"locked_by"`
	Token      uint64                 `yaml:"token,omitempty" json:"-"`
	AcquiredAt time.Time              `yaml:"acquired_at,omitempty" json:"-"`
	Holders    map[string]holderEntry `yaml:"holders,omitempty" json:"-"`
}

// holderEntry is what the state file knows of a holder besides its count.
type holderEntry struct {
	Since     time.Time `yaml:"since,omitempty"`
	ExpiresAt time.Time `yaml:"expires_at,omitempty"`
	Note      string    `yaml:"note,omitempty"`
}

// errUncertain marks a save that failed after the new file replaced the old
// one: the change may or may not survive a crash.
var errUncertain = errors.New("the state file was replaced but not synced")

// encodeState writes st to w as a state file.
func encodeState(w io.Writer, st state) error {
	f := stateFile{Version: stateVersion, LastToken: st.LastToken, Locks: make(map[string]lockEntry, len(st.Locks))}
	for name, l := range st.Locks {
		e := lockEntry{Key: l.Key, LockedBy: l.lockedBy(), Token: l.Token, AcquiredAt: l.AcquiredAt}
		for r, h := range l.Holders {
			he := holderEntry{Since: h.Since, ExpiresAt: h.ExpiresAt, Note: h.Note}
			if he != (holderEntry{}) {
				if e.Holders == nil {
					e.Holders = make(map[string]holderEntry)
				}
				e.Holders[r] = he
			}
		}
		f.Locks[name] = e
	}
	data, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, stateHeader); err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// decodeState parses a state file: this server's YAML, or the original
// locker's JSON. Released entries (no holder left) are dropped; anything
// that does not describe a valid lock table is an error.
func decodeState(data []byte) (state, error) {
	st := state{Locks: map[string]Lock{}}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return st, nil
	}
	var entries map[string]lockEntry
	if trimmed[0] == '{' {
		// The original locker wrote JSON: {"name": {"key": ..., "locked_by": {...}}}.
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&entries); err != nil {
			return state{}, fmt.Errorf("not valid JSON in the original locker's format: %w", err)
		}
		if dec.More() {
			return state{}, errors.New("not valid JSON in the original locker's format: data after the closing brace")
		}
	} else {
		var f stateFile
		if err := yaml.UnmarshalStrict(data, &f); err != nil {
			return state{}, fmt.Errorf("not a valid Locker state file: %w", err)
		}
		if f.Version != stateVersion {
			return state{}, fmt.Errorf("\"version: %d\" is not a format this locker reads (it reads version %d)", f.Version, stateVersion)
		}
		entries, st.LastToken = f.Locks, f.LastToken
	}

	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if name == "" {
			return state{}, errors.New("a lock has an empty name")
		}
		l, err := entries[name].lock()
		if err != nil {
			return state{}, fmt.Errorf("lock %q: %w", name, err)
		}
		if l.free() {
			continue
		}
		if l.Token > st.LastToken {
			return state{}, fmt.Errorf("lock %q has token %d, above last_token %d: tokens would be handed out twice", name, l.Token, st.LastToken)
		}
		st.Locks[name] = l
	}
	return st, nil
}

// lock checks e and returns it as a Lock, without requestors at zero.
func (e lockEntry) lock() (Lock, error) {
	l := Lock{Key: e.Key, Token: e.Token, AcquiredAt: e.AcquiredAt, Holders: make(map[string]Holder, len(e.LockedBy))}
	for _, r := range slices.Sorted(maps.Keys(e.LockedBy)) {
		n := e.LockedBy[r]
		switch {
		case n < 0:
			return Lock{}, fmt.Errorf("holder %q has a negative count (%d)", r, n)
		case n == 0:
			continue // released; the original left these behind
		case r == "":
			return Lock{}, errors.New("a holder has an empty name")
		}
		he := e.Holders[r]
		l.Holders[r] = Holder{Count: n, Since: he.Since, ExpiresAt: he.ExpiresAt, Note: he.Note}
	}
	for _, r := range slices.Sorted(maps.Keys(e.Holders)) {
		if _, ok := l.Holders[r]; !ok {
			return Lock{}, fmt.Errorf("holders lists %q, which has no count in locked_by", r)
		}
	}
	if l.free() {
		return Lock{}, nil
	}
	if l.Key == "" {
		return Lock{}, fmt.Errorf("held by %s but has no key", l.holdersString())
	}
	return l, nil
}

// fileStore keeps the lock table in one file, rewritten atomically on every
// change.
type fileStore struct {
	path string
	disk disk

	// fatal receives errUncertain failures: the server should stop and be
	// restarted from what is on disk. It has room for one error.
	fatal chan error
}

func newFileStore(path string, d disk) *fileStore {
	return &fileStore{path: path, disk: d, fatal: make(chan error, 1)}
}

// load reads the state file. A missing file is created empty; leftover
// temporary files of an interrupted save are removed. A file that cannot
// be parsed is an error and is left untouched.
func (s *fileStore) load() (state, error) {
	if err := s.removeTemps(); err != nil {
		return state{}, err
	}
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		st := state{Locks: map[string]Lock{}}
		if err := s.save(st); err != nil {
			return state{}, fmt.Errorf("creating state file: %w", err)
		}
		return st, nil
	}
	if err != nil {
		return state{}, fmt.Errorf("reading state file: %w", err)
	}
	st, err := decodeState(data)
	if err != nil {
		return state{}, fmt.Errorf("state file %s: %w", s.path, err)
	}
	return st, nil
}

// save writes st to the state file; when it returns nil it is on disk.
func (s *fileStore) save(st state) error {
	var buf bytes.Buffer
	if err := encodeState(&buf, st); err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	err := writeFileAtomic(s.disk, s.path, buf.Bytes())
	if errors.Is(err, errUncertain) {
		select {
		case s.fatal <- err:
		default:
		}
	}
	return err
}

// tempPattern names the temporary files written beside the state file.
func (s *fileStore) tempPattern() string {
	return "." + filepath.Base(s.path) + ".tmp-*"
}

func (s *fileStore) removeTemps() error {
	temps, err := filepath.Glob(filepath.Join(filepath.Dir(s.path), s.tempPattern()))
	if err != nil {
		return err
	}
	for _, t := range temps {
		if err := s.disk.Remove(t); err != nil {
			return fmt.Errorf("removing a leftover temporary file: %w", err)
		}
	}
	return nil
}

// writeFileAtomic replaces path with data so that a crash at any point
// leaves either the old file or the new one, never a mix: write a temporary
// file in the same directory, sync it, rename it over path, sync the
// directory so the rename itself is durable.
func writeFileAtomic(d disk, path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := d.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("creating a temporary file in %s: %w", dir, err)
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err != nil && !errors.Is(err, errUncertain) {
			if !closed {
				_ = f.Close() // the write already failed; that error is the one to report
			}
			_ = d.Remove(tmp) // best effort; a leftover is removed at the next start
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := d.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp, path, err)
	}
	if err := d.SyncDir(dir); err != nil {
		return fmt.Errorf("%w: syncing directory %s: %w", errUncertain, dir, err)
	}
	return nil
}

// disk is the few file operations the store makes, so that tests can make
// them fail or record their order.
type disk interface {
	CreateTemp(dir, pattern string) (tempFile, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	SyncDir(dir string) error
}

// tempFile is the part of *os.File the store writes through.
type tempFile interface {
	Write(p []byte) (int, error)
	Sync() error
	Close() error
	Name() string
}

// osDisk is the real file system.
type osDisk struct{}

func (osDisk) CreateTemp(dir, pattern string) (tempFile, error) {
	f, err := os.CreateTemp(dir, pattern) // mode 0600: the file holds the keys
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (osDisk) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }
func (osDisk) Remove(name string) error             { return os.Remove(name) }

func (osDisk) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
