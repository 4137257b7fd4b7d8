package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

// Waiting for a lock: the queue's waiters, how a wait ends (granted, timed
// out, or its client gone), and the places kept for clients that wait in
// rounds.

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
			waited := time.Since(w.since)
			t.metrics.Acquired(waited, true)
			t.log.Info("lock granted", "lock", w.name, "key", w.req.Key, "holder", w.req.Requestor, "token", w.snap.Token,
				"waited", waited.Round(time.Millisecond))
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

// waiting counts the waiters in the queue of the lock called name, and
// drops the placeholders whose time is up. Callers hold t.mu.
func (t *table) waiting(name string) int {
	queue := t.queues[name]
	if len(queue) == 0 {
		return 0 // most locks: nothing to scan or copy
	}
	now, n := t.now(), 0
	expired := func(w *waiter) bool { return !w.left.IsZero() && now.Sub(w.left) > placeHold }
	if slices.ContainsFunc(queue, expired) {
		queue = slices.DeleteFunc(slices.Clone(queue), expired)
		t.setQueue(name, queue)
	}
	for _, w := range queue {
		if w.left.IsZero() {
			n++
		}
	}
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
