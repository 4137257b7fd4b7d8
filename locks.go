package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/stream"
	"github.com/locker-ci/locker/internal/txn"
)

// The lock engine: each request's steps, written once, as functions over
// a transaction of the store (store.go), whichever it is. The steps are
// those of every change: end the leases that ran out, recall the
// Idempotency-Key, decide by internal/lock's rules, grant or queue, grant
// the queue's head whatever it can have, remember the outcome.

// Domain errors; api.go maps each one to an HTTP status.
var (
	errLockHeld = errors.New("locked")
	// errInvalid: the request cannot be made as asked, whatever the
	// locks' state (a claim for more members than its pool has).
	errInvalid    = errors.New("bad request")
	errClientGone = errors.New("the client went away while waiting")
	errKeyReused  = errors.New("Idempotency-Key reused")
	// errKeyBusy and errGrantEnded are about an Idempotency-Key whose
	// first request is still being answered, or whose grant has ended.
	errKeyBusy    = errors.New("Idempotency-Key in use")
	errGrantEnded = errors.New("grant ended")
	// errLimitDiffers: a request names a limit other than the one the
	// lock is held under.
	errLimitDiffers = errors.New("limit differs")
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
	Wait  time.Duration // how long to queue for the lock; 0 answers at once
	Idem  *idemRequest  // its Idempotency-Key, if it sent one
	Count int           // a claim: how many of its pool's members; 0 for a request by name
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
	// Set is each lock of a request for several, as the first answer
	// showed it, and each one's counts given back; Lock and Released
	// then say nothing.
	Set map[string]setOutcome `json:"set,omitempty"`
}

// setOutcome is one lock of a request for several.
type setOutcome struct {
	Lock     Snapshot `json:"lock"`
	Old      *Lock    `json:"old,omitempty"`
	Released int      `json:"released,omitempty"`
}

// outcomeOf is the outcome of a request over the locks in got, with the
// counts released of each and what a force release freed (nil: none). A
// request over one lock keeps the shape outcomes had before sets; a
// claim's is always a set (which members it got is part of its answer).
func outcomeOf(got map[string]Snapshot, released map[string]int, old map[string]Lock, claim bool) outcome {
	o := outcome{Set: make(map[string]setOutcome, len(got))}
	for name, s := range got {
		so := setOutcome{Lock: s, Released: released[name]}
		if l, ok := old[name]; ok {
			so.Old = &l
		}
		if len(got) == 1 && !claim {
			return outcome{Lock: so.Lock, Old: so.Old, Released: so.Released}
		}
		o.Set[name] = so
	}
	return o
}

// olds returns what o, a force release of names, freed, by lock.
func (o *outcome) olds(names []string) map[string]Lock {
	old := map[string]Lock{}
	for _, name := range names {
		l := o.Old
		if o.Set != nil {
			l = o.Set[name].Old
		}
		if l != nil {
			old[name] = *l
		}
	}
	return old
}

// locks returns the locks of o, a request over names (a claim's: the
// pool's members, of which it got some), as first answered.
func (o *outcome) locks(names []string) map[string]Snapshot {
	got := make(map[string]Snapshot, len(names))
	if o.Set == nil {
		s := o.Lock
		s.Replayed = true
		got[names[0]] = s
		return got
	}
	for name, so := range o.Set {
		so.Lock.Replayed = true
		got[name] = so.Lock
	}
	return got
}

// released returns the counts o gave back of each lock in names.
func (o *outcome) released(names []string) map[string]int {
	n := make(map[string]int, len(names))
	for _, name := range names {
		n[name] = o.Released
		if o.Set != nil {
			n[name] = o.Set[name].Released
		}
	}
	return n
}

// sum adds up the counts in n.
func sum(n map[string]int) int {
	total := 0
	for _, c := range n {
		total += c
	}
	return total
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
	hub     *stream.Hub      // where the store's events go as they commit (GET /events)
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
		r := &recorder{Tx: tx} // the changes' events go with them (history.go)
		ended = ended[:0]
		for _, name := range names {
			ended = append(ended, settle(r, name)...)
		}
		return apply(r)
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
				done := ending(tx, lock.Ending{Kind: lock.Dropped})
				tx.Set(name, next)
				done()
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
	got, err := e.AcquireSet(ctx, []string{name}, req)
	return got[name], err
}

// AcquireSet takes every lock in names (sorted, no name twice) for
// req.Requestor with req.Key in one change, or none of them: at once,
// refused with errLockHeld when one cannot be had, or, with req.Wait, after
// waiting in each one's queue until it is at the head of all of them (one
// waiter in every queue, with one ID: requests for sets that overlap are
// queued in the same order everywhere, so none waits for another in a
// circle). Each lock gets its own fencing token.
func (e *engine) AcquireSet(ctx context.Context, names []string, req acquireRequest) (map[string]Snapshot, error) {
	a := newAttempt(names, req)
	defer func() { a.stop() }()
	// The change runs to its end whatever the client does: a waiter queued
	// by a request that gave up before hearing so would wait for no one.
	// A client that left is seen in the wait.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	opts := txn.Options{Recall: req.Idem.scopeOrNone(), Token: true, NewWait: req.Wait > 0}
	err := e.update(cctx, names, opts, func(tx txn.Tx) error {
		if again, err := e.again(tx, a); again || err != nil {
			return err
		}
		for _, name := range names {
			if l := tx.Lock(name); lock.LimitDiffers(l, req.Request) {
				return fmt.Errorf("%w: %q is held under a limit of %s, set by the request that took it; %s%d, or no limit, to share it",
					errLimitDiffers, name, limitText(l.Limit), advice.Limit, l.Limit)
			}
		}
		a.verdict = decide(tx, names, req)
		switch a.verdict {
		case lock.Grant:
			for _, name := range names {
				tx.Set(name, lock.Give(tx.Lock(name), req.Request, tx.Now(), tx.NextToken))
			}
			a.got = snapshots(tx, names)
			return remember(tx, req.Idem, outcomeOf(a.got, nil, nil, false))
		case lock.Queue:
			a.queued(e.store, enqueue(tx, names, req))
			return nil
		}
		a.got = snapshots(tx, names) // for the refusal
		return nil
	})
	return e.answer(ctx, a, err, func() error {
		return fmt.Errorf("%w: %s; %s", errLockHeld, refusals(a.got, req.Key), advice.Wait)
	})
}

// attempt is a request to take locks (a lock, a set, a claim on a pool)
// and what its change decided, for after it: shared by the change's
// function and its caller.
type attempt struct {
	names   []string // the locks it names (a claim's: the pool's members)
	pool    string   // a claim's pool, or ""
	req     acquireRequest
	start   time.Time
	verdict lock.Verdict
	got     map[string]Snapshot // granted, or as they are, for a refusal
	w       txn.Waiter          // its waiter, once queued
	replay  *outcome            // the outcome remembered for its Idempotency-Key
	woken   <-chan struct{}     // the store's signal that its waiter was granted
	stop    func()              // ends the watch of its waiter
}

func newAttempt(names []string, req acquireRequest) *attempt {
	return &attempt{names: names, req: req, start: time.Now(), verdict: lock.Refuse, stop: func() {}}
}

// queued notes that the change put w in the queue (or took over its
// place), and watches it from now on: its grant may come at the commit.
func (a *attempt) queued(store Store, w txn.Waiter) {
	a.verdict, a.w = lock.Queue, w
	a.stop()
	a.woken, a.stop = store.Watch(w.ID)
}

// again answers a request sent before with its Idempotency-Key, and
// reports whether it was one: the outcome remembered, while the hold it
// tells of lasts (stillHeld), or the waiter an earlier request left in the
// queue, whose grant it takes up or whose place it takes (takeOver). A
// place kept after a wait ran out is taken only by a request that waits.
func (e *engine) again(tx txn.Tx, a *attempt) (bool, error) {
	var err error
	if a.replay, err = recall(tx, a.req.Idem); a.replay != nil || err != nil {
		return true, stillHeld(tx, a.names, a.req, a.replay, err)
	}
	p, ok := findIdem(tx, a.names, a.req.Idem)
	if !ok || a.req.Wait == 0 && !p.Left.IsZero() {
		return false, nil
	}
	verdict, got, err := takeOver(tx, a.names, p, a.req)
	switch verdict {
	case lock.Grant:
		a.verdict, a.got = verdict, got
	case lock.Queue:
		p.Round++
		a.queued(e.store, p)
		for _, name := range a.names {
			grantQueue(tx, name) // it may be at the head of free locks
		}
	}
	return true, err
}

// answer answers a, whose change returned err: refused says why when it
// was refused. A request queued waits for its grant.
func (e *engine) answer(ctx context.Context, a *attempt, err error, refused func() error) (map[string]Snapshot, error) {
	w := &wait{e: e, names: a.names, pool: a.pool, id: a.w.ID, round: a.w.Round, req: a.req, start: a.start}
	what := a.names[0]
	if a.pool != "" {
		what = a.pool
	}
	switch {
	case err != nil && a.verdict == lock.Queue && errors.Is(err, txn.ErrUncertain):
		// The waiter may be in the queue with no one to answer it.
		w.takeOut(context.WithoutCancel(ctx))
		return nil, e.fail(what, err)
	case err != nil:
		return nil, e.fail(what, err)
	case a.replay != nil:
		return a.replay.locks(a.names), nil
	case a.verdict == lock.Grant:
		e.granted(a.req, a.got, 0)
		return a.got, nil
	case a.verdict == lock.Refuse:
		e.metrics.Refused()
		return nil, refused()
	}
	return w.run(ctx, a.woken)
}

// decide is lock.Decide over a set: granted if every lock can be had now,
// refused if one cannot be and req does not wait, else queued.
func decide(tx txn.Tx, names []string, req acquireRequest) lock.Verdict {
	verdict := lock.Grant
	for _, name := range names {
		switch lock.Decide(tx.Lock(name), waiting(tx.Queue(name)), req.Request, req.Wait > 0) {
		case lock.Refuse:
			return lock.Refuse
		case lock.Queue:
			verdict = lock.Queue
		}
	}
	return verdict
}

// snapshots returns snapshot of each lock in names.
func snapshots(r txn.Reader, names []string) map[string]Snapshot {
	got := make(map[string]Snapshot, len(names))
	for _, name := range names {
		got[name] = snapshot(r, name)
	}
	return got
}

// refusals says why a request with key cannot have the locks in got: the
// reason for each one it cannot have.
func refusals(got map[string]Snapshot, key string) string {
	var why []string
	for _, name := range slices.Sorted(maps.Keys(got)) {
		if s := got[name]; !s.Free() && (s.Key != key || s.Full()) || len(s.Waiting) > 0 {
			why = append(why, refusal(name, s, key))
		}
	}
	return strings.Join(why, "; ")
}

// granted logs and counts a grant of each lock in got.
func (e *engine) granted(req acquireRequest, got map[string]Snapshot, waited time.Duration) {
	if len(got) == 1 { // the common case, without a slice of names
		for name, s := range got {
			e.grantedOne(name, req, s.Token, waited, "")
		}
		return
	}
	names := slices.Sorted(maps.Keys(got))
	set := strings.Join(names, ",")
	for _, name := range names {
		e.grantedOne(name, req, got[name].Token, waited, set)
	}
}

// grantedOne logs and counts the grant of one lock, of set if it is one
// of several.
func (e *engine) grantedOne(name string, req acquireRequest, token uint64, waited time.Duration, set string) {
	e.metrics.Acquired(waited, waited > 0)
	// Attrs, not key-value pairs: no value is boxed, and the record
	// holds them without a slice of its own.
	attrs := make([]slog.Attr, 0, 6)
	attrs = append(attrs, slog.String("lock", name), slog.String("key", req.Key), slog.String("holder", req.Requestor),
		slog.Uint64("token", token))
	if waited > 0 {
		attrs = append(attrs, slog.Duration("waited", waited.Round(time.Millisecond)))
	}
	if set != "" {
		attrs = append(attrs, slog.String("set", set))
	}
	e.log.LogAttrs(context.Background(), slog.LevelInfo, "lock granted", attrs...)
}

// change runs step in a transaction over the locks named, for a request
// that does not wait: it is answered within changeTimeout, and a request
// seen before, by its Idempotency-Key, gets its first outcome (replay)
// and changes nothing but the first step of every change.
func (e *engine) change(names []string, idem *idemRequest, step func(tx txn.Tx) error) (replay *outcome, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	err = e.update(ctx, names, txn.Options{Recall: idem.scopeOrNone()}, func(tx txn.Tx) error {
		var err error
		if replay, err = recall(tx, idem); replay != nil || err != nil {
			return err
		}
		return step(tx)
	})
	if err != nil {
		return nil, e.fail(names[0], err)
	}
	return replay, nil
}

// Release gives back one count of requestor's hold on the lock called name,
// or every count when all is set, and says how many counts it gave back.
// Releasing a free lock, or for a requestor that holds nothing under key,
// changes nothing; a lock held with another key is refused with errLockHeld.
func (e *engine) Release(name, key, requestor string, all bool, idem *idemRequest) (Snapshot, int, error) {
	got, released, err := e.ReleaseSet([]string{name}, key, requestor, all, idem)
	return got[name], released[name], err
}

// ReleaseSet is Release over every lock in names, in one change: refused
// whole when one of them is held with another key.
func (e *engine) ReleaseSet(names []string, key, requestor string, all bool, idem *idemRequest) (map[string]Snapshot, map[string]int, error) {
	// What the change did, shared with its function (one allocation).
	var out struct {
		got      map[string]Snapshot
		held     map[string]Lock
		released map[string]int
	}
	replay, err := e.change(names, idem, func(tx txn.Tx) error {
		out.held, out.released = make(map[string]Lock, len(names)), make(map[string]int, len(names))
		for _, name := range names {
			l := tx.Lock(name)
			next, n, ok := lock.Release(l, key, requestor, all)
			if !ok {
				return fmt.Errorf("%w: %q is held with key %q by %s; %s",
					errLockHeld, name, l.Key, l.HoldersString(), advice.ReleaseKey)
			}
			out.held[name], out.released[name] = l, n
			if n > 0 {
				tx.Set(name, next)
				grantQueue(tx, name)
			}
		}
		out.got = snapshots(tx, names)
		if sum(out.released) > 0 {
			return remember(tx, idem, outcomeOf(out.got, out.released, nil, false))
		}
		return nil
	})
	got, held, released := out.got, out.held, out.released
	switch {
	case err != nil:
		return nil, nil, err
	case replay != nil:
		return replay.locks(names), replay.released(names), nil
	}
	for _, name := range names {
		n := released[name]
		e.metrics.Released(n)
		if n > 0 {
			e.log.LogAttrs(context.Background(), slog.LevelInfo, "lock released", slog.String("lock", name), slog.String("key", held[name].Key),
				slog.String("holder", requestor), slog.Uint64("token", held[name].Token), slog.Int("counts", n), slog.Bool("now_free", got[name].Free()))
		}
	}
	return got, released, nil
}

// ForceRelease frees the lock called name whoever holds it, for by (who
// asked, for its history), and returns what it was and what it is now
// (the next waiters may have it).
func (e *engine) ForceRelease(name, by string, idem *idemRequest) (Lock, Snapshot, error) {
	old, got, err := e.ForceReleaseSet([]string{name}, by, idem)
	return old[name], got[name], err
}

// ForceReleaseSet is ForceRelease over every lock in names, in one change.
func (e *engine) ForceReleaseSet(names []string, by string, idem *idemRequest) (map[string]Lock, map[string]Snapshot, error) {
	var (
		got map[string]Snapshot
		old map[string]Lock
	)
	replay, err := e.change(names, idem, func(tx txn.Tx) error {
		defer ending(tx, lock.Ending{Kind: lock.Forced, By: by})()
		old = make(map[string]Lock, len(names))
		for _, name := range names {
			if l := tx.Lock(name); !l.Free() {
				old[name] = l.Clone()
				tx.Set(name, Lock{})
				grantQueue(tx, name)
			}
		}
		got = snapshots(tx, names)
		if len(old) == 0 {
			return nil
		}
		return remember(tx, idem, outcomeOf(got, nil, old, false))
	})
	switch {
	case err != nil:
		return nil, nil, err
	case replay != nil:
		return replay.olds(names), replay.locks(names), nil
	}
	for range old {
		e.metrics.Forced()
	}
	return old, got, nil
}

// Renew sets requestor's lease on the lock called name to end ttl from now,
// without changing its count. It is refused with errLockHeld when requestor
// holds nothing under key.
func (e *engine) Renew(name, key, requestor string, ttl time.Duration, idem *idemRequest) (Snapshot, error) {
	got, err := e.RenewSet([]string{name}, key, requestor, ttl, idem)
	return got[name], err
}

// RenewSet is Renew over every lock in names, in one change: refused
// whole when requestor holds one of them with nothing under key.
func (e *engine) RenewSet(names []string, key, requestor string, ttl time.Duration, idem *idemRequest) (map[string]Snapshot, error) {
	var got map[string]Snapshot
	replay, err := e.change(names, idem, func(tx txn.Tx) error {
		for _, name := range names {
			next, ok := lock.Renew(tx.Lock(name), key, requestor, tx.Now().Add(ttl))
			if !ok {
				return fmt.Errorf("%w: %s holds nothing on %q with key %q, so there is no lease to renew; %s",
					errLockHeld, requestor, name, key, advice.Take)
			}
			tx.Set(name, next)
		}
		got = snapshots(tx, names)
		return remember(tx, idem, outcomeOf(got, nil, nil, false))
	})
	switch {
	case err != nil:
		return nil, err
	case replay != nil:
		return replay.locks(names), nil
	}
	return got, nil
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
