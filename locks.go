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
// free lock has no holders and is not kept in the table.
type Lock struct {
	Key        string
	Token      uint64    // fencing token: set each time the lock goes from free to held
	AcquiredAt time.Time // when it last went from free to held
	Holders    map[string]Holder
}

// Holder is one requestor's hold on a lock.
type Holder struct {
	Count     int       // how many PUTs it has not yet given back
	Since     time.Time // when it took its first count
	ExpiresAt time.Time // when its lease runs out; zero when it has none
	Note      string    // what the requestor said about itself, e.g. a build URL
}

func (l Lock) free() bool { return len(l.Holders) == 0 }

// clone returns a copy of l that shares no map with it.
func (l Lock) clone() Lock {
	l.Holders = maps.Clone(l.Holders)
	return l
}

// lockedBy returns each holder's count, the shape the original API had.
func (l Lock) lockedBy() map[string]int {
	m := make(map[string]int, len(l.Holders))
	for r, h := range l.Holders {
		m[r] = h.Count
	}
	return m
}

// holdersString lists l's holders for messages: "node-a (2), node-b (1)".
func (l Lock) holdersString() string {
	names := slices.Sorted(maps.Keys(l.Holders))
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s (%d)", n, l.Holders[n].Count)
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

// state is everything the store keeps.
type state struct {
	LastToken uint64 // the highest fencing token ever handed out
	Locks     map[string]Lock
}

// saver makes the whole lock table durable. The table calls it with its
// mutex held, so the file always matches an order of changes clients saw.
type saver interface {
	save(st state) error
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
	done  chan struct{} // closed once the grant is saved

	// Guarded by table.mu.
	granted bool
	snap    Snapshot // the lock as granted
}

// table is the in-memory lock table. Every change is saved before anyone
// can see it, and undone if saving fails.
type table struct {
	store saver
	now   func() time.Time
	log   *slog.Logger
	wake  chan struct{} // tells the expiry loop that a new lease may come first

	mu        sync.Mutex // guards the fields below; held across saves
	locks     map[string]Lock
	queues    map[string][]*waiter // waiters per lock, first come first served
	lastToken uint64
	leases    leaseHeap
}

func newTable(store saver, st state, now func() time.Time, log *slog.Logger) *table {
	t := &table{
		store: store,
		// Milliseconds are precise enough for leases and easier to read.
		now:       func() time.Time { return now().UTC().Truncate(time.Millisecond) },
		log:       log,
		wake:      make(chan struct{}, 1),
		locks:     st.Locks,
		queues:    make(map[string][]*waiter),
		lastToken: st.LastToken,
	}
	if t.locks == nil {
		t.locks = make(map[string]Lock)
	}
	for name, l := range t.locks {
		t.scheduleLeases(name, Lock{}, l)
	}
	return t
}

// Get returns the lock called name and its queue; a lock no one holds is free.
func (t *table) Get(name string) Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.snapshot(name)
}

// List returns every lock that is held or waited for.
func (t *table) List() map[string]Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]Snapshot, len(t.locks))
	for name := range t.locks {
		out[name] = t.snapshot(name)
	}
	for name := range t.queues {
		out[name] = t.snapshot(name)
	}
	return out
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

// Acquire takes the lock called name for req.Requestor with req.Key.
//
// It is granted at once when the requestor already holds the lock with that
// key (re-entrant), or when the lock is free or held with that key and no
// one is queued before it. Otherwise, without req.Wait it is refused with
// errLockHeld; with it, it joins the lock's queue until it is granted, the
// wait runs out (errLockHeld), or ctx is done.
func (t *table) Acquire(ctx context.Context, name string, req acquireRequest) (Snapshot, error) {
	w, l, err := t.acquireOrQueue(name, req)
	if err != nil || w == nil {
		return l, err
	}
	timer := time.NewTimer(req.Wait)
	defer timer.Stop()
	select {
	case <-w.done:
		return w.snap, nil
	case <-timer.C:
		if l, granted := t.leave(w); granted {
			return l, nil // granted just as time ran out
		}
		s := t.Get(name)
		return Snapshot{}, fmt.Errorf("%w: timed out after %v waiting: %s", errLockHeld, req.Wait, describe(name, s, req.Key))
	case <-ctx.Done():
		l, granted := t.leave(w)
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			if granted {
				return l, nil // the client is still there to hear it
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
	defer t.mu.Unlock()
	l := t.locks[name]
	queue := t.queues[name]
	_, holds := l.Holders[req.Requestor]
	reentrant := holds && l.Key == req.Key
	compatible := l.free() || l.Key == req.Key
	if reentrant || (compatible && len(queue) == 0) {
		x := t.begin()
		x.grant(name, req)
		if err := x.commit(); err != nil {
			return nil, Snapshot{}, err
		}
		return nil, t.snapshot(name), nil
	}
	if req.Wait <= 0 {
		return nil, Snapshot{}, fmt.Errorf("%w: %s; send ?wait=5m to wait for it", errLockHeld, describe(name, t.snapshot(name), req.Key))
	}
	w := &waiter{name: name, req: req, since: t.now(), done: make(chan struct{})}
	t.queues[name] = append(queue, w)
	return w, Snapshot{}, nil
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
// in the meantime it stays granted and leave returns the lock it got.
func (t *table) leave(w *waiter) (Snapshot, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w.granted {
		return w.snap, true
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
	return Snapshot{}, false
}

// Release gives back one count of requestor's hold on the lock called name,
// or every count when all is set, and says how many counts it gave back.
// Releasing a free lock, or for a requestor that holds nothing under key,
// changes nothing; a lock held with another key is refused with errLockHeld.
func (t *table) Release(name, key, requestor string, all bool) (Snapshot, int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.locks[name].clone()
	if l.free() {
		return t.snapshot(name), 0, nil
	}
	if l.Key != key {
		return Snapshot{}, 0, fmt.Errorf("%w: %q is held with key %q by %s; a release must send the key the lock was taken with",
			errLockHeld, name, l.Key, l.holdersString())
	}
	h, ok := l.Holders[requestor]
	if !ok {
		return t.snapshot(name), 0, nil
	}
	released := 1
	if all || h.Count == 1 {
		released = h.Count
		delete(l.Holders, requestor)
	} else {
		h.Count--
		l.Holders[requestor] = h
	}
	x := t.begin()
	x.set(name, l)
	x.grantWaiters(name)
	if err := x.commit(); err != nil {
		return Snapshot{}, 0, err
	}
	return t.snapshot(name), released, nil
}

// ForceRelease frees the lock called name whoever holds it, and returns
// what it was.
func (t *table) ForceRelease(name string) (Lock, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.locks[name].clone()
	x := t.begin()
	x.set(name, Lock{})
	x.grantWaiters(name)
	if err := x.commit(); err != nil {
		return Lock{}, err
	}
	return old, nil
}

// Renew sets requestor's lease on the lock called name to end ttl from now,
// without changing its count. It is refused with errLockHeld when requestor
// holds nothing under key.
func (t *table) Renew(name, key, requestor string, ttl time.Duration) (Snapshot, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.locks[name].clone()
	h, ok := l.Holders[requestor]
	if !ok || l.Key != key {
		return Snapshot{}, fmt.Errorf("%w: %s holds nothing on %q with key %q, so there is no lease to renew; take the lock with PUT",
			errLockHeld, requestor, name, key)
	}
	h.ExpiresAt = t.now().Add(ttl)
	l.Holders[requestor] = h
	x := t.begin()
	x.set(name, l)
	if err := x.commit(); err != nil {
		return Snapshot{}, err
	}
	return t.snapshot(name), nil
}

// put stores l under name, or deletes name when l is free so that released
// locks do not accumulate. Callers hold t.mu.
func (t *table) put(name string, l Lock) {
	if l.free() {
		delete(t.locks, name)
		return
	}
	t.locks[name] = l
}

// setQueue replaces the queue of the lock called name. Callers hold t.mu.
func (t *table) setQueue(name string, queue []*waiter) {
	if len(queue) == 0 {
		delete(t.queues, name)
		return
	}
	t.queues[name] = queue
}

// tx is one change to the table: it remembers what it touched, so that a
// failed save can put everything back. Callers hold t.mu from begin to
// commit.
type tx struct {
	t         *table
	oldLocks  map[string]Lock      // before the change, by name; free if absent
	oldQueues map[string][]*waiter // before the change, by name
	lastToken uint64
	granted   []*waiter
}

func (t *table) begin() *tx {
	return &tx{t: t, oldLocks: map[string]Lock{}, oldQueues: map[string][]*waiter{}, lastToken: t.lastToken}
}

// set makes l the lock called name.
func (x *tx) set(name string, l Lock) {
	if _, ok := x.oldLocks[name]; !ok {
		x.oldLocks[name] = x.t.locks[name]
	}
	x.t.put(name, l)
}

// grant adds one count of req.Requestor to the lock called name.
func (x *tx) grant(name string, req acquireRequest) {
	l := x.t.locks[name].clone()
	x.grantTo(&l, req)
	x.set(name, l)
}

// grantTo adds one count of req.Requestor to l. A free lock gets the next
// fencing token.
func (x *tx) grantTo(l *Lock, req acquireRequest) {
	now := x.t.now()
	if l.free() {
		x.t.lastToken++
		*l = Lock{Key: req.Key, Token: x.t.lastToken, AcquiredAt: now, Holders: map[string]Holder{}}
	}
	h, ok := l.Holders[req.Requestor]
	if !ok {
		h.Since = now
	}
	h.Count++
	if req.Note != "" {
		h.Note = req.Note
	}
	if req.TTL > 0 {
		h.ExpiresAt = now.Add(req.TTL)
	}
	l.Holders[req.Requestor] = h
}

// grantWaiters grants the head of the lock's queue, and the waiters right
// behind it, for as long as each is compatible with the holders.
func (x *tx) grantWaiters(name string) {
	t := x.t
	queue := t.queues[name]
	l := t.locks[name].clone()
	n := 0
	for ; n < len(queue); n++ {
		w := queue[n]
		if !l.free() && l.Key != w.req.Key {
			break
		}
		x.grantTo(&l, w.req)
		x.granted = append(x.granted, w)
	}
	if n == 0 {
		return
	}
	x.set(name, l)
	if _, ok := x.oldQueues[name]; !ok {
		x.oldQueues[name] = queue
	}
	t.setQueue(name, slices.Clone(queue[n:]))
}

// commit saves the table. On success the granted waiters hear of it; on
// failure every change of x is undone and the error wraps errSave.
func (x *tx) commit() error {
	t := x.t
	if len(x.oldLocks) == 0 {
		return nil // nothing changed
	}
	if err := t.store.save(state{LastToken: t.lastToken, Locks: t.locks}); err != nil {
		for name, l := range x.oldLocks {
			t.put(name, l)
		}
		for name, q := range x.oldQueues {
			t.setQueue(name, q)
		}
		t.lastToken = x.lastToken
		return fmt.Errorf("%w: %w", errSave, err)
	}
	for name, old := range x.oldLocks {
		t.scheduleLeases(name, old, t.locks[name])
	}
	// Waiters granted together share one snapshot; none of them changes it.
	snaps := make(map[string]Snapshot)
	for _, w := range x.granted {
		snap, ok := snaps[w.name]
		if !ok {
			snap = t.snapshot(w.name)
			snaps[w.name] = snap
		}
		w.granted = true
		w.snap = snap
		close(w.done)
	}
	return nil
}
