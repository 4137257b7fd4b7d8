package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/txn"
)

// The lock engine: each request's steps, written once, as functions over
// a transaction of the store (store.go), whichever it is. The steps are
// those of every change: end the leases that ran out, recall the
// Idempotency-Key, decide by internal/lock's rules, grant or queue, grant
// the queue's head whatever it can have, remember the outcome.

// Domain errors; api.go maps each one to an HTTP status.
var (
	errLockHeld   = errors.New("locked")
	errClientGone = errors.New("the client went away while waiting")
	errKeyReused  = errors.New("Idempotency-Key reused")
	// errKeyBusy and errGrantEnded are about an Idempotency-Key whose
	// first request is still being answered, or whose grant has ended.
	errKeyBusy      = errors.New("Idempotency-Key in use")
	errGrantEnded   = errors.New("grant ended")
	errShuttingDown = txn.ErrClosed
	errSave         = txn.ErrNotSaved
	errDatabase     = txn.ErrUnavailable
	// errUncertain marks a failure after which the server cannot know what
	// the disk holds (a failed fsync): changes may or may not survive a
	// crash, and the server stops.
	errUncertain = atomicfile.ErrUncertain
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

// acquireRequest is what a PUT asks for.
type acquireRequest struct {
	lock.Request
	Wait time.Duration // how long to queue for the lock; 0 answers at once
	Idem *idemRequest  // its Idempotency-Key, if it sent one
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

// Tuned numbers.
const (
	// placeHold is how long a waiter whose wait ran out keeps its place in
	// the queue for a request with its Idempotency-Key: a client that
	// waits in rounds (the Concourse resource) asks again at once, and
	// must not go to the back each time.
	placeHold = 30 * time.Second
	// changeTimeout bounds a change that does not wait for a lock when the
	// store is slow or away: the client hears 503 instead of hanging.
	changeTimeout = 10 * time.Second
	// takeOutTries is how often a waiter that must leave the queue tries
	// to, about 8 s in all: the database may be away for a while.
	takeOutTries = 12
)

// engine is the lock table the API serves, over a store.
type engine struct {
	store   Store
	log     *slog.Logger
	metrics *metrics.Metrics // nil records nothing
}

// expiry is a hold whose lease ran out, ended by a change.
type expiry struct {
	name, key, holder string
	token             uint64
	at                time.Time
}

// update runs apply in a transaction over the locks named, after the
// first step of every change: the leases that ran out are ended, the
// places kept too long are dropped, and the queues' heads granted what
// they can have. It logs the leases it ended once the change is durable.
func (e *engine) update(ctx context.Context, names []string, opts txn.Options, apply func(txn.Tx) error) error {
	var ended []expiry
	err := e.store.Update(ctx, names, opts, func(tx txn.Tx) error {
		ended = ended[:0]
		for _, name := range names {
			ended = append(ended, settle(tx, name)...)
		}
		return apply(tx)
	})
	if err == nil {
		e.metrics.Expired(len(ended))
		for _, x := range ended {
			e.log.Info("lease expired; hold released", "lock", x.name, "key", x.key, "holder", x.holder, "token", x.token, "expired_at", x.at)
		}
	}
	return err
}

// settle ends the holds of the lock called name whose lease ran out by
// tx's clock, drops the places kept past placeHold and the waiters no
// request will take up (giving back a grant one had), and grants the
// queue.
func settle(tx txn.Tx, name string) []expiry {
	now := tx.Now()
	l := tx.Lock(name)
	var ended []expiry
	for _, h := range l.Holders {
		if !h.ExpiresAt.IsZero() && !h.ExpiresAt.After(now) {
			ended = append(ended, expiry{name: name, key: l.Key, holder: h.Name, token: l.Token, at: h.ExpiresAt})
		}
	}
	for _, x := range ended {
		l, _ = lock.Expire(l, x.holder, x.at)
	}
	if len(ended) > 0 {
		tx.Set(name, l)
	}
	var stale []txn.Waiter
	for _, w := range tx.Queue(name) {
		if w.Abandoned || !w.Left.IsZero() && now.Sub(w.Left) > placeHold {
			stale = append(stale, w)
		}
	}
	for _, w := range stale {
		tx.RemoveWaiter(name, w.ID)
		if w.Granted != nil { // granted to a node that died before its request took it up
			if next, released, _ := lock.Release(tx.Lock(name), w.Req.Key, w.Req.Requestor, false); released > 0 {
				tx.Set(name, next)
			}
		}
	}
	grantQueue(tx, name)
	return ended
}

// snapshot returns the lock called name and its waiters as r sees them,
// with the leases that ran out ended (in what it returns only).
func snapshot(r txn.Reader, name string) Snapshot {
	s := current(r, name)
	s.Lock = s.Lock.Clone()
	return s
}

// current is snapshot without the copy: its holders are the store's, to
// read and not to change.
func current(r txn.Reader, name string) Snapshot {
	l := r.Lock(name)
	for _, h := range l.Holders {
		if !h.ExpiresAt.IsZero() && !h.ExpiresAt.After(r.Now()) {
			l, _ = lock.Expire(l, h.Name, h.ExpiresAt)
		}
	}
	s := Snapshot{Lock: l}
	for _, w := range r.Queue(name) {
		if w.Waiting() {
			s.Waiting = append(s.Waiting, lock.Waiting{Key: w.Req.Key, Requestor: w.Req.Requestor, Since: w.Since})
		}
	}
	return s
}

// scope returns idem's scope, or "" for a request without a key.
func (i *idemRequest) scopeOrNone() string {
	if i == nil {
		return ""
	}
	return i.scope
}

// recall returns the outcome remembered for idem's key, or nil; a key
// seen with another request is errKeyReused. Only requests that changed
// something are remembered.
func recall(tx txn.Tx, idem *idemRequest) (*outcome, error) {
	if idem == nil {
		return nil, nil
	}
	e, ok := tx.Recall(idem.scope)
	if !ok {
		return nil, nil
	}
	if e.Fingerprint != idem.fingerprint {
		return nil, fmt.Errorf("%w: it came at %s with another request; send a new key with a new request",
			errKeyReused, e.At.Format(time.RFC3339))
	}
	var o outcome
	if err := json.Unmarshal([]byte(e.Outcome), &o); err != nil {
		return nil, fmt.Errorf("reading a remembered outcome: %w", err)
	}
	o.Lock.Replayed = true
	return &o, nil
}

// remember keeps o as the answer to idem's key, with the change. A nil
// idem does nothing.
func remember(tx txn.Tx, idem *idemRequest, o outcome) error {
	if idem == nil {
		return nil
	}
	data, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("encoding an outcome to remember: %w", err)
	}
	tx.Remember(idempotency.Entry{Scope: idem.scope, Fingerprint: idem.fingerprint, At: tx.Now(), Outcome: string(data)})
	return nil
}

// Acquire takes the lock called name for req.Requestor with req.Key, as
// lock.Decide rules: at once, refused with errLockHeld, or, with req.Wait,
// after waiting in the lock's queue until it is granted, the wait runs out
// (errLockHeld), or ctx is done.
func (e *engine) Acquire(ctx context.Context, name string, req acquireRequest) (Snapshot, error) {
	start := time.Now()
	var (
		verdict lock.Verdict
		s       Snapshot
		w       txn.Waiter
		replay  *outcome
		woken   <-chan struct{}
		stop    = func() {}
	)
	defer func() { stop() }()
	// The change runs to its end whatever the client does: a waiter queued
	// by a request that gave up before hearing so would wait for no one.
	// A client that left is seen in the wait.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	opts := txn.Options{Recall: req.Idem.scopeOrNone(), Token: true, NewWait: req.Wait > 0}
	err := e.update(cctx, []string{name}, opts, func(tx txn.Tx) error {
		var err error
		if replay, err = recall(tx, req.Idem); replay != nil || err != nil {
			return stillHeld(tx, name, req, replay, err)
		}
		if p, ok := findIdem(tx.Queue(name), req.Idem); ok && (req.Wait > 0 || p.Left.IsZero()) {
			// An earlier request with this key is in the queue: its client
			// sent again (its connection died unnoticed, a reply was lost,
			// or it waits in rounds). This one takes its place, or its grant.
			if verdict, w, s, err = takeOver(tx, name, p, req); verdict == lock.Queue {
				stop()
				woken, stop = e.store.Watch(w.ID)
				grantQueue(tx, name) // it may be at the head of a free lock
			}
			return err
		}
		l := tx.Lock(name)
		verdict = lock.Decide(l, waiting(tx.Queue(name)), req.Request, req.Wait > 0)
		switch verdict {
		case lock.Grant:
			tx.Set(name, lock.Give(l, req.Request, tx.Now(), tx.NextToken))
			s = snapshot(tx, name)
			return remember(tx, req.Idem, outcome{Lock: s})
		case lock.Queue:
			w = enqueue(tx, name, req)
			stop()
			woken, stop = e.store.Watch(w.ID)
			return nil
		}
		s = snapshot(tx, name) // for the refusal
		return nil
	})
	switch {
	case err != nil && verdict == lock.Queue && errors.Is(err, txn.ErrUncertain):
		// The waiter may be in the queue with no one to answer it.
		(&wait{e: e, name: name, id: w.ID, round: w.Round, req: req}).takeOut(context.WithoutCancel(ctx))
		return Snapshot{}, e.fail(name, err)
	case err != nil:
		return Snapshot{}, e.fail(name, err)
	case replay != nil:
		return replay.Lock, nil
	case verdict == lock.Grant:
		e.granted(name, req, s.Token, 0)
		return s, nil
	case verdict == lock.Refuse:
		e.metrics.Refused()
		return Snapshot{}, fmt.Errorf("%w: %s; send ?wait=5m to wait for it", errLockHeld, refusal(name, s, req.Key))
	}
	return (&wait{e: e, name: name, id: w.ID, round: w.Round, req: req, start: start}).run(ctx, woken)
}

// granted logs and counts a grant.
func (e *engine) granted(name string, req acquireRequest, token uint64, waited time.Duration) {
	e.metrics.Acquired(waited, waited > 0)
	attrs := []any{"lock", name, "key", req.Key, "holder", req.Requestor, "token", token}
	if waited > 0 {
		attrs = append(attrs, "waited", waited.Round(time.Millisecond))
	}
	e.log.Info("lock granted", attrs...)
}

// change runs step in a transaction over the lock called name, for a
// request that does not wait: it is answered within changeTimeout, and a
// request seen before, by its Idempotency-Key, gets its first outcome
// (replay) and changes nothing but the first step of every change.
func (e *engine) change(name string, idem *idemRequest, step func(tx txn.Tx) error) (replay *outcome, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	err = e.update(ctx, []string{name}, txn.Options{Recall: idem.scopeOrNone()}, func(tx txn.Tx) error {
		var err error
		if replay, err = recall(tx, idem); replay != nil || err != nil {
			return err
		}
		return step(tx)
	})
	if err != nil {
		return nil, e.fail(name, err)
	}
	return replay, nil
}

// Release gives back one count of requestor's hold on the lock called name,
// or every count when all is set, and says how many counts it gave back.
// Releasing a free lock, or for a requestor that holds nothing under key,
// changes nothing; a lock held with another key is refused with errLockHeld.
func (e *engine) Release(name, key, requestor string, all bool, idem *idemRequest) (Snapshot, int, error) {
	var (
		s        Snapshot
		held     Lock
		released int
		ok       bool
	)
	replay, err := e.change(name, idem, func(tx txn.Tx) error {
		held = tx.Lock(name)
		var next Lock
		next, released, ok = lock.Release(held, key, requestor, all)
		if released > 0 {
			tx.Set(name, next)
			grantQueue(tx, name)
		}
		s = snapshot(tx, name)
		if released > 0 {
			return remember(tx, idem, outcome{Lock: s, Released: released})
		}
		return nil
	})
	switch {
	case err != nil:
		return Snapshot{}, 0, err
	case replay != nil:
		return replay.Lock, replay.Released, nil
	case !ok:
		return Snapshot{}, 0, fmt.Errorf("%w: %q is held with key %q by %s; a release must send the key the lock was taken with",
			errLockHeld, name, held.Key, held.HoldersString())
	}
	e.metrics.Released(released)
	if released > 0 {
		e.log.Info("lock released", "lock", name, "key", held.Key, "holder", requestor, "token", held.Token, "counts", released, "now_free", s.Free())
	}
	return s, released, nil
}

// ForceRelease frees the lock called name whoever holds it, and returns
// what it was and what it is now (the next waiters may have it).
func (e *engine) ForceRelease(name string, idem *idemRequest) (Lock, Snapshot, error) {
	var (
		s   Snapshot
		old Lock
	)
	replay, err := e.change(name, idem, func(tx txn.Tx) error {
		old = tx.Lock(name).Clone()
		if old.Free() {
			s = snapshot(tx, name)
			return nil
		}
		tx.Set(name, Lock{})
		grantQueue(tx, name)
		s = snapshot(tx, name)
		return remember(tx, idem, outcome{Lock: s, Old: &old})
	})
	switch {
	case err != nil:
		return Lock{}, Snapshot{}, err
	case replay != nil && replay.Old != nil:
		return *replay.Old, replay.Lock, nil
	case replay != nil:
		return Lock{}, replay.Lock, nil
	}
	if !old.Free() {
		e.metrics.Forced()
	}
	return old, s, nil
}

// Renew sets requestor's lease on the lock called name to end ttl from now,
// without changing its count. It is refused with errLockHeld when requestor
// holds nothing under key.
func (e *engine) Renew(name, key, requestor string, ttl time.Duration, idem *idemRequest) (Snapshot, error) {
	var (
		s  Snapshot
		ok bool
	)
	replay, err := e.change(name, idem, func(tx txn.Tx) error {
		var next Lock
		if next, ok = lock.Renew(tx.Lock(name), key, requestor, tx.Now().Add(ttl)); !ok {
			return nil
		}
		tx.Set(name, next)
		s = snapshot(tx, name)
		return remember(tx, idem, outcome{Lock: s})
	})
	switch {
	case err != nil:
		return Snapshot{}, err
	case replay != nil:
		return replay.Lock, nil
	case !ok:
		return Snapshot{}, fmt.Errorf("%w: %s holds nothing on %q with key %q, so there is no lease to renew; take the lock with PUT",
			errLockHeld, requestor, name, key)
	}
	return s, nil
}

// Get returns the lock called name and its queue; a lock no one holds is
// free.
func (e *engine) Get(name string) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	var s Snapshot
	err := e.store.View(ctx, []string{name}, func(r txn.Reader) error {
		s = snapshot(r, name)
		return nil
	})
	if err != nil {
		return Snapshot{}, e.fail(name, err)
	}
	return s, nil
}

// fail turns a store's error into the API's: what the client may do
// about it. The details go to the log.
func (e *engine) fail(name string, err error) error {
	switch {
	case errors.Is(err, txn.ErrUncertain):
		e.log.Error("database request failed", "lock", name, "err", err)
		return fmt.Errorf("%w: the connection failed as the change was committed, so it may or may not have been made; check GET /lock/%s, or send the request again with its Idempotency-Key", errDatabase, name)
	case errors.Is(err, txn.ErrDropped):
		return fmt.Errorf("%w: this node lost its place in the queue while it could not reach the database; ask again", errDatabase)
	case errors.Is(err, txn.ErrUnavailable):
		e.log.Error("database request failed", "lock", name, "err", err)
		return fmt.Errorf("%w: the change was not made; try again in a moment", errDatabase)
	}
	return err
}

// Ready reports whether the store can make a change durable.
func (e *engine) Ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return e.store.Ready(ctx)
}

// Now is the store's clock, to the millisecond, for the status page.
func (e *engine) Now() time.Time { return e.store.Now() }

// background runs the store's own work until ctx is done; the locks it
// points at are settled, as every change settles them first.
func (e *engine) background(ctx context.Context) {
	e.store.Run(ctx, func(ctx context.Context, names []string) error {
		return e.update(ctx, names, txn.Options{}, func(txn.Tx) error { return nil })
	})
}
