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
	Version int                  `yaml:"version"`
	Locks   map[string]lockEntry `yaml:"locks"`
}

// lockEntry is one lock in the state file. It has the shape the original
// locker wrote as JSON, so its files load unchanged.
type lockEntry struct {
	Key      string         `yaml:"key" json:"key"`
	LockedBy map[string]int `yaml:"locked_by" json:"locked_by"`
}

// errUncertain marks a save that failed after the new file replaced the old
// one: the change may or may not survive a crash.
var errUncertain = errors.New("the state file was replaced but not synced")

// encodeState writes locks to w as a state file.
func encodeState(w io.Writer, locks map[string]Lock) error {
	st := stateFile{Version: stateVersion, Locks: make(map[string]lockEntry, len(locks))}
	for name, l := range locks {
		st.Locks[name] = lockEntry{Key: l.Key, LockedBy: l.LockedBy}
	}
	data, err := yaml.Marshal(st)
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
func decodeState(data []byte) (map[string]Lock, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return map[string]Lock{}, nil
	}
	var entries map[string]lockEntry
	if trimmed[0] == '{' {
		// The original locker wrote JSON: {"name": {"key": ..., "locked_by": {...}}}.
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&entries); err != nil {
			return nil, fmt.Errorf("not valid JSON in the original locker's format: %w", err)
		}
		if dec.More() {
			return nil, errors.New("not valid JSON in the original locker's format: data after the closing brace")
		}
	} else {
		var st stateFile
		if err := yaml.UnmarshalStrict(data, &st); err != nil {
			return nil, fmt.Errorf("not a valid Locker state file: %w", err)
		}
		if st.Version != stateVersion {
			return nil, fmt.Errorf("\"version: %d\" is not a format this locker reads (it reads version %d)", st.Version, stateVersion)
		}
		entries = st.Locks
	}

	locks := make(map[string]Lock, len(entries))
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if name == "" {
			return nil, errors.New("a lock has an empty name")
		}
		l, err := entries[name].lock()
		if err != nil {
			return nil, fmt.Errorf("lock %q: %w", name, err)
		}
		if !l.free() {
			locks[name] = l
		}
	}
	return locks, nil
}

// lock checks e and returns it as a Lock, without requestors at zero.
func (e lockEntry) lock() (Lock, error) {
	l := Lock{Key: e.Key, LockedBy: make(map[string]int, len(e.LockedBy))}
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
		l.LockedBy[r] = n
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
func (s *fileStore) load() (map[string]Lock, error) {
	if err := s.removeTemps(); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		locks := map[string]Lock{}
		if err := s.save(locks); err != nil {
			return nil, fmt.Errorf("creating state file: %w", err)
		}
		return locks, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	locks, err := decodeState(data)
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w", s.path, err)
	}
	return locks, nil
}

// save writes locks to the state file; when it returns nil they are on disk.
func (s *fileStore) save(locks map[string]Lock) error {
	var buf bytes.Buffer
	if err := encodeState(&buf, locks); err != nil {
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
