package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

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
	c := Change{Seq: t.lastSeq + 1, LastToken: t.lastToken, Locks: make(map[string]*Lock, len(x.oldLocks)), Forget: x.forgets}
	for _, w := range x.granted {
		x.remember(w.name, w.req.Idem, outcome{})
	}
	remembered, err := x.outcomes()
	if err != nil {
		x.undo()
		return fmt.Errorf("%w: %w", errSave, err)
	}
	c.Remember = remembered
	for name := range x.oldLocks {
		if l, ok := t.locks[name]; ok {
			c.Locks[name] = &l
		} else {
			c.Locks[name] = nil
		}
	}
	if err := t.store.Append(c); err != nil {
		x.undo()
		if !errors.Is(err, errShuttingDown) {
			err = fmt.Errorf("%w: %w", errSave, err)
		}
		for _, w := range x.granted {
			w.err = err
			close(w.done)
		}
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
	for _, e := range remembered {
		t.requests.Put(e)
	}
	durable := t.durableSeq.Load()
	for len(t.undo) > 0 && t.undo[0].seq <= durable {
		t.undo = t.undo[1:]
	}
	t.undo = append(t.undo, undo{seq: t.seq, oldLocks: x.oldLocks, lastToken: x.lastToken, remembered: remembered, forgotten: forgotten})
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
		w.granted, w.snap, w.seq = true, snap, t.seq
		close(w.done)
	}
	return nil
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
