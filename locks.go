package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Domain errors; api.go maps each one to an HTTP status.
var (
	errLockHeld     = errors.New("locked")
	errSave         = errors.New("could not save the lock state")
	errShuttingDown = errors.New("locker is shutting down; send the request again in a moment")
	errClientGone   = errors.New("the client went away while waiting")
)

// Lock is one named lock: the key its holders share and who they are. A
// free lock has no holders and is not kept in the table. Lock values are
// never changed in place, only replaced, so copies of the table can share
// them. The JSON tags are the journal's format.
type Lock struct {
	Key        string    `json:"key"`
	Token      uint64    `json:"token,omitzero"`       // fencing token: set each time the lock goes from free to held
	AcquiredAt time.Time `json:"acquired_at,omitzero"` // when it last went from free to held
	// Holders is sorted by name. A slice, not a map: most locks have one
	// holder, and a map costs 750 bytes for one entry.
	Holders []Holder `json:"holders"`
}

// Holder is one requestor's hold on a lock.
type Holder struct {
	Name      string    `json:"name"`                // the requestor
	Count     int       `json:"count"`               // how many PUTs it has not yet given back
	Since     time.Time `json:"since,omitzero"`      // when it took its first count
	ExpiresAt time.Time `json:"expires_at,omitzero"` // when its lease runs out; zero when it has none
	Note      string    `json:"note,omitempty"`      // what the requestor said about itself, e.g. a build URL
}

func (l Lock) free() bool { return len(l.Holders) == 0 }

// clone returns a copy of l that shares no slice with it.
func (l Lock) clone() Lock {
	l.Holders = slices.Clone(l.Holders)
	return l
}

// holder returns the holder called name.
func (l Lock) holder(name string) (Holder, bool) {
	i, ok := slices.BinarySearchFunc(l.Holders, name, byName)
	if !ok {
		return Holder{}, false
	}
	return l.Holders[i], true
}

// setHolder puts h in l, in place of the holder of the same name. Callers
// own l's slice (a clone).
func (l *Lock) setHolder(h Holder) {
	if i, ok := slices.BinarySearchFunc(l.Holders, h.Name, byName); ok {
		l.Holders[i] = h
	} else {
		l.Holders = slices.Insert(l.Holders, i, h)
	}
}

// removeHolder takes the holder called name out of l. Callers own l's
// slice (a clone).
func (l *Lock) removeHolder(name string) {
	if i, ok := slices.BinarySearchFunc(l.Holders, name, byName); ok {
		l.Holders = slices.Delete(l.Holders, i, i+1)
	}
}

func byName(h Holder, name string) int { return strings.Compare(h.Name, name) }

// lockedBy returns each holder's count, the shape the original API had.
func (l Lock) lockedBy() map[string]int {
	m := make(map[string]int, len(l.Holders))
	for _, h := range l.Holders {
		m[h.Name] = h.Count
	}
	return m
}

// holdersString lists l's holders for messages: "node-a (2), node-b (1)".
func (l Lock) holdersString() string {
	parts := make([]string, len(l.Holders))
	for i, h := range l.Holders {
		parts[i] = fmt.Sprintf("%s (%d)", h.Name, h.Count)
	}
	return strings.Join(parts, ", ")
}

// Waiting is one request in a lock's queue.
type Waiting struct {
	Key, Requestor string
	Since          time.Time
}

// Snapshot is a lock and its queue at one moment.
type Snapshot struct {
	Lock
	Waiting []Waiting
}

// state is the lock table as the state file and the journal keep it.
type state struct {
	LastToken uint64 // the highest fencing token ever handed out
	Locks     map[string]Lock
}

// acquireRequest is what a PUT asks for.
type acquireRequest struct {
	Key, Requestor, Note string
	TTL                  time.Duration // lease from now; 0 leaves the holder's lease as it is
	Wait                 time.Duration // how long to queue for the lock; 0 answers at once
}

// waiter is a queued acquireRequest.
type waiter struct {
	name  string
	req   acquireRequest
	since time.Time
	done  chan struct{} // closed once it is granted

	// Guarded by table.mu; read by the waiter once done is closed.
	granted bool
	snap    Snapshot // the lock as granted
	seq     uint64   // the change that granted it
	err     error    // why the grant could not be made
}

// table is the in-memory lock table. A change is made in memory, under mu,
// and queued in the journal; no one hears of it, or of anything computed
// from it, until the journal has it on disk (see journal.wait). A change
// that cannot be written is undone.
type table struct {
	store   *fileStore
	journal *journal
	now     func() time.Time
	log     *slog.Logger
	wake    chan struct{} // tells the expiry loop that a new lease may come first

	mu        sync.Mutex // guards the fields below
	locks     map[string]Lock
	queues    map[string][]*waiter // waiters per lock, first come first served
	lastToken uint64
	leases    leaseHeap
	seq       uint64 // the change the table now shows; replies wait for it
	lastSeq   uint64 // the last seq handed out; seqs are never reused
	undo      []undo // changes not yet known to be on disk, oldest first
}

// undo is what one change replaced, to put back if it cannot be written.
type undo struct {
	seq       uint64
	oldLocks  map[string]Lock // free (zero) for locks that were not held
	lastToken uint64
}

// newTable returns the table holding st, which the journal has up to seq.
func newTable(store *fileStore, j *journal, st state, seq uint64, now func() time.Time, log *slog.Logger) *table {
	t := &table{
		store:   store,
		journal: j,
		// Milliseconds are precise enough for leases and easier to read.
		now:       func() time.Time { return now().UTC().Truncate(time.Millisecond) },
		log:       log,
		wake:      make(chan struct{}, 1),
		locks:     st.Locks,
		queues:    make(map[string][]*waiter),
		lastToken: st.LastToken,
		seq:       seq,
		lastSeq:   seq,
	}
	if t.locks == nil {
		t.locks = make(map[string]Lock)
	}
	for name, l := range t.locks {
		t.scheduleLeases(name, Lock{}, l)
	}
	j.rollback = t.rollback
	return t
}

// Get returns the lock called name and its queue; a lock no one holds is free.
func (t *table) Get(name string) (Snapshot, error) {
	t.mu.Lock()
	s, seq := t.snapshot(name), t.seq
	t.mu.Unlock()
	return s, t.journal.wait(seq)
}

// List returns every lock that is held or waited for.
func (t *table) List() (map[string]Snapshot, error) {
	t.mu.Lock()
	out := make(map[string]Snapshot, len(t.locks))
	for name := range t.locks {
		out[name] = t.snapshot(name)
	}
	for name := range t.queues {
		out[name] = t.snapshot(name)
	}
	seq := t.seq
	t.mu.Unlock()
	return out, t.journal.wait(seq)
}

// Len returns the number of held locks.
func (t *table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.locks)
}

// snapshot copies the lock called name and its queue. Callers hold t.mu.
func (t *table) snapshot(name string) Snapshot {
	s := Snapshot{Lock: t.locks[name].clone()}
	for _, w := range t.queues[name] {
		s.Waiting = append(s.Waiting, Waiting{Key: w.req.Key, Requestor: w.req.Requestor, Since: w.since})
	}
	return s
}

// copyState returns the table as it is now, sharing its Lock values, and
// the change it shows.
func (t *table) copyState() (state, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return state{LastToken: t.lastToken, Locks: maps.Clone(t.locks)}, t.seq
}

// Acquire takes the lock called name for req.Requestor with req.Key.
//
// It is granted at once when the requestor already holds the lock with that
// key (re-entrant), or when the lock is free or held with that key and no
// one is queued before it. Otherwise, without req.Wait it is refused with
// errLockHeld; with it, it joins the lock's queue until it is granted, the
// wait runs out (errLockHeld), or ctx is done.
func (t *table) Acquire(ctx context.Context, name string, req acquireRequest) (Snapshot, error) {
	w, s, err := t.acquireOrQueue(name, req)
	if err != nil || w == nil {
		return s, err
	}
	timer := time.NewTimer(req.Wait)
	defer timer.Stop()
	select {
	case <-w.done:
		if w.err != nil {
			return Snapshot{}, w.err
		}
		return w.snap, t.journal.wait(w.seq)
	case <-timer.C:
		if s, seq, granted := t.leave(w); granted {
			return s, t.journal.wait(seq) // granted just as time ran out
		}
		s, err := t.Get(name)
		if err != nil {
			return Snapshot{}, err
		}
		return Snapshot{}, fmt.Errorf("%w: timed out after %v waiting: %s", errLockHeld, req.Wait, describe(name, s, req.Key))
	case <-ctx.Done():
		s, seq, granted := t.leave(w)
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			if granted {
				return s, t.journal.wait(seq) // the client is still there to hear it
			}
			return Snapshot{}, errShuttingDown
		}
		if granted {
			// No one will hear of this grant: give it back.
			if _, _, err := t.Release(name, req.Key, req.Requestor, false); err != nil {
				t.log.Error("giving back a lock granted to a client that went away", "lock", name, "requestor", req.Requestor, "err", err)
			}
		}
		return Snapshot{}, errClientGone
	}
}

// acquireOrQueue grants req at once, refuses it, or queues it and returns
// its waiter.
func (t *table) acquireOrQueue(name string, req acquireRequest) (*waiter, Snapshot, error) {
	t.mu.Lock()
	l := t.locks[name]
	queue := t.queues[name]
	if plantedBug == "toctou" {
		// Check, then act on what was checked, without the mutex between.
		t.mu.Unlock()
		time.Sleep(time.Millisecond)
		t.mu.Lock()
	}
	_, holds := l.holder(req.Requestor)
	reentrant := holds && l.Key == req.Key
	compatible := l.free() || l.Key == req.Key
	switch {
	case reentrant || (compatible && len(queue) == 0):
		x := t.begin()
		x.grant(name, req)
		err := x.commit()
		s, seq := t.snapshot(name), t.seq
		t.mu.Unlock()
		return nil, s, cmpErr(err, t.journal.wait(seq))
	case req.Wait <= 0:
		refusal := fmt.Errorf("%w: %s; send ?wait=5m to wait for it", errLockHeld, describe(name, t.snapshot(name), req.Key))
		seq := t.seq
		t.mu.Unlock()
		return nil, Snapshot{}, cmpErr(t.journal.wait(seq), refusal)
	}
	w := &waiter{name: name, req: req, since: t.now(), done: make(chan struct{})}
	t.queues[name] = append(queue, w)
	t.mu.Unlock()
	return w, Snapshot{}, nil
}

// cmpErr returns the first error that is not nil.
func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// describe says why a request with key cannot have the lock called name,
// whose state is s.
func describe(name string, s Snapshot, key string) string {
	if !s.free() && s.Key != key {
		msg := fmt.Sprintf("%q is held with key %q by %s", name, s.Key, s.holdersString())
		if n := len(s.Waiting); n > 0 {
			msg += fmt.Sprintf(", and %s waiting for it", plural(n, "request is", "requests are"))
		}
		return msg
	}
	return fmt.Sprintf("%q has %s with another key waiting first, and a new request does not jump the queue",
		name, plural(len(s.Waiting), "request", "requests"))
}

// plural returns "1 request", "2 requests" and so on.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// leave takes w out of its queue because its wait ended. If w was granted
// in the meantime it stays granted, and leave returns the lock it got and
// the change that granted it.
func (t *table) leave(w *waiter) (Snapshot, uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w.granted {
		return w.snap, w.seq, true
	}
	queue := t.queues[w.name]
	if i := slices.Index(queue, w); i >= 0 {
		t.setQueue(w.name, slices.Delete(slices.Clone(queue), i, i+1))
	}
	// Whoever queued behind w may now be at the head.
	x := t.begin()
	x.grantWaiters(w.name)
	if err := x.commit(); err != nil {
		t.log.Error("granting waiters after one left", "lock", w.name, "err", err)
	}
	return Snapshot{}, 0, false
}

// Release gives back one count of requestor's hold on the lock called name,
// or every count when all is set, and says how many counts it gave back.
// Releasing a free lock, or for a requestor that holds nothing under key,
// changes nothing; a lock held with another key is refused with errLockHeld.
func (t *table) Release(name, key, requestor string, all bool) (Snapshot, int, error) {
	t.mu.Lock()
	released, err := t.release(name, key, requestor, all)
	s, seq := t.snapshot(name), t.seq
	t.mu.Unlock()
	if err := cmpErr(t.journal.wait(seq), err); err != nil {
		return Snapshot{}, 0, err
	}
	return s, released, nil
}

// release is Release without the wait. Callers hold t.mu.
func (t *table) release(name, key, requestor string, all bool) (int, error) {
	l := t.locks[name].clone()
	if l.free() {
		return 0, nil
	}
	if l.Key != key && plantedBug != "release_key" {
		return 0, fmt.Errorf("%w: %q is held with key %q by %s; a release must send the key the lock was taken with",
			errLockHeld, name, l.Key, l.holdersString())
	}
	h, ok := l.holder(requestor)
	if !ok {
		return 0, nil
	}
	released := 1
	if all || h.Count == 1 {
		released = h.Count
		l.removeHolder(requestor)
	} else {
		h.Count--
		l.setHolder(h)
	}
	x := t.begin()
	x.set(name, l)
	x.grantWaiters(name)
	return released, x.commit()
}

// ForceRelease frees the lock called name whoever holds it, and returns
// what it was.
func (t *table) ForceRelease(name string) (Lock, error) {
	t.mu.Lock()
	old := t.locks[name].clone()
	x := t.begin()
	x.set(name, Lock{})
	x.grantWaiters(name)
	err := x.commit()
	seq := t.seq
	t.mu.Unlock()
	if err := cmpErr(err, t.journal.wait(seq)); err != nil {
		return Lock{}, err
	}
	return old, nil
}

// Renew sets requestor's lease on the lock called name to end ttl from now,
// without changing its count. It is refused with errLockHeld when requestor
// holds nothing under key.
func (t *table) Renew(name, key, requestor string, ttl time.Duration) (Snapshot, error) {
	t.mu.Lock()
	l := t.locks[name].clone()
	h, ok := l.holder(requestor)
	var err error
	if !ok || l.Key != key {
		err = fmt.Errorf("%w: %s holds nothing on %q with key %q, so there is no lease to renew; take the lock with PUT",
			errLockHeld, requestor, name, key)
	} else {
		h.ExpiresAt = t.now().Add(ttl)
		l.setHolder(h)
		x := t.begin()
		x.set(name, l)
		err = x.commit()
	}
	s, seq := t.snapshot(name), t.seq
	t.mu.Unlock()
	if err := cmpErr(t.journal.wait(seq), err); err != nil {
		return Snapshot{}, err
	}
	return s, nil
}
