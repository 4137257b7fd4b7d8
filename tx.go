package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Changes to the lock table: each one is a tx, queued in the journal and
// undone if it cannot be written.

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

// tx is one change to the table: it remembers what it replaced, so that it
// can be undone if it cannot be written. Callers hold t.mu from begin to
// commit.
type tx struct {
	t         *table
	oldLocks  map[string]Lock
	lastToken uint64
	granted   []*waiter
}

func (t *table) begin() *tx {
	return &tx{t: t, oldLocks: map[string]Lock{}, lastToken: t.lastToken}
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
		*l = Lock{Key: req.Key, Token: x.t.lastToken, AcquiredAt: now}
	}
	h, ok := l.holder(req.Requestor)
	if !ok {
		h = Holder{Name: req.Requestor, Since: now}
	}
	h.Count++
	if req.Note != "" {
		h.Note = req.Note
	}
	if req.TTL > 0 {
		h.ExpiresAt = now.Add(req.TTL)
	}
	l.setHolder(h)
}

// grantWaiters grants the head of the lock's queue, and the waiters right
// behind it, for as long as each is compatible with the holders. The queue
// is not part of the durable state: a grant that cannot be written fails
// its waiter, which then leaves.
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
	t.setQueue(name, slices.Clone(queue[n:]))
}

// commit queues the change in the journal under a new seq, which the table
// now shows, and tells the granted waiters. If the journal cannot take it
// the change is undone at once.
func (x *tx) commit() error {
	t := x.t
	if len(x.oldLocks) == 0 {
		return nil // nothing changed
	}
	rec := record{Seq: t.lastSeq + 1, LastToken: t.lastToken, Locks: make(map[string]*Lock, len(x.oldLocks))}
	for name := range x.oldLocks {
		if l, ok := t.locks[name]; ok {
			rec.Locks[name] = &l
		} else {
			rec.Locks[name] = nil
		}
	}
	if err := t.journal.append(rec); err != nil {
		for name, l := range x.oldLocks {
			t.put(name, l)
		}
		t.lastToken = x.lastToken
		err = fmt.Errorf("%w: %w", errSave, err)
		for _, w := range x.granted {
			w.err = err
			close(w.done)
		}
		return err
	}
	t.lastSeq++
	t.seq = t.lastSeq
	durable := t.journal.durableSeq()
	for len(t.undo) > 0 && t.undo[0].seq <= durable {
		t.undo = t.undo[1:]
	}
	t.undo = append(t.undo, undo{seq: t.seq, oldLocks: x.oldLocks, lastToken: x.lastToken})

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

// rollback undoes every change from seq on: they could not be written, and
// no client has heard of them. The journal calls it.
func (t *table) rollback(from uint64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.journal.discard(from, t.lastSeq, err)
	for len(t.undo) > 0 && t.undo[len(t.undo)-1].seq >= from {
		u := t.undo[len(t.undo)-1]
		for name, l := range u.oldLocks {
			t.put(name, l)
		}
		t.lastToken = u.lastToken
		t.undo = t.undo[:len(t.undo)-1]
	}
	t.seq = t.journal.durableSeq()
	t.log.Error("changes could not be saved and were undone", "from_seq", from, "to_seq", t.lastSeq, "err", err)
}

// fold writes the table to the state file as a snapshot, then drops the
// journal records that it holds. The table is copied under its mutex, a
// quick copy of the map, and encoded without it.
func (t *table) fold() error {
	st, seq := t.copyState()
	if err := t.journal.wait(seq); err != nil {
		return err
	}
	n, err := t.store.save(st, seq)
	if err != nil {
		return fmt.Errorf("writing a snapshot: %w", err)
	}
	t.journal.setFoldAt(n)
	return t.journal.compact(seq)
}

// foldLoop folds the journal into the state file whenever it has grown
// enough, until ctx is done.
func (t *table) foldLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.journal.full:
			start := time.Now()
			if err := t.fold(); err != nil {
				t.log.Error("folding the journal into the state file", "err", err)
				continue
			}
			t.log.Info("journal folded into the state file", "locks", t.Len(), "duration", time.Since(start))
		}
	}
}

// close folds everything into the state file and removes the journal, so
// that at rest the state file alone holds the table. Callers make sure no
// change is under way.
func (t *table) close() error {
	if err := t.fold(); err != nil {
		return errors.Join(err, t.journal.close(false))
	}
	return t.journal.close(true)
}
