package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// errUncertain marks a failure after which the server cannot know what the
// disk holds (a failed fsync): changes may or may not survive a crash.
var errUncertain = errors.New("the lock state on disk is in doubt")

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
	data, err := os.ReadFile(s.path) // #nosec G304 -- the operator\'s LOCKER_CONFIG
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
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE, 0o600) // #nosec G304 -- the operator's LOCKER_CONFIG plus ".journal"
	if err != nil {
		return nil, err
	}
	return newJournalFile(f), nil
}

func (osDisk) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }
func (osDisk) Remove(name string) error             { return os.Remove(name) }

func (osDisk) SyncDir(dir string) error {
	d, err := os.Open(dir) // #nosec G304 -- the directory of the operator's LOCKER_CONFIG
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
