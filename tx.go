package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
)

// How the table changes: each change is a tx, made in memory under the
// table's mutex, handed to the store, and undone if the store cannot save
// it.

// setQueue replaces the queue of the lock called name. Callers hold t.mu.
func (t *table) setQueue(name string, queue []*waiter) {
	if len(queue) == 0 {
		delete(t.queues, name)
		return
	}
	t.queues[name] = queue
}

// tx is one change to the table: it remembers what it replaced, so that it
// can be undone if it cannot be saved. Callers hold t.mu from begin to
// commit.
type tx struct {
	t         *table
	oldLocks  map[string]Lock
	lastToken uint64
	granted   []*waiter
	remembers []remembrance // outcomes to remember by Idempotency-Key
	forgets   []string      // scopes whose outcome to forget
}

// remembrance is an outcome to remember once the change is made: the lock
// called name as the change leaves it, with o's other fields.
type remembrance struct {
	name string
	idem *idemRequest
	o    outcome
}

// remember has the change remember, for idem's key, the lock called name
// as the change leaves it and o's other fields. A nil idem does nothing.
func (x *tx) remember(name string, idem *idemRequest, o outcome) {
	if idem != nil {
		x.remembers = append(x.remembers, remembrance{name: name, idem: idem, o: o})
	}
}

// forget has the change forget the outcome remembered for scope.
func (x *tx) forget(scope string) { x.forgets = append(x.forgets, scope) }

func (t *table) begin() *tx {
	return &tx{t: t, oldLocks: map[string]Lock{}, lastToken: t.lastToken}
}

// nextToken hands out the next fencing token.
func (x *tx) nextToken() uint64 {
	x.t.lastToken++
	return x.t.lastToken
}

// set makes l the lock called name; a free lock is deleted, so that
// released locks do not accumulate.
func (x *tx) set(name string, l Lock) {
	if _, ok := x.oldLocks[name]; !ok {
		x.oldLocks[name] = x.t.locks[name]
	}
	x.t.put(name, l)
}

// put stores l under name, or deletes name when l is free. Callers hold
// t.mu.
func (t *table) put(name string, l Lock) {
	if l.Free() {
		delete(t.locks, name)
		return
	}
	t.locks[name] = l
}

// giveQueue grants the head of the lock's queue as lock.GiveQueue rules.
// The queue is not part of the durable state: a grant that cannot be saved
// fails its waiter, which then leaves.
func (x *tx) giveQueue(name string) {
	t := x.t
	if t.waiting(name) == 0 {
		return
	}
	queue := t.queues[name]
	var live []*waiter // placeholders are granted nothing
	for _, w := range queue {
		if w.left.IsZero() {
			live = append(live, w)
		}
	}
	reqs := make([]lock.Request, len(live))
	for i, w := range live {
		reqs[i] = w.req.Request
	}
	l, n := lock.GiveQueue(t.locks[name], reqs, t.now(), x.nextToken)
	if n == 0 {
		return
	}
	x.granted = append(x.granted, live[:n]...)
	x.set(name, l)
	t.setQueue(name, slices.DeleteFunc(slices.Clone(queue), func(w *waiter) bool { return slices.Contains(live[:n], w) }))
}

// commit hands the change to the store under a new seq, which the table
// now shows, and tells the granted waiters. If the store cannot take it
// the change is undone at once.
func (x *tx) commit() error {
	t := x.t
	if len(x.oldLocks) == 0 && len(x.forgets) == 0 {
		return nil // nothing changed
	}
	c, err := x.change()
	if err == nil {
		err = t.store.Append(c)
	}
	if err != nil {
		if !errors.Is(err, errShuttingDown) {
			err = fmt.Errorf("%w: %w", errSave, err)
		}
		x.fail(err)
		return err
	}
	t.lastSeq++
	t.seq = t.lastSeq
	var forgotten []idempotency.Entry
	for _, scope := range x.forgets {
		if e, ok := t.requests.Take(scope); ok {
			forgotten = append(forgotten, e)
		}
	}
	for _, e := range c.Remember {
		t.requests.Put(e)
	}
	durable := t.durableSeq.Load()
	for len(t.undo) > 0 && t.undo[0].seq <= durable {
		t.undo = t.undo[1:]
	}
	t.undo = append(t.undo, undo{seq: t.seq, oldLocks: x.oldLocks, lastToken: x.lastToken, remembered: c.Remember, forgotten: forgotten})
	for name, old := range x.oldLocks {
		t.scheduleLeases(name, old, t.locks[name])
	}
	x.tellGranted()
	return nil
}

// change returns the record of x for the store: the locks it touched as
// they are now (nil for one it freed), the token counter, and the
// outcomes it remembers and forgets.
func (x *tx) change() (Change, error) {
	t := x.t
	c := Change{Seq: t.lastSeq + 1, LastToken: t.lastToken, Locks: make(map[string]*Lock, len(x.oldLocks)), Forget: x.forgets}
	for name := range x.oldLocks {
		if l, ok := t.locks[name]; ok {
			c.Locks[name] = &l
		} else {
			c.Locks[name] = nil
		}
	}
	for _, w := range x.granted {
		x.remember(w.name, w.req.Idem, outcome{})
	}
	var err error
	c.Remember, err = x.outcomes()
	return c, err
}

// fail undoes x, which could not be saved, and tells its granted waiters
// why.
func (x *tx) fail(err error) {
	x.undo()
	for _, w := range x.granted {
		w.err = err
		close(w.done)
	}
}

// tellGranted hands the waiters x granted their lock. Waiters granted
// together share one snapshot; none of them changes it.
func (x *tx) tellGranted() {
	snaps := make(map[string]Snapshot)
	for _, w := range x.granted {
		snap, ok := snaps[w.name]
		if !ok {
			snap = x.t.snapshot(w.name)
			snaps[w.name] = snap
		}
		w.granted, w.snap, w.seq = true, snap, x.t.seq
		close(w.done)
	}
}

// outcomes returns the entries x remembers, with the locks as x leaves
// them.
func (x *tx) outcomes() ([]idempotency.Entry, error) {
	var out []idempotency.Entry
	for _, r := range x.remembers {
		o := r.o
		o.Lock = x.t.snapshot(r.name)
		data, err := json.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("encoding an outcome to remember: %w", err)
		}
		out = append(out, idempotency.Entry{Scope: r.idem.scope, Fingerprint: r.idem.fingerprint, At: x.t.now(), Outcome: string(data)})
	}
	return out, nil
}

// undo puts back what x replaced.
func (x *tx) undo() {
	for name, l := range x.oldLocks {
		x.t.restore(name, l)
	}
	x.t.lastToken = x.lastToken
}

// restore puts back l, which a change replaced, with its leases: the
// expiry loop may have dropped them from the heap in that change. Callers
// hold t.mu.
func (t *table) restore(name string, l Lock) {
	t.put(name, l)
	t.scheduleLeases(name, Lock{}, l)
}

// rollback undoes every change from seq from on: the store could not save
// them, and no client has heard of them. It returns the last seq it undid.
// The store calls it.
func (t *table) rollback(from uint64, err error) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.undo) > 0 && t.undo[len(t.undo)-1].seq >= from {
		u := t.undo[len(t.undo)-1]
		for name, l := range u.oldLocks {
			t.restore(name, l)
		}
		for _, e := range u.remembered {
			t.requests.Delete(e)
		}
		for _, e := range u.forgotten {
			t.requests.Put(e)
		}
		t.lastToken = u.lastToken
		t.undo = t.undo[:len(t.undo)-1]
	}
	// The table now shows the last change that was saved: the latest one
	// still in t.undo (the journal writes in order, and earlier failures
	// were undone already), or else the latest one known to be durable.
	t.seq = t.durableSeq.Load()
	if n := len(t.undo); n > 0 {
		t.seq = t.undo[n-1].seq
	}
	t.log.Error("changes could not be saved and were undone", "from_seq", from, "to_seq", t.lastSeq, "err", err)
	return t.lastSeq
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
