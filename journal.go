package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// The journal makes each change durable without rewriting the whole state
// file: a change is one line appended to LOCKER_CONFIG.journal, and the
// state file is a snapshot that the journal's lines are replayed onto.
//
// Group commit: changes are queued in memory, in the order the table made
// them, and one committer goroutine writes everything queued with a single
// write and a single fsync. A client hears about a change only once the
// line holding it is synced; see journal.wait.
//
// A line is "<crc32c of the JSON, 8 hex digits> <JSON record>\n". A crash
// can leave the last line torn; replay detects it by its missing newline or
// checksum and ignores it, so a change is either there whole or not at all.
//
// The file is allocated ahead in chunks of journalChunk bytes, zero-filled,
// and written in place: syncing data into space the file already has is
// cheaper than growing the file on every sync. The zeros after the last
// record read as a torn line without a newline: the end.

// seqRange is a run of changes that failed to reach the disk.
type seqRange struct {
	from, to uint64
	err      error
}

// recordEnd is where the record with seq ends in the journal file.
type recordEnd struct {
	seq uint64
	end int64
}

// journal is the append-only file of changes since the last snapshot.
type journal struct {
	path string
	disk disk

	// rollback undoes, in the table, every change from seq on, after they
	// failed to be written. It is called without j.mu held.
	rollback func(from uint64, err error)
	fatal    chan error    // a failure after which nothing is durable; room for one
	full     chan struct{} // the journal has grown enough to fold; room for one
	kick     chan struct{} // wakes the committer; room for one
	done     chan struct{} // closed when the committer has stopped

	fileMu    sync.Mutex // guards the fields below: the committer and compact
	file      journalFile
	size      int64       // bytes of records in the file
	allocated int64       // bytes the file has room for, zeros after size
	offsets   []recordEnd // the records in the file, in order
	foldAt    int64       // journal size that asks for a fold

	mu       sync.Mutex // guards the fields below
	pending  []byte     // queued records, not yet written
	first    uint64     // seq of the first queued record
	last     uint64     // seq of the last queued record
	ends     []recordEnd
	durable  uint64        // every record up to this seq is on disk
	failed   []seqRange    // records that will never be on disk, and why
	broken   error         // set once a failure leaves the disk in doubt
	advanced chan struct{} // closed and replaced whenever durable, failed or broken change
	closing  bool
	blocked  int // how many wait calls are waiting, for tests
}

// minFoldBytes is the journal size below which it is never folded: replaying
// a few megabytes at start takes milliseconds.
const minFoldBytes = 8 << 20

// journalChunk is how much room the journal file is given at a time:
// about 40,000 records, and little to read past at a replay.
const journalChunk = 8 << 20

// openJournal replays the journal at path onto st, skipping records the
// snapshot already holds (seq up to snapSeq), cuts off a torn last record,
// and opens the file for appending. It returns the seq of the last change.
func openJournal(path string, d disk, st *state, snapSeq uint64, snapBytes int64) (*journal, uint64, error) {
	j := &journal{
		path:     path,
		disk:     d,
		fatal:    make(chan error, 1),
		full:     make(chan struct{}, 1),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		advanced: make(chan struct{}),
		foldAt:   max(minFoldBytes, 2*snapBytes),
	}
	seq := snapSeq
	data, err := os.ReadFile(path) // #nosec G304 -- the path is the operator's LOCKER_CONFIG plus ".journal"
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("reading journal: %w", err)
	}
	good, err := readRecords(data, func(rec record) error {
		if rec.Seq <= seq {
			if rec.Seq > snapSeq {
				return fmt.Errorf("seq %d does not follow seq %d", rec.Seq, seq)
			}
			return nil // already in the snapshot
		}
		seq = rec.Seq
		applyRecord(st, rec)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("journal %s: %w", path, err)
	}
	f, err := d.OpenJournal(path)
	if err != nil {
		return nil, 0, fmt.Errorf("opening journal: %w", err)
	}
	if int64(len(data)) > int64(good) {
		// Cut off the room allocated ahead, and a record that a crash left
		// torn: it was never acknowledged.
		if err := f.Truncate(int64(good)); err != nil {
			_ = f.Close() // already failing; this error is the one to report
			return nil, 0, fmt.Errorf("cutting the torn end off journal %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			_ = f.Close() // already failing; this error is the one to report
			return nil, 0, fmt.Errorf("syncing journal %s: %w", path, err)
		}
	}
	if !exists {
		// The new file's name must survive a crash too.
		if err := d.SyncDir(filepath.Dir(path)); err != nil {
			_ = f.Close() // already failing; this error is the one to report
			return nil, 0, fmt.Errorf("syncing the journal's directory: %w", err)
		}
	}
	j.file, j.size, j.allocated = f, int64(good), int64(good)
	if good > 0 {
		j.offsets = []recordEnd{{seq: seq, end: int64(good)}} // replayed: all at most seq
	}
	j.durable = seq
	go j.commitLoop()
	return j, seq, nil
}

// applyRecord sets the locks rec touched in st.
func applyRecord(st *state, rec record) {
	for name, l := range rec.Locks {
		if l == nil || l.free() {
			delete(st.Locks, name)
		} else {
			st.Locks[name] = *l
		}
	}
	st.LastToken = rec.LastToken
}

// append queues rec for the next write. Callers hold the table's mutex, so
// records are queued in the order the table made the changes.
func (j *journal) append(rec record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.broken != nil {
		return j.broken
	}
	if j.closing {
		return errShuttingDown
	}
	var err error
	if j.pending, err = appendRecord(j.pending, rec); err != nil {
		return err
	}
	if j.first == 0 {
		j.first = rec.Seq
	}
	j.last = rec.Seq
	j.ends = append(j.ends, recordEnd{seq: rec.Seq, end: int64(len(j.pending))})
	select {
	case j.kick <- struct{}{}:
	default:
	}
	return nil
}

// wait returns once the record with seq is on disk (nil), or will never be
// (its error). Every reply waits for the latest change it saw: a reply
// computed from a change that is not yet on disk (a 423 because of a grant
// still being written, a GET that lists it) would otherwise tell the client
// of a state that a crash could erase.
func (j *journal) wait(seq uint64) error {
	if plantedBug == "early_ack" {
		return nil // answer before the change is on disk
	}
	for {
		j.mu.Lock()
		for _, f := range j.failed {
			if seq >= f.from && seq <= f.to {
				j.mu.Unlock()
				return f.err
			}
		}
		if seq <= j.durable {
			j.mu.Unlock()
			return nil
		}
		if j.broken != nil {
			err := j.broken
			j.mu.Unlock()
			return err
		}
		ch := j.advanced
		j.blocked++
		j.mu.Unlock()
		<-ch
		j.mu.Lock()
		j.blocked--
		j.mu.Unlock()
	}
}

// durableSeq returns the seq up to which every record is on disk.
func (j *journal) durableSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.durable
}

// broadcast wakes every wait. Callers hold j.mu.
func (j *journal) broadcast() {
	close(j.advanced)
	j.advanced = make(chan struct{})
}

func (j *journal) commitLoop() {
	defer close(j.done)
	for range j.kick {
		if !j.flush() {
			return
		}
	}
}

// flush writes and syncs every queued record. It returns false once the
// journal is closed or broken.
func (j *journal) flush() bool {
	j.mu.Lock()
	buf, first, last, ends := j.pending, j.first, j.last, j.ends
	j.pending, j.first, j.last, j.ends = nil, 0, 0, nil
	closing := j.closing
	j.mu.Unlock()
	if len(buf) == 0 {
		return !closing
	}

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
			j.breakDown(first, fmt.Errorf("%w: writing journal %s: %w; cutting it back: %w", errUncertain, j.path, err, terr))
			return false
		}
		j.rollback(first, fmt.Errorf("%w: writing journal %s: %w", errSave, j.path, err))
		return true
	}
	if err := j.file.Sync(); err != nil {
		// Linux may drop the unsynced pages and report the error only once:
		// a second fsync could succeed without the data being there.
		j.fileMu.Unlock()
		j.breakDown(first, fmt.Errorf("%w: syncing journal %s: %w", errUncertain, j.path, err))
		return false
	}
	for _, e := range ends {
		j.offsets = append(j.offsets, recordEnd{seq: e.seq, end: j.size + e.end})
	}
	j.size += int64(len(buf))
	full := j.size >= j.foldAt
	j.fileMu.Unlock()

	j.mu.Lock()
	j.durable = last
	j.broadcast()
	j.mu.Unlock()
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
func (j *journal) reserve(n int64) error {
	if j.size+n <= j.allocated {
		return nil
	}
	size := j.size + max(n, journalChunk)
	if err := j.file.Allocate(size); err != nil {
		return fmt.Errorf("allocating room in the journal: %w", err)
	}
	j.allocated = size
	return nil
}

// discard forgets every queued record and marks the changes from..to as
// failed with err. The table calls it while rolling those changes back.
func (j *journal) discard(from, to uint64, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pending, j.first, j.last, j.ends = nil, 0, 0, nil
	j.failed = append(j.failed, seqRange{from: from, to: to, err: err})
	j.broadcast()
}

// breakDown marks everything from seq on as failed for good, and reports
// the error as fatal: the server must stop and start again from its files.
func (j *journal) breakDown(from uint64, err error) {
	j.mu.Lock()
	j.broken = err
	j.pending = nil
	j.broadcast()
	j.mu.Unlock()
	select {
	case j.fatal <- err:
	default:
	}
}

// compact drops the records up to seq, which a snapshot now holds, by
// rewriting the journal with only the records after them.
func (j *journal) compact(seq uint64) error {
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
		r, err := os.Open(j.path) // #nosec G304 -- the operator's LOCKER_CONFIG plus ".journal"
		if err != nil {
			return fmt.Errorf("compacting journal: %w", err)
		}
		_, err = r.ReadAt(tail, start)
		_ = r.Close() // read-only: nothing to lose
		if err != nil {
			return fmt.Errorf("compacting journal: %w", err)
		}
	}
	if err := writeFileAtomic(j.disk, j.path, func(w io.Writer) error {
		_, err := w.Write(tail)
		return err
	}); err != nil {
		return fmt.Errorf("compacting journal: %w", err)
	}
	f, err := j.disk.OpenJournal(j.path)
	if err != nil {
		return fmt.Errorf("reopening the compacted journal: %w", err)
	}
	_ = j.file.Close() // the old file was renamed over; its data is in the new one
	j.file, j.size, j.allocated = f, int64(len(tail)), int64(len(tail))
	j.offsets = shiftEnds(j.offsets[keep:], start)
	return nil
}

// shiftEnds returns ends moved back by off.
func shiftEnds(ends []recordEnd, off int64) []recordEnd {
	out := make([]recordEnd, len(ends))
	for i, e := range ends {
		out[i] = recordEnd{seq: e.seq, end: e.end - off}
	}
	return out
}

// setFoldAt sets the journal size that asks for the next fold.
func (j *journal) setFoldAt(snapBytes int64) {
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	j.foldAt = max(minFoldBytes, 2*snapBytes)
}

// close stops the committer after it has written what is queued. When
// remove is set the journal file is deleted: a snapshot holds all of it.
func (j *journal) close(remove bool) error {
	j.mu.Lock()
	j.closing = true
	j.mu.Unlock()
	select {
	case j.kick <- struct{}{}:
	default:
	}
	close(j.kick)
	<-j.done
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	err := j.file.Truncate(j.size) // give back the room allocated ahead
	if cerr := j.file.Close(); err == nil {
		err = cerr
	}
	if remove && err == nil {
		if err = j.disk.Remove(j.path); err == nil {
			err = j.disk.SyncDir(filepath.Dir(j.path))
		}
	}
	return err
}

// journalFile is the journal file as the journal writes it.
type journalFile interface {
	WriteAt(p []byte, off int64) (int, error)
	Sync() error               // makes what was written durable (fdatasync)
	Allocate(size int64) error // gives the file size bytes, zero-filled
	Truncate(size int64) error
	Close() error
}
