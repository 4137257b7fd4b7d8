// Package journal is an append-only file of checksummed records with group
// commit: many callers' records are written with one write and one sync,
// and each caller waits until its own record is on disk.
//
// A record is opaque bytes, one line, numbered by its caller with a
// sequence number (seq) that grows with every record. A line is
// "<crc32c of the payload, 8 hex digits> <payload>\n". A crash can leave
// the last line torn; Open detects it by its missing newline or checksum
// and cuts it off, so a record is either there whole or not at all.
//
// The file is allocated ahead in chunks, zero-filled, and written in place:
// syncing data into space the file already has is cheaper than growing the
// file on every sync. The zeros after the last record read as a torn line.
package journal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
)

// ErrClosed is returned by Append once Close has begun.
var ErrClosed = errors.New("the journal is closed")

// Chunk is how much room the file is given at a time: tens of thousands of
// records, and little to read past at a replay.
const Chunk = 8 << 20

// maxSpare bounds the buffer a written batch leaves for the next ones: a
// burst's big buffer is not kept.
const maxSpare = 1 << 20

// FailFunc is told that the records from seq from on could not be written,
// and why. The journal has already dropped them, and refuses new records
// until FailFunc returns the last seq that the caller has undone: the
// caller made those records from a state that included the failed ones.
// It is called from the journal's own goroutine, without its locks held.
type FailFunc func(from uint64, err error) (undoneTo uint64)

// seqRange is a run of records that will never be on disk, and why.
type seqRange struct {
	from, to uint64
	err      error
}

// recordEnd is where the record with seq ends in the file.
type recordEnd struct {
	seq uint64
	end int64
}

// Journal is an open journal file.
type Journal struct {
	path   string
	fsys   atomicfile.FS
	onFail FailFunc
	fatal  chan error    // a failure after which nothing is durable; room for one
	full   chan struct{} // the file has grown past CompactAt; room for one
	wake   chan struct{} // wakes the committer; room for one
	done   chan struct{} // closed when the committer has stopped

	onSync func(d time.Duration, records int, durable uint64) // told of each batch written and synced; set before appends

	fileMu    sync.Mutex // guards the fields below: the committer and Compact
	file      atomicfile.InPlaceFile
	size      int64       // bytes of records in the file
	allocated int64       // bytes the file has room for, zeros after size
	offsets   []recordEnd // the records in the file, in order
	fullAt    int64       // size that asks for a compaction

	mu       sync.Mutex // guards the fields below
	pending  []byte     // queued records, not yet written
	first    uint64     // seq of the first queued record
	last     uint64     // seq of the last queued record
	ends     []recordEnd
	durable  uint64        // every record up to this seq is on disk
	failed   []seqRange    // records that will never be on disk
	failing  error         // set while FailFunc runs: Append refuses
	broken   error         // set once a failure leaves the disk in doubt
	lastErr  error         // why the last write failed; nil once one succeeds
	advanced chan struct{} // closed and replaced whenever durable, failed or broken change
	closing  bool
	torn     int    // bytes after the last whole record that Open cut off
	tornKept string // the file they were kept in
	blocked  int    // how many Wait calls are blocked, for tests
}

// Torn returns how many bytes after the last whole record Open cut off,
// and the file it kept them in; 0 and "" when there were none.
func (j *Journal) Torn() (int, string) { return j.torn, j.tornKept }

// OnSync has f told how long each batch took to write and sync, how many
// records it held, and the last seq it made durable. f runs before the
// next batch is written: it must be quick. Call it before the first
// Append.
func (j *Journal) OnSync(f func(d time.Duration, records int, durable uint64)) { j.onSync = f }

// Fatal delivers the failure after which nothing more is durable: the
// process must stop and start again from its files.
func (j *Journal) Fatal() <-chan error { return j.fatal }

// Full is signalled when the file has grown past the size set with
// CompactAt: time to write a snapshot and Compact.
func (j *Journal) Full() <-chan struct{} { return j.full }

// Append queues payload, one line without a newline, as the record seq for
// the next write. Callers append in seq order and do not wait here; Wait
// says when the record is on disk.
func (j *Journal) Append(seq uint64, payload []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case j.broken != nil:
		return j.broken
	case j.failing != nil:
		return j.failing
	case j.closing:
		return ErrClosed
	}
	j.pending = appendLine(j.pending, payload)
	if j.first == 0 {
		j.first = seq
	}
	j.last = seq
	j.ends = append(j.ends, recordEnd{seq: seq, end: int64(len(j.pending))})
	select {
	case j.wake <- struct{}{}:
	default:
	}
	return nil
}

// Wait returns once the record seq is on disk (nil), or will never be (the
// reason).
func (j *Journal) Wait(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		for _, f := range j.failed {
			if seq >= f.from && seq <= f.to {
				return f.err
			}
		}
		if seq <= j.durable {
			return nil
		}
		if j.broken != nil {
			return j.broken
		}
		ch := j.advanced
		j.blocked++
		j.mu.Unlock()
		<-ch
		j.mu.Lock()
		j.blocked--
	}
}

// Healthy returns why the journal cannot take records now: the last write
// failed (until one succeeds), it is broken for good, or it is closed.
func (j *Journal) Healthy() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case j.broken != nil:
		return j.broken
	case j.closing:
		return ErrClosed
	}
	return j.lastErr
}

// Blocked says how many Wait calls are waiting for the disk.
func (j *Journal) Blocked() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.blocked
}

// broadcast wakes every Wait. Callers hold j.mu.
func (j *Journal) broadcast() {
	close(j.advanced)
	j.advanced = make(chan struct{})
}

func (j *Journal) commitLoop() {
	defer close(j.done)
	for range j.wake {
		if !j.flush() {
			return
		}
	}
}

// flush writes and syncs every queued record. It returns false once the
// journal is closed or broken.
func (j *Journal) flush() bool {
	j.mu.Lock()
	buf, first, last, ends := j.pending, j.first, j.last, j.ends
	j.pending, j.first, j.last, j.ends = nil, 0, 0, nil
	closing := j.closing
	j.mu.Unlock()
	if len(buf) == 0 {
		return !closing
	}

	start := time.Now()
	j.fileMu.Lock()
	err := j.reserve(int64(len(buf)))
	if err == nil {
		_, err = j.file.WriteAt(buf, j.size)
	}
	if err != nil {
		// Cut off whatever part of the batch reached the file, so that a
		// record there is never read back, and the next write does not
		// follow a torn one.
		terr := j.file.Truncate(j.size)
		j.allocated = j.size
		j.fileMu.Unlock()
		if terr != nil {
			j.breakDown(fmt.Errorf("%w: writing journal %s: %w; cutting it back: %w", atomicfile.ErrUncertain, j.path, err, terr))
			return false
		}
		j.fail(first, fmt.Errorf("writing journal %s: %w", j.path, err))
		return true
	}
	if err := j.file.Sync(); err != nil {
		// Linux may drop the unsynced pages and report the error only once:
		// a second fsync could succeed without the data being there.
		j.fileMu.Unlock()
		j.breakDown(fmt.Errorf("%w: syncing journal %s: %w", atomicfile.ErrUncertain, j.path, err))
		return false
	}
	for _, e := range ends {
		j.offsets = append(j.offsets, recordEnd{seq: e.seq, end: j.size + e.end})
	}
	j.size += int64(len(buf))
	full := j.size >= j.fullAt
	j.fileMu.Unlock()

	j.mu.Lock()
	j.durable = last
	j.lastErr = nil
	j.broadcast()
	if j.pending == nil && cap(buf) <= maxSpare {
		// The batch is on disk: its buffers take the next records, so
		// that a busy journal does not grow new ones every batch.
		j.pending, j.ends = buf[:0], ends[:0]
	}
	j.mu.Unlock()
	if j.onSync != nil {
		j.onSync(time.Since(start), len(ends), last)
	}
	if full {
		select {
		case j.full <- struct{}{}:
		default:
		}
	}
	return true
}

// reserve makes sure the file has room for n more bytes. Callers hold
// j.fileMu.
func (j *Journal) reserve(n int64) error {
	if j.size+n <= j.allocated {
		return nil
	}
	size := j.size + max(n, Chunk)
	err := j.file.Allocate(size)
	if err != nil && n < Chunk {
		// A full disk that still has room for these records takes them:
		// it recovers as soon as the next write fits, not a whole chunk.
		size = j.size + n
		err = j.file.Allocate(size)
	}
	if errors.Is(err, syscall.ENOSPC) {
		return &NoRoomError{Need: n, Err: err}
	}
	if err != nil {
		return fmt.Errorf("allocating room in the journal: %w", err)
	}
	j.allocated = size
	return nil
}

// fail drops every queued record, refuses new ones while the caller undoes
// the records from seq from on, then marks them as failed with err.
func (j *Journal) fail(from uint64, err error) {
	j.mu.Lock()
	j.pending, j.first, j.last, j.ends = nil, 0, 0, nil
	j.failing = err
	j.mu.Unlock()
	to := j.onFail(from, err)
	j.mu.Lock()
	j.failing = nil
	j.lastErr = err
	j.failed = append(j.failed, seqRange{from: from, to: to, err: err})
	j.broadcast()
	j.mu.Unlock()
}

// breakDown fails everything not yet durable for good, and reports err as
// fatal before any waiter hears of it, so that whoever sees a write fail
// this way also finds the journal broken.
func (j *Journal) breakDown(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.broken = err
	j.pending = nil
	select {
	case j.fatal <- err: // room for one: never blocks
	default:
	}
	j.broadcast()
}

// CompactAt sets the file size past which Full is signalled.
func (j *Journal) CompactAt(size int64) {
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	j.fullAt = size
}

// Compact drops the records up to seq, which the caller has saved
// elsewhere, by rewriting the file with only the records after them.
func (j *Journal) Compact(seq uint64) error {
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	keep := 0
	for keep < len(j.offsets) && j.offsets[keep].seq <= seq {
		keep++
	}
	if keep == 0 {
		return nil
	}
	start := j.offsets[keep-1].end
	tail := make([]byte, j.size-start)
	if len(tail) > 0 {
		r, err := os.Open(j.path) // a path the operator configured
		if err != nil {
			return fmt.Errorf("compacting journal: %w", err)
		}
		_, err = r.ReadAt(tail, start)
		_ = r.Close() // read-only: nothing to lose
		if err != nil {
			return fmt.Errorf("compacting journal: %w", err)
		}
	}
	if _, err := atomicfile.WriteFile(j.fsys, j.path, func(w io.Writer) error {
		_, err := w.Write(tail)
		return err
	}); err != nil {
		return fmt.Errorf("compacting journal: %w", err)
	}
	f, err := j.fsys.OpenInPlace(j.path)
	if err != nil {
		return fmt.Errorf("reopening the compacted journal: %w", err)
	}
	_ = j.file.Close() // the old file was renamed over; its data is in the new one
	j.file, j.size, j.allocated = f, int64(len(tail)), int64(len(tail))
	ends := make([]recordEnd, 0, len(j.offsets)-keep)
	for _, e := range j.offsets[keep:] {
		ends = append(ends, recordEnd{seq: e.seq, end: e.end - start})
	}
	j.offsets = ends
	return nil
}

// Close stops the committer after it has written what is queued. With
// remove set the file is deleted: the caller has saved all of it elsewhere.
// Closing a closed journal does nothing.
func (j *Journal) Close(remove bool) error {
	j.mu.Lock()
	if j.closing {
		j.mu.Unlock()
		<-j.done
		return nil
	}
	j.closing = true
	j.mu.Unlock()
	select {
	case j.wake <- struct{}{}:
	default:
	}
	close(j.wake)
	<-j.done
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	err := j.file.Truncate(j.size) // give back the room allocated ahead
	if cerr := j.file.Close(); err == nil {
		err = cerr
	}
	if remove && err == nil {
		if err = j.fsys.Remove(j.path); err == nil {
			err = j.fsys.SyncDir(filepath.Dir(j.path))
		}
	}
	return err
}
