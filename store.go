package main

import (
	"bufio"
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
	"strconv"
	"strings"
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
	Seq       uint64               `yaml:"seq"` // the last journal record this snapshot holds
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

// errUncertain marks a failure after which the server cannot know what the
// disk holds (a failed fsync): changes may or may not survive a crash.
var errUncertain = errors.New("the lock state on disk is in doubt")

// encodeState writes st to w as a state file that holds the journal up to
// seq. It writes the YAML itself, for a fixed shape: yaml.v2 needs seconds
// and gigabytes of garbage for a table of 100,000 locks.
func encodeState(w io.Writer, st state, seq uint64) error {
	ew := &errWriter{w: w}
	ew.printf("%sversion: %d\nseq: %d\nlast_token: %d\n", stateHeader, stateVersion, seq, st.LastToken)
	if len(st.Locks) == 0 {
		ew.printf("locks: {}\n")
		return ew.err
	}
	ew.printf("locks:\n")
	for _, name := range slices.Sorted(maps.Keys(st.Locks)) {
		l := st.Locks[name]
		ew.printf("  %s:\n    key: %s\n    locked_by:\n", yamlString(name), yamlString(l.Key))
		holders := slices.Sorted(maps.Keys(l.Holders))
		detailed := false
		for _, r := range holders {
			h := l.Holders[r]
			ew.printf("      %s: %d\n", yamlString(r), h.Count)
			detailed = detailed || !h.Since.IsZero() || !h.ExpiresAt.IsZero() || h.Note != ""
		}
		if l.Token != 0 {
			ew.printf("    token: %d\n", l.Token)
		}
		if !l.AcquiredAt.IsZero() {
			ew.printf("    acquired_at: %s\n", l.AcquiredAt.Format(time.RFC3339Nano))
		}
		if !detailed {
			continue
		}
		ew.printf("    holders:\n")
		for _, r := range holders {
			h := l.Holders[r]
			if h.Since.IsZero() && h.ExpiresAt.IsZero() && h.Note == "" {
				continue
			}
			ew.printf("      %s:\n", yamlString(r))
			if !h.Since.IsZero() {
				ew.printf("        since: %s\n", h.Since.Format(time.RFC3339Nano))
			}
			if !h.ExpiresAt.IsZero() {
				ew.printf("        expires_at: %s\n", h.ExpiresAt.Format(time.RFC3339Nano))
			}
			if h.Note != "" {
				ew.printf("        note: %s\n", yamlString(h.Note))
			}
		}
	}
	return ew.err
}

// yamlString returns s as a YAML scalar: bare when that reads back as the
// same string, double-quoted otherwise. Go's quoting uses only escapes that
// YAML's double-quoted style has too (\n, \t, \xXX, \uXXXX, ...).
func yamlString(s string) string {
	if plainSafe(s) {
		return s
	}
	return strconv.Quote(s)
}

// plainSafe reports whether s can be written as a YAML plain scalar: a
// letter or underscore, then letters, digits and _ . / - only, and not a
// word that YAML 1.1 reads as a boolean or null.
func plainSafe(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '.' || c == '/' || c == '-')) {
			return false
		}
	}
	switch strings.ToLower(s) {
	case "y", "yes", "n", "no", "true", "false", "on", "off", "null":
		return false
	}
	return true
}

// errWriter remembers the first write error, so that encodeState can check
// once at the end.
type errWriter struct {
	w   io.Writer
	err error
}

func (ew *errWriter) printf(format string, args ...any) {
	if ew.err == nil {
		_, ew.err = fmt.Fprintf(ew.w, format, args...)
	}
}

// decodeState parses a state file: this server's YAML, or the original
// locker's JSON. It returns the table and the last journal record the file
// holds. Released entries (no holder left) are dropped; anything that does
// not describe a valid lock table is an error.
func decodeState(data []byte) (state, uint64, error) {
	st := state{Locks: map[string]Lock{}}
	var seq uint64
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return st, 0, nil
	}
	var entries map[string]lockEntry
	if trimmed[0] == '{' {
		// The original locker wrote JSON: {"name": {"key": ..., "locked_by": {...}}}.
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&entries); err != nil {
			return state{}, 0, fmt.Errorf("not valid JSON in the original locker's format: %w", err)
		}
		if dec.More() {
			return state{}, 0, errors.New("not valid JSON in the original locker's format: data after the closing brace")
		}
	} else {
		var f stateFile
		if err := yaml.UnmarshalStrict(data, &f); err != nil {
			return state{}, 0, fmt.Errorf("not a valid Locker state file: %w", err)
		}
		if f.Version != stateVersion {
			return state{}, 0, fmt.Errorf("\"version: %d\" is not a format this locker reads (it reads version %d)", f.Version, stateVersion)
		}
		entries, st.LastToken, seq = f.Locks, f.LastToken, f.Seq
	}

	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if name == "" {
			return state{}, 0, errors.New("a lock has an empty name")
		}
		l, err := entries[name].lock()
		if err != nil {
			return state{}, 0, fmt.Errorf("lock %q: %w", name, err)
		}
		if l.free() {
			continue
		}
		if l.Token > st.LastToken {
			return state{}, 0, fmt.Errorf("lock %q has token %d, above last_token %d: tokens would be handed out twice", name, l.Token, st.LastToken)
		}
		st.Locks[name] = l
	}
	return st, seq, nil
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

// fileStore keeps the snapshot of the lock table in the state file.
type fileStore struct {
	path string
	disk disk
}

func newFileStore(path string, d disk) *fileStore {
	return &fileStore{path: path, disk: d}
}

// journalPath is where the changes since the snapshot are kept.
func (s *fileStore) journalPath() string { return s.path + ".journal" }

// load reads the state file and returns the table, the last journal record
// it holds and its size. A missing file is created empty; leftover
// temporary files of an interrupted save are removed. A file that cannot
// be parsed is an error and is left untouched.
func (s *fileStore) load() (state, uint64, int64, error) {
	if err := s.removeTemps(); err != nil {
		return state{}, 0, 0, err
	}
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(s.journalPath()); err == nil {
			return state{}, 0, 0, fmt.Errorf("state file %s is missing but its journal %s is there: restore the state file, or move the journal aside to start empty",
				s.path, s.journalPath())
		}
		st := state{Locks: map[string]Lock{}}
		n, err := s.save(st, 0)
		if err != nil {
			return state{}, 0, 0, fmt.Errorf("creating state file: %w", err)
		}
		return st, 0, n, nil
	}
	if err != nil {
		return state{}, 0, 0, fmt.Errorf("reading state file: %w", err)
	}
	st, seq, err := decodeState(data)
	if err != nil {
		return state{}, 0, 0, fmt.Errorf("state file %s: %w", s.path, err)
	}
	return st, seq, int64(len(data)), nil
}

// save writes st, which holds the journal up to seq, to the state file and
// returns its size; when it returns, the file is on disk.
func (s *fileStore) save(st state, seq uint64) (int64, error) {
	var n countingWriter
	err := writeFileAtomic(s.disk, s.path, func(w io.Writer) error {
		n.w = w
		return encodeState(&n, st, seq)
	})
	return n.n, err
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// removeTemps removes the temporary files of a save or a journal
// compaction that a crash interrupted.
func (s *fileStore) removeTemps() error {
	dir, base := filepath.Dir(s.path), filepath.Base(s.path)
	for _, pattern := range []string{"." + base + ".tmp-*", "." + base + ".journal.tmp-*"} {
		temps, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return err
		}
		for _, t := range temps {
			if err := s.disk.Remove(t); err != nil {
				return fmt.Errorf("removing a leftover temporary file: %w", err)
			}
		}
	}
	return nil
}

// writeFileAtomic replaces path with what write writes, so that a crash at
// any point leaves either the old file or the new one, never a mix: write a
// temporary file in the same directory, sync it, rename it over path, sync
// the directory so the rename itself is durable. A failure after the rename
// is errUncertain: the new file is in place but may not survive a crash.
func writeFileAtomic(d disk, path string, write func(io.Writer) error) (err error) {
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
	bw := bufio.NewWriterSize(f, 64<<10)
	if err := write(bw); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := bw.Flush(); err != nil {
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
	OpenJournal(name string) (journalFile, error)
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

// OpenJournal opens name for writing in place, creating it (mode 0600) if
// needed.
func (osDisk) OpenJournal(name string) (journalFile, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return osJournal{f}, nil
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
