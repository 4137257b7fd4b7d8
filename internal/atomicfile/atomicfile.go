// Package atomicfile replaces files so that a crash leaves either the old
// file or the new one, never a mix, and gives the few file operations it
// and the journal make through an FS that tests can make fail.
//
// It knows bytes and file names, nothing of what the files hold.
package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ErrUncertain marks a failure after which the caller cannot know what the
// disk holds (a failed fsync): what was written may or may not survive a
// crash.
var ErrUncertain = errors.New("the state on disk is in doubt")

// WriteFile replaces path with what write writes: a temporary file in the
// same directory, synced, renamed over path, then the directory synced so
// that the rename itself is durable. It returns the bytes written. A
// failure before the rename removes the temporary file and leaves path as
// it was; a failure after it is ErrUncertain, as the new file is in place
// but may not survive a crash.
func WriteFile(fsys FS, path string, write func(io.Writer) error) (n int64, err error) {
	dir := filepath.Dir(path)
	f, err := fsys.CreateTemp(dir, TempPattern(path))
	if err != nil {
		return 0, fmt.Errorf("creating a temporary file in %s: %w", dir, err)
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err != nil && !errors.Is(err, ErrUncertain) {
			if !closed {
				_ = f.Close() // the write already failed; that error is the one to report
			}
			_ = fsys.Remove(tmp) // best effort; RemoveTemps clears a leftover at the next start
		}
	}()
	cw := &countingWriter{w: f}
	bw := bufio.NewWriterSize(cw, 64<<10)
	if err := write(bw); err != nil {
		return 0, fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("syncing %s: %w", tmp, err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := fsys.Rename(tmp, path); err != nil {
		return 0, fmt.Errorf("renaming %s to %s: %w", tmp, path, err)
	}
	if err := fsys.SyncDir(dir); err != nil {
		return cw.n, fmt.Errorf("%w: syncing directory %s: %w", ErrUncertain, dir, err)
	}
	return cw.n, nil
}

// TempPattern is the os.CreateTemp pattern of WriteFile's temporary files
// for path: hidden, beside it.
func TempPattern(path string) string { return "." + filepath.Base(path) + ".tmp-*" }

// RemoveTemps removes the temporary files that a crash in WriteFile left
// beside path.
func RemoveTemps(fsys FS, path string) error {
	temps, err := filepath.Glob(filepath.Join(filepath.Dir(path), TempPattern(path)))
	if err != nil {
		return err
	}
	for _, t := range temps {
		if err := fsys.Remove(t); err != nil {
			return fmt.Errorf("removing a leftover temporary file: %w", err)
		}
	}
	return nil
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

// FS is the few file operations that WriteFile and the journal make, so
// that tests can make them fail or record their order.
type FS interface {
	CreateTemp(dir, pattern string) (TempFile, error)
	OpenInPlace(name string) (InPlaceFile, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	SyncDir(dir string) error
}

// TempFile is the part of *os.File that WriteFile writes through.
type TempFile interface {
	Write(p []byte) (int, error)
	Sync() error
	Close() error
	Name() string
}

// InPlaceFile is a file written at offsets and synced, as a journal is.
type InPlaceFile interface {
	WriteAt(p []byte, off int64) (int, error)
	Sync() error               // makes what was written durable (fdatasync where there is one)
	Allocate(size int64) error // gives the file size bytes, zero-filled
	Truncate(size int64) error
	Close() error
}

// OS is the real file system.
type OS struct{}

// CreateTemp creates a temporary file of mode 0600: files here hold keys.
func (OS) CreateTemp(dir, pattern string) (TempFile, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// OpenInPlace opens name for writing in place, creating it (mode 0600) if
// needed.
func (OS) OpenInPlace(name string) (InPlaceFile, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE, 0o600) // a path the operator configured
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (OS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }
func (OS) Remove(name string) error             { return os.Remove(name) }

func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir) // a directory the operator configured
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
