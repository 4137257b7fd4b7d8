package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/metrics"
)

// Domain errors; api.go maps each one to an HTTP status.
var (
	errLockHeld     = errors.New("locked")
	errSave         = errors.New("could not save the lock state")
	errShuttingDown = errors.New("locker is shutting down; send the request again in a moment")
	errClientGone   = errors.New("the client went away while waiting")
	errKeyReused    = errors.New("Idempotency-Key reused")
)

// Lock and Holder are a lock's shape, defined in internal/lock.
type (
	Lock   = lock.Lock
	Holder = lock.Holder
)

// Snapshot is a lock and its queue at one moment.
type Snapshot struct {
	Lock
	Waiting []lock.Waiting
	// Replayed says the request was answered before, by its
	// Idempotency-Key: this is the first answer again, and nothing changed.
	Replayed bool `json:"-"`
}

// idemRequest is a request's Idempotency-Key, scoped to its method and
// lock, and a fingerprint of the request, to tell a repeat from a reuse.
type idemRequest struct {
	scope, fingerprint string
}

// outcome is what a request with an Idempotency-Key is answered again.
type outcome struct {
	Lock     Snapshot `json:"lock"`          // the lock as the first answer showed it
	Old      *Lock    `json:"old,omitempty"` // force release: what it freed
	Released int      `json:"released"`      // release: how many counts it gave back
}

// acquireRequest is what a PUT asks for.
type acquireRequest struct {
	lock.Request
	Wait time.Duration // how long to queue for the lock; 0 answers at once
	Idem *idemRequest  // its Idempotency-Key, if it sent one
}

// placeHold is how long a waiter whose wait ran out keeps its place in the
// queue for a request with its Idempotency-Key: a client that waits in
// rounds (the Concourse resource) asks again at once, and must not go to
// the back each time.
const placeHold = 30 * time.Second

// waiter is a queued acquireRequest.
type waiter struct {
	name  string
	req   acquireRequest
	since time.Time
	done  chan struct{} // closed once it is granted, or its grant failed
	// left is when its wait ran out, for a waiter with an Idempotency-Key:
	// it stays in the queue as a placeholder for placeHold, is granted
	// nothing, and a request with its key that queues takes its place.
	left time.Time

	// Guarded by table.mu; read by the waiter once done is closed.
	granted bool
	snap    Snapshot // the lock as granted
	seq     uint64   // the change that granted it
	err     error    // why the grant could not be made
}

// table is the in-memory lock table. A change is made in memory, under mu,
// by the rules in internal/lock, and queued in the store; no one hears of
// it, or of anything computed from it, until the store has it on disk
// (see durable). A change that cannot be saved is undone.
type table struct {
	store   Store
	now     func() time.Time
	log     *slog.Logger
	metrics *metrics.Metrics // nil records nothing
	wake    chan struct{}    // tells the expiry loop that a new lease may come first

	mu        sync.Mutex // guards the fields below
	locks     map[string]Lock
	queues    map[string][]*waiter // waiters per lock, first come first served
	lastToken uint64               // the highest fencing token handed out
	leases    leaseHeap
	seq       uint64          // the change the table now shows; replies wait for it
	lastSeq   uint64          // the last seq handed out; seqs are never reused
	undo      []undo          // changes not yet known to be durable, oldest first
	requests  idempotency.Set // outcomes by Idempotency-Key

	// durableSeq is the latest change that a wait found durable: the
	// changes up to it can no longer be undone.
	durableSeq atomic.Uint64
}

// undo is what one change replaced, to put back if it cannot be saved.
type undo struct {
	seq        uint64
	oldLocks   map[string]Lock // free (zero) for locks that were not held
	lastToken  uint64
	remembered []idempotency.Entry // outcomes it remembered
	forgotten  []idempotency.Entry // outcomes it forgot
}

// openTable returns the table that store keeps.
func openTable(store Store, now func() time.Time, log *slog.Logger) (*table, error) {
	t := &table{
		store: store,
		// Milliseconds are precise enough for leases and easier to read.
		now:    func() time.Time { return now().UTC().Truncate(time.Millisecond) },
		log:    log,
		wake:   make(chan struct{}, 1),
		queues: make(map[string][]*waiter),
	}
	st, err := store.Open(t.rollback)
	if err != nil {
		return nil, err
	}
	if faults.Planted == faults.ForgetTokens {
		st.LastToken = 0
		for _, l := range st.Locks {
			st.LastToken = max(st.LastToken, l.Token)
		}
	}
	t.locks, t.lastToken, t.seq, t.lastSeq = st.Locks, st.LastToken, st.Seq, st.Seq
	for _, e := range st.Requests {
		t.requests.Put(e)
	}
	t.durableSeq.Store(st.Seq)
	if t.locks == nil {
		t.locks = make(map[string]Lock)
	}
	for name, l := range t.locks {
		t.scheduleLeases(name, Lock{}, l)
	}
	return t, nil
}

// recall finds the outcome of an earlier request with idem's key: seen
// says there was one, and err is errKeyReused when it was another request.
// Only requests that changed something are remembered. Callers hold t.mu.
func (t *table) recall(idem *idemRequest) (o outcome, seen bool, err error) {
	if idem == nil {
		return outcome{}, false, nil
	}
	e, ok := t.requests.Get(idem.scope, t.now())
	if !ok {
		return outcome{}, false, nil
	}
	if e.Fingerprint != idem.fingerprint {
		return outcome{}, true, fmt.Errorf("%w: it came at %s with another request; send a new key with a new request",
			errKeyReused, e.At.Format(time.RFC3339))
	}
	if err := json.Unmarshal([]byte(e.Outcome), &o); err != nil {
		return outcome{}, true, fmt.Errorf("reading a remembered outcome: %w", err)
	}
	o.Lock.Replayed = true
	return o, true, nil
}

// replay answers a request seen before: its outcome once the change it
// made is durable (it may still be on its way to disk).
func (t *table) replay(o outcome, err error) (outcome, error) {
	seq := t.seq
	t.mu.Unlock()
	return o, cmp.Or(err, t.durable(seq))
}

// durable returns once change seq is durable, or why it never will be.
func (t *table) durable(seq uint64) error {
	if faults.Planted == faults.EarlyAck {
		return nil
	}
	err := t.store.Wait(seq)
	for old := t.durableSeq.Load(); err == nil && seq > old && !t.durableSeq.CompareAndSwap(old, seq); {
		old = t.durableSeq.Load()
	}
	return err
}

// Get returns the lock called name and its queue; a lock no one holds is free.
func (t *table) Get(name string) (Snapshot, error) {
	t.mu.Lock()
	due, err := t.settle()
	s, seq := t.snapshot(name), t.seq
	t.mu.Unlock()
	return s, t.done(due, err, seq)
}

// settle ends the leases that ran out by now, so that what a request sees
// or changes is the lock as it is now. Callers hold t.mu.
func (t *table) settle() ([]lease, error) {
	x := t.begin()
	due := t.expireDue(x, t.now())
	return due, x.commit()
}

// done waits for change seq, which a request's answer depends on, and
// logs the leases it ended. It returns the first of err and the wait's
// error.
func (t *table) done(due []lease, err error, seq uint64) error {
	if err := cmp.Or(err, t.durable(seq)); err != nil {
		return err
	}
	t.logExpired(due)
	return nil
}

// List returns every lock that is held or waited for.
func (t *table) List() (map[string]Snapshot, error) {
	t.mu.Lock()
	due, err := t.settle()
	out := make(map[string]Snapshot, len(t.locks))
	for name := range t.locks {
		out[name] = t.snapshot(name)
	}
	for name := range t.queues {
		if s := t.snapshot(name); len(s.Waiting) > 0 {
			out[name] = s
		}
	}
	seq := t.seq
	t.mu.Unlock()
	return out, t.done(due, err, seq)
}

// sizes returns how many locks are held, by how many holders, and how
// many requests wait: the gauges' figures.
func (t *table) sizes() (locks, holders, waiters int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range t.locks {
		holders += len(l.Holders)
	}
	for _, q := range t.queues {
		for _, w := range q {
			if w.left.IsZero() {
				waiters++
			}
		}
	}
	return len(t.locks), holders, waiters
}

// oldestAge returns how long the longest-held lock has been held.
func (t *table) oldestAge() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var oldest time.Duration
	for _, l := range t.locks {
		if !l.AcquiredAt.IsZero() {
			oldest = max(oldest, now.Sub(l.AcquiredAt))
		}
	}
	return oldest
}

// Len returns the number of held locks.
func (t *table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.locks)
}

// snapshot copies the lock called name and its queue. Callers hold t.mu.
func (t *table) snapshot(name string) Snapshot {
	s := Snapshot{Lock: t.locks[name].Clone()}
	for _, w := range t.queues[name] {
		if w.left.IsZero() {
			s.Waiting = append(s.Waiting, lock.Waiting{Key: w.req.Key, Requestor: w.req.Requestor, Since: w.since})
		}
	}
	return s
}

// saved returns the table as it is now, sharing its Lock values.
func (t *table) saved() Saved {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.requests.Prune(t.now())
	return Saved{Seq: t.seq, LastToken: t.lastToken, Locks: maps.Clone(t.locks), Requests: t.requests.All()}
}

// Acquire takes the lock called name for req.Requestor with req.Key, as
// lock.Decide rules: at once, refused with errLockHeld, or, with req.Wait,
// after waiting in the lock's queue until it is granted, the wait runs out
// (errLockHeld), or ctx is done.
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
		// The client may have hung up just as the lock came its way: check
		// at the grant and again once the grant is on disk, or a client
		// no one can answer holds the lock for good. (A reply can still
		// be lost on the wire after this; leases cover that.)
		err := t.durable(w.seq)
		if clientGone(ctx) {
			return t.giveBack(w)
		}
		if err == nil {
			t.metrics.Acquired(time.Since(w.since), true)
		}
		return w.snap, err
	case <-timer.C:
		if s, seq, granted := t.leave(w, w.req.Idem != nil); granted {
			return s, t.durable(seq) // granted just as time ran out
		}
		t.metrics.WaitTimedOut()
		s, err := t.Get(name)
		if err != nil {
			return Snapshot{}, err
		}
		return Snapshot{}, fmt.Errorf("%w: timed out after %v waiting: %s", errLockHeld, req.Wait, refusal(name, s, req.Key))
	case <-ctx.Done():
		return t.abandon(ctx, w)
	}
}

// abandon takes w out of the queue because its request's context is done.
// A waiter granted meanwhile keeps the lock if its client is still there
// to hear of it (the server is shutting down); otherwise it gives it back.
func (t *table) abandon(ctx context.Context, w *waiter) (Snapshot, error) {
	s, seq, granted := t.leave(w, false)
	switch {
	case !clientGone(ctx) && granted:
		return s, t.durable(seq)
	case !clientGone(ctx):
		return Snapshot{}, errShuttingDown
	case granted:
		return t.giveBack(w)
	}
	return Snapshot{}, errClientGone
}

// clientGone reports whether the request behind ctx has no client left to
// answer: its context is done, and not because the server is shutting down
// (then the client still hears a 503, or its grant).
func clientGone(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), errShuttingDown)
}

// giveBack releases the count granted to w, whose client went away, and
// forgets the grant's outcome: the client never heard of it.
func (t *table) giveBack(w *waiter) (Snapshot, error) {
	t.mu.Lock()
	x := t.begin()
	next, released, _ := lock.Release(t.locks[w.name], w.req.Key, w.req.Requestor, false)
	if released > 0 {
		x.set(w.name, next)
		x.giveQueue(w.name)
	}
	if w.req.Idem != nil {
		x.forget(w.req.Idem.scope)
	}
	err := x.commit()
	seq := t.seq
	t.mu.Unlock()
	if err := cmp.Or(err, t.durable(seq)); err != nil {
		t.log.Error("giving back a lock granted to a client that went away", "lock", w.name, "requestor", w.req.Requestor, "err", err)
	} else {
		t.log.Info("lock given back: its waiter went away as it was granted", "lock", w.name, "requestor", w.req.Requestor)
	}
	return Snapshot{}, errClientGone
}

// acquireOrQueue grants req at once, refuses it, or queues it and returns
// its waiter.
func (t *table) acquireOrQueue(name string, req acquireRequest) (*waiter, Snapshot, error) {
	t.mu.Lock()
	if o, seen, err := t.recall(req.Idem); seen {
		o, err := t.replay(o, err)
		return nil, o.Lock, err
	}
	x := t.begin()
	due := t.expireDue(x, t.now())
	l, queued := t.locks[name], t.waiting(name)
	if faults.Planted == faults.TOCTOU {
		t.mu.Unlock()
		time.Sleep(time.Millisecond)
		t.mu.Lock()
	}
	verdict := lock.Decide(l, queued, req.Request, req.Wait > 0)
	if verdict == lock.Grant {
		x.set(name, lock.Give(l, req.Request, t.now(), x.nextToken))
		x.remember(name, req.Idem, outcome{})
	}
	err := x.commit()
	s, seq := t.snapshot(name), t.seq
	if verdict == lock.Queue && err == nil {
		w := &waiter{name: name, req: req, since: t.now(), done: make(chan struct{})}
		t.enqueue(w)
		t.mu.Unlock()
		t.logExpired(due) // the waiter's own answer waits for the change
		return w, Snapshot{}, nil
	}
	t.mu.Unlock()
	if err := t.done(due, err, seq); err != nil || verdict == lock.Grant {
		if err == nil {
			t.metrics.Acquired(0, false)
		}
		return nil, s, err
	}
	t.metrics.Refused()
	return nil, Snapshot{}, fmt.Errorf("%w: %s; send ?wait=5m to wait for it", errLockHeld, refusal(name, s, req.Key))
}

// waiting counts the waiters in the queue of the lock called name, and
// drops the placeholders whose time is up. Callers hold t.mu.
func (t *table) waiting(name string) int {
	queue := t.queues[name]
	if len(queue) == 0 {
		return 0 // most locks: nothing to scan or copy
	}
	now, n := t.now(), 0
	queue = slices.DeleteFunc(slices.Clone(queue), func(w *waiter) bool {
		return !w.left.IsZero() && now.Sub(w.left) > placeHold
	})
	for _, w := range queue {
		if w.left.IsZero() {
			n++
		}
	}
	t.setQueue(name, queue)
	return n
}

// enqueue puts w at the back of its lock's queue, or in the place of the
// placeholder left by an earlier request with its Idempotency-Key.
// Callers hold t.mu.
func (t *table) enqueue(w *waiter) {
	queue := slices.Clone(t.queues[w.name])
	for i, p := range queue {
		if !p.left.IsZero() && w.req.Idem != nil && p.req.Idem != nil && *p.req.Idem == *w.req.Idem {
			w.since = p.since // it has waited since then
			queue[i] = w
			t.queues[w.name] = queue
			return
		}
	}
	t.queues[w.name] = append(queue, w)
}

// refusal says why a request with key cannot have the lock called name,
// whose state is s.
func refusal(name string, s Snapshot, key string) string {
	if !s.Free() && s.Key != key {
		msg := fmt.Sprintf("%q is held with key %q by %s", name, s.Key, s.HoldersString())
		if n := len(s.Waiting); n > 0 {
			msg += fmt.Sprintf(", and %s waiting for it", plural(n, "request is", "requests are"))
		}
		return msg
	}
	other := 0
	for _, w := range s.Waiting {
		if w.Key != key {
			other++
		}
	}
	if other == len(s.Waiting) {
		return fmt.Sprintf("%q has %s with another key waiting first, and a new request does not jump the queue",
			name, plural(other, "request", "requests"))
	}
	return fmt.Sprintf("%q has %s waiting first (%d with another key), and a new request does not jump the queue",
		name, plural(len(s.Waiting), "request", "requests"), other)
}

// plural returns "1 request", "2 requests" and so on.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// leave takes w out of its queue because its wait ended, leaving a
// placeholder in its place when hold is set. If w was granted in the
// meantime it stays granted, and leave returns the lock it got and the
// change that granted it.
func (t *table) leave(w *waiter, hold bool) (Snapshot, uint64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w.granted {
		return w.snap, w.seq, true
	}
	queue := t.queues[w.name]
	if i := slices.Index(queue, w); i >= 0 && hold {
		w.left = t.now()
	} else if i >= 0 {
		t.setQueue(w.name, slices.Delete(slices.Clone(queue), i, i+1))
	}
	// Whoever queued behind w may now be at the head.
	x := t.begin()
	x.giveQueue(w.name)
	if err := x.commit(); err != nil {
		t.log.Error("granting waiters after one left", "lock", w.name, "err", err)
	}
	return Snapshot{}, 0, false
}

// Release gives back one count of requestor's hold on the lock called name,
// or every count when all is set, and says how many counts it gave back.
// Releasing a free lock, or for a requestor that holds nothing under key,
// changes nothing; a lock held with another key is refused with errLockHeld.
func (t *table) Release(name, key, requestor string, all bool, idem *idemRequest) (Snapshot, int, error) {
	t.mu.Lock()
	if o, seen, err := t.recall(idem); seen {
		o, err := t.replay(o, err)
		return o.Lock, o.Released, err
	}
	x := t.begin()
	due := t.expireDue(x, t.now())
	l := t.locks[name]
	if faults.Planted == faults.ReleaseAnyKey {
		key = l.Key
	}
	next, released, ok := lock.Release(l, key, requestor, all)
	var err error
	if !ok {
		err = fmt.Errorf("%w: %q is held with key %q by %s; a release must send the key the lock was taken with",
			errLockHeld, name, l.Key, l.HoldersString())
	} else if released > 0 {
		x.set(name, next)
		x.giveQueue(name)
		x.remember(name, idem, outcome{Released: released})
	}
	cerr := x.commit()
	s, seq := t.snapshot(name), t.seq
	t.mu.Unlock()
	if err := cmp.Or(t.done(due, cerr, seq), err); err != nil {
		return Snapshot{}, 0, err
	}
	t.metrics.Released(released)
	return s, released, nil
}

// ForceRelease frees the lock called name whoever holds it, and returns
// what it was and what it is now (the next waiters may have it).
func (t *table) ForceRelease(name string, idem *idemRequest) (Lock, Snapshot, error) {
	t.mu.Lock()
	if o, seen, err := t.recall(idem); seen {
		o, err := t.replay(o, err)
		if o.Old == nil {
			o.Old = &Lock{}
		}
		return *o.Old, o.Lock, err
	}
	x := t.begin()
	due := t.expireDue(x, t.now())
	old := t.locks[name].Clone()
	x.set(name, Lock{})
	x.giveQueue(name)
	if !old.Free() {
		x.remember(name, idem, outcome{Old: &old})
	}
	err := x.commit()
	s, seq := t.snapshot(name), t.seq
	t.mu.Unlock()
	if err := t.done(due, err, seq); err != nil {
		return Lock{}, Snapshot{}, err
	}
	if !old.Free() {
		t.metrics.Forced()
	}
	return old, s, nil
}

// Renew sets requestor's lease on the lock called name to end ttl from now,
// without changing its count. It is refused with errLockHeld when requestor
// holds nothing under key.
func (t *table) Renew(name, key, requestor string, ttl time.Duration, idem *idemRequest) (Snapshot, error) {
	t.mu.Lock()
	if o, seen, err := t.recall(idem); seen {
		o, err := t.replay(o, err)
		return o.Lock, err
	}
	x := t.begin()
	due := t.expireDue(x, t.now())
	next, ok := lock.Renew(t.locks[name], key, requestor, t.now().Add(ttl))
	var err error
	if !ok {
		err = fmt.Errorf("%w: %s holds nothing on %q with key %q, so there is no lease to renew; take the lock with PUT",
			errLockHeld, requestor, name, key)
	} else {
		x.set(name, next)
		x.remember(name, idem, outcome{})
	}
	cerr := x.commit()
	s, seq := t.snapshot(name), t.seq
	t.mu.Unlock()
	if err := cmp.Or(t.done(due, cerr, seq), err); err != nil {
		return Snapshot{}, err
	}
	return s, nil
}

// checkpoint has the store save the whole table, so that it can forget
// the changes it holds. The table is copied under its mutex, a quick copy
// of the map, and saved without it.
func (t *table) checkpoint() error {
	st := t.saved()
	if err := t.durable(st.Seq); err != nil {
		return err
	}
	return t.store.Checkpoint(st)
}

// checkpointLoop checkpoints whenever the store asks, until ctx is done.
func (t *table) checkpointLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.store.CheckpointDue():
			start := time.Now()
			if err := t.checkpoint(); err != nil {
				t.log.Error("checkpointing the journal into the state file", "err", err)
				continue
			}
			t.metrics.Checkpointed(time.Since(start))
			t.log.Info("journal checkpointed into the state file", "locks", t.Len(), "duration", time.Since(start))
		}
	}
}

// close checkpoints and closes the store, so that at rest the state file
// alone holds the table. Callers make sure no change is under way.
func (t *table) close() error {
	if err := t.checkpoint(); err != nil {
		return errors.Join(err, t.store.Close(false))
	}
	return t.store.Close(true)
}
