package journal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
)

// Opening a journal: its records replayed, a torn end cut off (and kept
// aside when it is more than zeros). A write the disk had no room for.

// Open replays the journal at path, calling replay with each whole record
// in order, cuts off a torn end, and opens the file for appending. replay
// returns the record's seq, or an error that stops the open. saved is the
// last seq that the caller keeps elsewhere (in a snapshot): it and the
// seqs before it count as durable. Open returns the seq of the last record,
// or saved if that is later.
func Open(path string, fsys atomicfile.FS, saved uint64, replay func(payload []byte) (uint64, error), onFail FailFunc) (*Journal, uint64, error) {
	j := &Journal{
		path:     path,
		fsys:     fsys,
		onFail:   onFail,
		fatal:    make(chan error, 1),
		full:     make(chan struct{}, 1),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		advanced: make(chan struct{}),
		fullAt:   1<<63 - 1,
	}
	data, err := os.ReadFile(path) // a path the operator configured
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("reading journal: %w", err)
	}
	seq := saved
	good, err := readLines(data, func(payload []byte) error {
		s, err := replay(payload)
		seq = max(seq, s)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("journal %s: %w", path, err)
	}
	f, err := fsys.OpenInPlace(path)
	if err != nil {
		return nil, 0, fmt.Errorf("opening journal: %w", err)
	}
	if j.torn, j.tornKept, err = keepTorn(fsys, path, data[good:]); err != nil {
		_ = f.Close()
		return nil, 0, err
	}
	if err := cutTail(fsys, path, f, len(data), good, !exists); err != nil {
		_ = f.Close() // already failing; that error is the one to report
		return nil, 0, err
	}
	j.file, j.size, j.allocated = f, int64(good), int64(good)
	if good > 0 {
		j.offsets = []recordEnd{{seq: seq, end: int64(good)}} // replayed: all at most seq
	}
	j.durable = seq
	go j.commitLoop()
	return j, seq, nil
}

// keepTorn keeps what follows the last whole record, unless it is only
// the zeros of the room allocated ahead, in a file beside the journal
// (path + ".corrupt-" + the time): a record torn by a crash was never
// acknowledged, but one damaged on disk may have been, and cutting it off
// must not destroy the evidence.
func keepTorn(fsys atomicfile.FS, path string, tail []byte) (int, string, error) {
	tail = bytes.TrimRight(tail, "\x00")
	if len(tail) == 0 {
		return 0, "", nil
	}
	kept := path + ".corrupt-" + time.Now().UTC().Format("20060102T150405.000Z")
	if _, err := atomicfile.WriteFile(fsys, kept, func(w io.Writer) error {
		_, err := w.Write(tail)
		return err
	}); err != nil {
		return 0, "", fmt.Errorf("keeping the torn end of journal %s aside: %w", path, err)
	}
	return len(tail), kept, nil
}

// cutTail cuts the room allocated ahead and a torn last record (never
// acknowledged) off f, which holds size bytes of which good are records,
// and makes a new file's name durable.
func cutTail(fsys atomicfile.FS, path string, f atomicfile.InPlaceFile, size, good int, created bool) error {
	if size > good {
		if err := f.Truncate(int64(good)); err != nil {
			return fmt.Errorf("cutting the torn end off journal %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("syncing journal %s: %w", path, err)
		}
	}
	if created {
		if err := fsys.SyncDir(filepath.Dir(path)); err != nil {
			return fmt.Errorf("syncing the journal's directory: %w", err)
		}
	}
	return nil
}

// NoRoomError is a write the disk had no room for: Need bytes were to be
// written.
type NoRoomError struct {
	Need int64
	Err  error
}

func (e *NoRoomError) Error() string {
	return fmt.Sprintf("allocating %d bytes in the journal: %v", e.Need, e.Err)
}

func (e *NoRoomError) Unwrap() error { return e.Err }
