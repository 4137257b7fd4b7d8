package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// A lock's queue: its head is granted whatever it can have (grantQueue,
// a step of every change), and a request the engine queued (Acquire with
// a wait) waits for its grant, takes it up, and leaves the queue however
// its wait ends, each step a transaction of the engine's.

// wait is a request queued for a lock.
type wait struct {
	e     *engine
	name  string // the lock
	id    int64  // its waiter in the lock's queue
	round int    // the waiter's round this request answers for
	req   acquireRequest
	start time.Time // when the request came
	// uncertain says a claim's commit may have gone through unanswered:
	// a waiter then gone from the queue may have been taken up by it.
	uncertain bool
}

// grantQueue grants the head of the lock's queue, and the waiters right
// behind it for as long as each is compatible with the holders
// (lock.Compatible): a batch of same-key waiters goes in together. A
// grant waits in the queue until its request takes it up (claim).
func grantQueue(tx txn.Tx, name string) {
	l := tx.Lock(name)
	var granted []txn.Waiter
	for _, w := range tx.Queue(name) {
		if !w.Waiting() {
			continue // a kept place, or a grant not yet taken up
		}
		if !lock.Compatible(l, w.Req.Key) {
			break
		}
		l = lock.Give(l, w.Req, tx.Now(), tx.NextToken)
		granted = append(granted, w)
	}
	if len(granted) == 0 {
		return
	}
	tx.Set(name, l)
	for _, w := range granted {
		w.Granted = &l
		tx.PutWaiter(name, w)
	}
}

// waiting counts the waiters of queue that wait to be granted.
func waiting(queue []txn.Waiter) int {
	n := 0
	for _, w := range queue {
		if w.Waiting() {
			n++
		}
	}
	return n
}

// enqueue puts req at the back of the lock's queue and returns its
// waiter.
func enqueue(tx txn.Tx, name string, req acquireRequest) txn.Waiter {
	w := txn.Waiter{ID: tx.NewWaiterID(), Req: req.Request, Since: tx.Now(), Idem: req.Idem.scopeOrNone()}
	tx.PutWaiter(name, w)
	return w
}

// findIdem returns the waiter of queue that a request with idem's key
// left, if any.
func findIdem(queue []txn.Waiter, idem *idemRequest) (txn.Waiter, bool) {
	if idem == nil {
		return txn.Waiter{}, false
	}
	for _, w := range queue {
		if w.Idem == idem.scope && !w.Abandoned {
			return w, true
		}
	}
	return txn.Waiter{}, false
}

// takeOver answers req, sent again with the Idempotency-Key of waiter p
// (same request: recall checked the fingerprint of an answered one; an
// unanswered one is checked here). A grant p has not taken up is taken up
// now; a waiting p, or the place it kept, is taken over: req waits in
// its place, and the earlier request, if still there, stands down.
func takeOver(tx txn.Tx, name string, p txn.Waiter, req acquireRequest) (lock.Verdict, txn.Waiter, Snapshot, error) {
	if p.Req != req.Request {
		return lock.Refuse, p, Snapshot{}, fmt.Errorf("%w: it is in the queue for another request (key %q, requestor %q); send a new key with a new request",
			errKeyReused, p.Req.Key, p.Req.Requestor)
	}
	if p.Granted != nil {
		tx.RemoveWaiter(name, p.ID)
		s := snapshot(tx, name)
		s.Lock = p.Granted.Clone()
		return lock.Grant, p, s, remember(tx, req.Idem, outcome{Lock: s})
	}
	if req.Wait == 0 {
		return lock.Refuse, p, Snapshot{}, fmt.Errorf("%w: a request with this Idempotency-Key has waited for %q since %s and is still in its queue; send this one with ?wait= to take its place, or send it again once that one is answered",
			errKeyBusy, name, p.Since.Format(time.RFC3339))
	}
	p.Round++
	p.Left, p.Owner = time.Time{}, "" // waiting again, for this node's request
	tx.PutWaiter(name, p)
	return lock.Queue, p, Snapshot{}, nil
}

// stillHeld passes on a remembered grant only while its hold lasts: a
// client that sent again long after must not take a hold that has since
// ended (its lease ran out, someone forced it free) for a live one.
func stillHeld(tx txn.Tx, name string, req acquireRequest, replay *outcome, err error) error {
	if err != nil || replay == nil {
		return err
	}
	was := replay.Lock
	now := snapshot(tx, name)
	if _, holds := now.Holder(req.Requestor); holds && now.Token == was.Token && now.Key == was.Key {
		return nil
	}
	return fmt.Errorf("%w: this request (its Idempotency-Key) was granted %q with token %d at %s, but that hold has since ended (its lease ran out, or it was released or forced free); send a new request with a new Idempotency-Key to take the lock again",
		errGrantEnded, name, was.Token, was.AcquiredAt.Format(time.RFC3339))
}

// run waits for w to be granted, until w.req.Wait runs out or ctx
// is done. The store tells of a grant; a store whose notifications can be
// lost is also looked at every Recheck. A store that goes away meanwhile
// does not end the wait: only a wait that ends with it still away is an
// error.
func (w *wait) run(ctx context.Context, woken <-chan struct{}) (Snapshot, error) {
	timer := time.NewTimer(w.req.Wait)
	defer timer.Stop()
	var tick <-chan time.Time
	if d := w.e.store.Recheck(); d > 0 {
		t := time.NewTicker(d)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-woken:
		case <-tick:
		case <-timer.C:
			return w.end(ctx, true)
		case <-ctx.Done():
			return w.end(ctx, false)
		}
		// A claim runs to its end whatever the client does, so that a
		// grant it takes is never lost on the way: given back in taken
		// if the client has left.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
		s, granted, err := w.claim(cctx, false, false)
		cancel()
		w.uncertain = w.uncertain || errors.Is(err, txn.ErrUncertain)
		switch {
		case granted:
			return w.taken(ctx, s)
		case errors.Is(err, txn.ErrDropped):
			return Snapshot{}, w.e.fail(w.name, err)
		case errors.Is(err, errSuperseded):
			return Snapshot{}, fmt.Errorf("%w: %w", errKeyBusy, err)
		case err != nil && ctx.Err() != nil:
			return w.end(ctx, false)
		}
	}
}

// end ends the wait of w, which ran out (timedOut) or whose context
// is done, under the lock's transaction, so that no grant can come after:
// a grant that came meanwhile is taken, a waiter with an Idempotency-Key
// whose wait ran out keeps its place for placeHold, any other leaves.
func (w *wait) end(ctx context.Context, timedOut bool) (Snapshot, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	s, granted, err := w.claim(cctx, true, timedOut && w.req.Idem != nil)
	switch {
	case errors.Is(err, txn.ErrDropped):
		return Snapshot{}, w.e.fail(w.name, err)
	case errors.Is(err, errSuperseded):
		return Snapshot{}, fmt.Errorf("%w: %w", errKeyBusy, err)
	case err != nil:
		// The store is away as the wait ends: the waiter must not stay
		// queued with no one to answer it once it is back.
		go w.takeOut(context.WithoutCancel(ctx))
		if errors.Is(err, txn.ErrUnavailable) {
			err = fmt.Errorf("%w: the wait ended while the database could not be reached: %w", txn.ErrUncertain, err)
		}
		return Snapshot{}, w.e.fail(w.name, err)
	case granted:
		return w.taken(ctx, s)
	case timedOut:
		w.e.metrics.WaitTimedOut()
		return Snapshot{}, fmt.Errorf("%w: timed out after %v waiting: %s", errLockHeld, w.req.Wait, refusal(w.name, s, w.req.Key))
	case !clientGone(ctx):
		return Snapshot{}, errShuttingDown
	}
	return Snapshot{}, errClientGone
}

// claim looks at w in its lock's queue: once granted, it
// takes the grant up (the waiter leaves the queue, the outcome is
// remembered) and returns the lock as granted. With end, a waiter not yet
// granted leaves, or keeps its place with hold. The lock as it is now is
// returned either way.
func (w *wait) claim(ctx context.Context, end, hold bool) (s Snapshot, granted bool, err error) {
	err = w.e.update(ctx, []string{w.name}, txn.Options{}, func(tx txn.Tx) error {
		granted = false
		q, ok := find(tx.Queue(w.name), w.id)
		switch {
		case !ok:
			s, granted, err = w.gone(tx)
			return err
		case q.Round != w.round:
			return errSuperseded
		case q.Granted != nil:
			tx.RemoveWaiter(w.name, w.id)
			granted = true
			s = snapshot(tx, w.name)
			s.Lock = q.Granted.Clone()
			return remember(tx, w.req.Idem, outcome{Lock: s})
		case !end && !q.Left.IsZero():
			q.Left = time.Time{} // an earlier round's wait ended while this one waits
			tx.PutWaiter(w.name, q)
			return nil
		case !end:
			return nil
		case hold:
			q.Left = tx.Now()
			tx.PutWaiter(w.name, q)
		default:
			tx.RemoveWaiter(w.name, w.id)
		}
		grantQueue(tx, w.name) // whoever queued behind it may now be at the head
		s = snapshot(tx, w.name)
		return nil
	})
	return s, granted, err
}

// gone answers a wait whose waiter is no longer in the queue: taken up by
// a claim whose commit went unanswered, or by the same request sent again
// (both remembered its outcome), or dropped because its node was taken
// for dead.
func (w *wait) gone(tx txn.Tx) (Snapshot, bool, error) {
	if o, err := recall(tx, w.req.Idem); o != nil || err != nil {
		if err != nil {
			return Snapshot{}, false, err
		}
		return o.Lock, true, nil
	}
	if s := snapshot(tx, w.name); w.uncertain && s.Key == w.req.Key {
		if _, holds := s.Holder(w.req.Requestor); holds {
			return s, true, nil
		}
	}
	return Snapshot{}, false, txn.ErrDropped
}

// errSuperseded: a later request with the same Idempotency-Key took the
// waiter over; it will be answered, and this one stands down.
var errSuperseded = errors.New("a later request with the same Idempotency-Key took this one's place in the queue, and will be answered instead")

// find returns the waiter with id in queue.
func find(queue []txn.Waiter, id int64) (txn.Waiter, bool) {
	for _, w := range queue {
		if w.ID == id {
			return w, true
		}
	}
	return txn.Waiter{}, false
}

// taken answers a waiter whose grant it took up, unless its client went
// away meanwhile: then the lock is given back, or a client no one can
// answer holds it for good. (A reply can still be lost on the wire after
// this; leases and Idempotency-Keys cover that.)
func (w *wait) taken(ctx context.Context, s Snapshot) (Snapshot, error) {
	if clientGone(ctx) {
		w.giveBack(context.WithoutCancel(ctx))
		return Snapshot{}, errClientGone
	}
	w.e.granted(w.name, w.req, s.Token, time.Since(w.start))
	return s, nil
}

// clientGone reports whether the request behind ctx has no client left to
// answer: its context is done, and not because the server is shutting down
// (then the client still hears a 503, or its grant).
func clientGone(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), errShuttingDown)
}

// giveBack releases the count granted to w, whose client went away,
// and forgets the grant's outcome: the client never heard of it.
func (w *wait) giveBack(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, changeTimeout)
	defer cancel()
	err := w.e.update(ctx, []string{w.name}, txn.Options{}, func(tx txn.Tx) error {
		if next, released, _ := lock.Release(tx.Lock(w.name), w.req.Key, w.req.Requestor, false); released > 0 {
			tx.Set(w.name, next)
			grantQueue(tx, w.name)
		}
		if w.req.Idem != nil {
			tx.Forget(w.req.Idem.scope)
		}
		return nil
	})
	if err != nil {
		w.e.log.Error("giving back a lock granted to a client that went away", "lock", w.name, "requestor", w.req.Requestor, "err", err)
		return
	}
	w.e.log.Info("lock given back: its waiter went away as it was granted", "lock", w.name, "requestor", w.req.Requestor)
}

// takeOut takes w out of its queue, giving back its grant if it
// had one, trying for a while: it is there for a request that will not
// take it up (the commit that queued it was in doubt, or the store was
// away as its wait ended), and would otherwise be granted to no one.
func (w *wait) takeOut(ctx context.Context) {
	for try := range takeOutTries {
		cctx, cancel := context.WithTimeout(ctx, changeTimeout)
		err := w.e.update(cctx, []string{w.name}, txn.Options{}, func(tx txn.Tx) error {
			q, ok := find(tx.Queue(w.name), w.id)
			if !ok || q.Round != w.round {
				return nil // gone already, never queued, or another request's now
			}
			tx.RemoveWaiter(w.name, w.id)
			if q.Granted != nil {
				if next, released, _ := lock.Release(tx.Lock(w.name), w.req.Key, w.req.Requestor, false); released > 0 {
					tx.Set(w.name, next)
				}
			}
			grantQueue(tx, w.name)
			return nil
		})
		cancel()
		if err == nil {
			return
		}
		time.Sleep(time.Duration(try+1) * 100 * time.Millisecond)
	}
	w.e.log.Error("a waiter could not be taken out of the queue; a lease, if it has one, will free what it is granted", "lock", w.name, "requestor", w.req.Requestor)
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
