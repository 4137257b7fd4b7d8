package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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

// Locks is the lock table the API serves: the one in this process, kept
// by the file store (table), or the one several nodes share in PostgreSQL
// (pgTable). Both run the rules of internal/lock, and answer with the same
// errors.
type Locks interface {
	Acquire(ctx context.Context, name string, req acquireRequest) (Snapshot, error)
	Release(name, key, requestor string, all bool, idem *idemRequest) (Snapshot, int, error)
	Renew(name, key, requestor string, ttl time.Duration, idem *idemRequest) (Snapshot, error)
	ForceRelease(name string, idem *idemRequest) (Lock, Snapshot, error)
	Get(name string) (Snapshot, error)
	List() (map[string]Snapshot, error)
	Ready() error   // nil while a change can be made durable; else why not
	Now() time.Time // the clock leases are judged by
}

// backend is a Locks with what serve runs beside the HTTP server.
type backend interface {
	Locks
	Len() int                       // locks held, for the log
	stats() metrics.TableStats      // the gauges' figures
	background(ctx context.Context) // its loops, until ctx is done
	broken() <-chan error           // says when nothing it holds can be trusted
	shutdown(clean bool) error      // clean: save everything; else keep what it has
}

// acquireRequest is what a PUT asks for.
type acquireRequest struct {
	lock.Request
	Wait time.Duration // how long to queue for the lock; 0 answers at once
	Idem *idemRequest  // its Idempotency-Key, if it sent one
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

// stats returns the gauges' figures, in one pass under the mutex: locks
// held, their holders, requests waiting, and how long the longest-held
// lock has been held.
func (t *table) stats() metrics.TableStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	st := metrics.TableStats{Locks: len(t.locks)}
	for _, l := range t.locks {
		st.Holders += len(l.Holders)
		if !l.AcquiredAt.IsZero() {
			st.OldestAge = max(st.OldestAge, now.Sub(l.AcquiredAt))
		}
	}
	for _, q := range t.queues {
		for _, w := range q {
			if w.left.IsZero() {
				st.Waiters++
			}
		}
	}
	return st
}

// Ready reports whether the store can make a change durable.
func (t *table) Ready() error { return t.store.Ready() }

// Now is the table's clock, to the millisecond.
func (t *table) Now() time.Time { return t.now() }

// background runs the expiry and checkpoint loops until ctx is done.
func (t *table) background(ctx context.Context) {
	var loops sync.WaitGroup
	loops.Go(func() { t.expireLoop(ctx) })
	loops.Go(func() { t.checkpointLoop(ctx) })
	loops.Wait()
}

// broken says when a write failed in a way that leaves the state on disk
// in doubt.
func (t *table) broken() <-chan error { return t.store.Broken() }

// shutdown closes the table: clean, it checkpoints the state; else the
// store keeps what it has.
func (t *table) shutdown(clean bool) error {
	if !clean {
		return t.store.Close(false)
	}
	return t.close()
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
			t.log.Info("lock granted", "lock", name, "key", req.Key, "holder", req.Requestor, "token", s.Token)
		}
		return nil, s, err
	}
	t.metrics.Refused()
	return nil, Snapshot{}, fmt.Errorf("%w: %s; send ?wait=5m to wait for it", errLockHeld, refusal(name, s, req.Key))
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
	if released > 0 {
		t.log.Info("lock released", "lock", name, "key", l.Key, "holder", requestor, "token", l.Token, "counts", released, "now_free", s.Free())
	}
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
