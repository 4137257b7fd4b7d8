package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// A lock's queue: its head is granted whatever it can have (grantQueue,
// a step of every change), and a request the engine queued (Acquire with
// a wait) waits for its grant, takes it up, and leaves the queue however
// its wait ends, each step a transaction of the engine's.

// wait is a request queued for a lock, or for a set of locks.
type wait struct {
	e     *engine
	names []string // the locks, sorted (a claim's: the pool's members)
	pool  string   // a claim's pool, or ""
	id    int64    // its waiter in each lock's queue
	round int      // the waiter's round this request answers for
	req   acquireRequest
	start time.Time // when the request came
	// uncertain says a claim's commit may have gone through unanswered:
	// a waiter then gone from the queue may have been taken up by it.
	uncertain bool
}

// grantQueue grants the head of the lock's queue, and the waiters right
// behind it for as long as each is compatible with the holders
// (lock.Compatible): a batch of same-key waiters goes in together. A
// grant waits in the queue until its request takes it up (claim). A
// waiter for several locks is granted them all or none (grantSet), and
// keeps its place meanwhile: no one behind it is granted before it.
func grantQueue(tx txn.Tx, name string) {
	// By index, reading the queue and the lock again each time: grantSet
	// grants in other queues, and they may grant in this one. Grants
	// change waiters in place; none leaves the queue here.
	for i := 0; i < len(tx.Queue(name)); i++ {
		w := tx.Queue(name)[i]
		if !w.Waiting() {
			continue // a kept place, or a grant not yet taken up
		}
		l := tx.Lock(name)
		if !lock.Compatible(l, w.Req) {
			return
		}
		if len(w.Set) > 0 {
			if !grantSet(tx, w) {
				return
			}
			continue
		}
		l = lock.Give(l, w.Req, tx.Now(), tx.NextToken)
		tx.Set(name, l)
		w.Granted = &l
		tx.PutWaiter(name, w)
	}
}

// grantSet grants w, a waiter for several locks, every one of them, when
// it is at the head of each one's queue (no one waiting before it) and
// compatible with each one's holders; it reports whether it did. A
// transaction that did not name them all cannot tell: it wakes w, whose
// own request looks, naming them all.
func grantSet(tx txn.Tx, w txn.Waiter) bool {
	for _, name := range w.Set {
		if !tx.Named(name) {
			tx.Wake(w.ID)
			return false
		}
	}
	if w.Count > 0 {
		return grantClaim(tx, w)
	}
	for _, name := range w.Set {
		if !lock.Compatible(tx.Lock(name), w.Req) {
			return false
		}
		for _, q := range tx.Queue(name) {
			if q.ID == w.ID {
				break
			}
			if q.Waiting() {
				return false
			}
		}
	}
	for _, name := range w.Set {
		l := lock.Give(tx.Lock(name), w.Req, tx.Now(), tx.NextToken)
		tx.Set(name, l)
		q, _ := find(tx.Queue(name), w.ID)
		q.Granted = &l
		tx.PutWaiter(name, q)
	}
	for _, name := range w.Set {
		grantQueue(tx, name) // same-key waiters behind it, in its other queues
	}
	return true
}

// grantClaim grants w, a claim on a pool, w.Count of the pool's members
// (w.Set) that are free and where it is at the head of the queue, the
// ones claimed least recently (lock.Pool.Pick), and takes it out of the
// other members' queues. A transaction that did not name the pool wakes
// w instead. It reports whether w was granted.
func grantClaim(tx txn.Tx, w txn.Waiter) bool {
	if !tx.NamedPool(w.Pool) {
		tx.Wake(w.ID)
		return false
	}
	p, ok := tx.Pool(w.Pool)
	if !ok {
		tx.Wake(w.ID) // the pool is gone: its request says so
		return false
	}
	var free []string
	for _, name := range w.Set {
		if tx.Lock(name).Free() && atHead(tx.Queue(name), w.ID) {
			free = append(free, name)
		}
	}
	chosen := p.Pick(free, w.Count)
	if chosen == nil {
		return false
	}
	// Every change to w first, then the queues it left: granting there
	// may come back to w, which must be seen granted by then.
	for _, name := range w.Set {
		if !slices.Contains(chosen, name) {
			tx.RemoveWaiter(name, w.ID)
			continue
		}
		l := lock.Give(tx.Lock(name), w.Req, tx.Now(), tx.NextToken)
		tx.Set(name, l)
		q, _ := find(tx.Queue(name), w.ID)
		q.Granted = &l
		tx.PutWaiter(name, q)
	}
	tx.SetPool(w.Pool, p.Claim(chosen, tx.Now()))
	for _, name := range w.Set {
		if !slices.Contains(chosen, name) {
			grantQueue(tx, name) // whoever waited behind it there
		}
	}
	return true
}

// atHead reports whether no one waits before waiter id in queue.
func atHead(queue []txn.Waiter, id int64) bool {
	for _, q := range queue {
		if q.ID == id {
			return true
		}
		if q.Waiting() {
			return false
		}
	}
	return false
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

// enqueue puts req at the back of the queue of each lock in names, as one
// waiter, and returns it.
func enqueue(tx txn.Tx, names []string, req acquireRequest) txn.Waiter {
	w := txn.Waiter{ID: tx.NewWaiterID(), Req: req.Request, Since: tx.Now(), Idem: req.Idem.scopeOrNone()}
	if len(names) > 1 {
		w.Set = names
	}
	for _, name := range names {
		tx.PutWaiter(name, w)
	}
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
func takeOver(tx txn.Tx, names []string, p txn.Waiter, req acquireRequest) (lock.Verdict, txn.Waiter, map[string]Snapshot, error) {
	sameLocks := len(names) == 1 && p.Set == nil || slices.Equal(p.Set, names)
	if p.Req != req.Request || !sameLocks {
		return lock.Refuse, p, nil, fmt.Errorf("%w: it is in the queue for another request (key %q, requestor %q); send a new key with a new request",
			errKeyReused, p.Req.Key, p.Req.Requestor)
	}
	if p.Granted != nil {
		got, err := takeUp(tx, names, p.ID, req)
		return lock.Grant, p, got, err
	}
	if req.Wait == 0 {
		return lock.Refuse, p, nil, fmt.Errorf("%w: a request with this Idempotency-Key has waited for %q since %s and is still in the queue; send this one with ?wait= to take its place, or send it again once that one is answered",
			errKeyBusy, strings.Join(names, ", "), p.Since.Format(time.RFC3339))
	}
	for _, name := range names {
		q, _ := find(tx.Queue(name), p.ID)
		q.Round = p.Round + 1
		q.Left, q.Owner = time.Time{}, "" // waiting again, for this node's request
		tx.PutWaiter(name, q)
	}
	p.Round++
	return lock.Queue, p, nil, nil
}

// takeUp takes the grant of waiter id in each lock of names up: it leaves
// the queues, and the locks as granted to it are answered and remembered.
func takeUp(tx txn.Tx, names []string, id int64, req acquireRequest) (map[string]Snapshot, error) {
	got := make(map[string]Snapshot, len(names))
	for _, name := range names {
		q, _ := find(tx.Queue(name), id)
		tx.RemoveWaiter(name, id)
		s := snapshot(tx, name)
		if q.Granted != nil {
			s.Lock = q.Granted.Clone()
		}
		got[name] = s
	}
	return got, remember(tx, req.Idem, outcomeOf(got, nil, nil, req.Count > 0))
}

// stillHeld passes on a remembered grant only while its hold lasts: a
// client that sent again long after must not take a hold that has since
// ended (its lease ran out, someone forced it free) for a live one.
func stillHeld(tx txn.Tx, names []string, req acquireRequest, replay *outcome, err error) error {
	if err != nil || replay == nil {
		return err
	}
	for name, was := range replay.locks(names) {
		now := snapshot(tx, name)
		if _, holds := now.Holder(req.Requestor); holds && now.Token == was.Token && now.Key == was.Key {
			continue
		}
		return fmt.Errorf("%w: this request (its Idempotency-Key) was granted %q with token %d at %s, but that hold has since ended (its lease ran out, or it was released or forced free); send a new request with a new Idempotency-Key to take the lock again",
			errGrantEnded, name, was.Token, was.AcquiredAt.Format(time.RFC3339))
	}
	return nil
}

// run waits for w to be granted, until w.req.Wait runs out or ctx
// is done. The store tells of a grant; a store whose notifications can be
// lost is also looked at every Recheck. A store that goes away meanwhile
// does not end the wait: only a wait that ends with it still away is an
// error.
func (w *wait) run(ctx context.Context, woken <-chan struct{}) (map[string]Snapshot, error) {
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
		got, granted, err := w.claim(cctx, false, false)
		cancel()
		w.uncertain = w.uncertain || errors.Is(err, txn.ErrUncertain)
		switch {
		case granted:
			return w.taken(ctx, got)
		case errors.Is(err, txn.ErrDropped):
			return nil, w.e.fail(w.names[0], err)
		case errors.Is(err, errSuperseded):
			return nil, fmt.Errorf("%w: %w", errKeyBusy, err)
		case err != nil && ctx.Err() != nil:
			return w.end(ctx, false)
		}
	}
}

// end ends the wait of w, which ran out (timedOut) or whose context
// is done, under the locks' transaction, so that no grant can come after:
// a grant that came meanwhile is taken, a waiter with an Idempotency-Key
// whose wait ran out keeps its place for placeHold, any other leaves.
func (w *wait) end(ctx context.Context, timedOut bool) (map[string]Snapshot, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	got, granted, err := w.claim(cctx, true, timedOut && w.req.Idem != nil)
	switch {
	case errors.Is(err, txn.ErrDropped):
		return nil, w.e.fail(w.names[0], err)
	case errors.Is(err, errSuperseded):
		return nil, fmt.Errorf("%w: %w", errKeyBusy, err)
	case err != nil:
		// The store is away as the wait ends: the waiter must not stay
		// queued with no one to answer it once it is back.
		go w.takeOut(context.WithoutCancel(ctx))
		if errors.Is(err, txn.ErrUnavailable) {
			err = fmt.Errorf("%w: the wait ended while the database could not be reached: %w", txn.ErrUncertain, err)
		}
		return nil, w.e.fail(w.names[0], err)
	case granted:
		return w.taken(ctx, got)
	case timedOut:
		w.e.metrics.WaitTimedOut()
		return nil, fmt.Errorf("%w: timed out after %v waiting: %s", errLockHeld, w.req.Wait, refusals(got, w.req.Key))
	case !clientGone(ctx):
		return nil, errShuttingDown
	}
	return nil, errClientGone
}

// claim looks at w in its locks' queues: once granted (a set is granted
// whole), it takes the grant up (the waiter leaves the queues, the
// outcome is remembered) and returns the locks as granted. With end, a
// waiter not yet granted leaves, or keeps its place with hold. The locks
// as they are now are returned either way.
func (w *wait) claim(ctx context.Context, end, hold bool) (got map[string]Snapshot, granted bool, err error) {
	err = w.e.update(ctx, w.names, txn.Options{Pool: w.pool}, func(tx txn.Tx) error {
		granted = false
		var q txn.Waiter
		var in []string // the queues it is in: all of its locks, or a claim's grant
		for _, name := range w.names {
			if e, ok := find(tx.Queue(name), w.id); ok {
				q, in = e, append(in, name)
			}
		}
		switch {
		case len(in) == 0, q.Granted == nil && len(in) < len(w.names):
			got, granted, err = w.gone(tx)
			return err
		case q.Round != w.round:
			return errSuperseded
		case q.Granted != nil:
			granted = true
			got, err = takeUp(tx, in, w.id, w.req)
			return err
		case !end && q.Left.IsZero():
			return nil
		}
		for _, name := range w.names {
			q, _ := find(tx.Queue(name), w.id)
			switch {
			case !end:
				q.Left = time.Time{} // an earlier round's wait ended while this one waits
				tx.PutWaiter(name, q)
			case hold:
				q.Left = tx.Now()
				tx.PutWaiter(name, q)
			default:
				tx.RemoveWaiter(name, w.id)
			}
		}
		for _, name := range w.names {
			grantQueue(tx, name) // whoever queued behind it may now be at the head
		}
		got = snapshots(tx, w.names)
		return nil
	})
	return got, granted, err
}

// gone answers a wait whose waiter is no longer in the queue: taken up by
// a claim whose commit went unanswered, or by the same request sent again
// (both remembered its outcome), or dropped because its node was taken
// for dead.
func (w *wait) gone(tx txn.Tx) (map[string]Snapshot, bool, error) {
	if o, err := recall(tx, w.req.Idem); o != nil || err != nil {
		if err != nil {
			return nil, false, err
		}
		return o.locks(w.names), true, nil
	}
	if got := snapshots(tx, w.names); w.uncertain && holdsAll(got, w.req) {
		return got, true, nil
	}
	return nil, false, txn.ErrDropped
}

// holdsAll reports whether req's requestor holds every lock in got with
// req's key.
func holdsAll(got map[string]Snapshot, req acquireRequest) bool {
	for _, s := range got {
		if _, holds := s.Holder(req.Requestor); !holds || s.Key != req.Key {
			return false
		}
	}
	return true
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
// away meanwhile: then the locks are given back, or a client no one can
// answer holds them for good. (A reply can still be lost on the wire after
// this; leases and Idempotency-Keys cover that.)
func (w *wait) taken(ctx context.Context, got map[string]Snapshot) (map[string]Snapshot, error) {
	if clientGone(ctx) {
		w.giveBack(context.WithoutCancel(ctx))
		return nil, errClientGone
	}
	w.e.granted(w.names, w.req, got, time.Since(w.start))
	return got, nil
}

// clientGone reports whether the request behind ctx has no client left to
// answer: its context is done, and not because the server is shutting down
// (then the client still hears a 503, or its grant).
func clientGone(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), errShuttingDown)
}

// giveBack releases the counts granted to w, whose client went away,
// and forgets the grant's outcome: the client never heard of it.
func (w *wait) giveBack(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, changeTimeout)
	defer cancel()
	err := w.e.update(ctx, w.names, txn.Options{}, func(tx txn.Tx) error {
		for _, name := range w.names {
			if next, released, _ := lock.Release(tx.Lock(name), w.req.Key, w.req.Requestor, false); released > 0 {
				tx.Set(name, next)
				grantQueue(tx, name)
			}
		}
		if w.req.Idem != nil {
			tx.Forget(w.req.Idem.scope)
		}
		return nil
	})
	locks := strings.Join(w.names, ",")
	if err != nil {
		w.e.log.Error("giving back a lock granted to a client that went away", "lock", locks, "requestor", w.req.Requestor, "err", err)
		return
	}
	w.e.log.Info("lock given back: its waiter went away as it was granted", "lock", locks, "requestor", w.req.Requestor)
}

// takeOut takes w out of its queues, giving back its grant if it
// had one, trying for a while: it is there for a request that will not
// take it up (the commit that queued it was in doubt, or the store was
// away as its wait ended), and would otherwise be granted to no one.
func (w *wait) takeOut(ctx context.Context) {
	for try := range takeOutTries {
		cctx, cancel := context.WithTimeout(ctx, changeTimeout)
		err := w.e.update(cctx, w.names, txn.Options{}, func(tx txn.Tx) error {
			for _, name := range w.names {
				q, ok := find(tx.Queue(name), w.id)
				if !ok || q.Round != w.round {
					continue // gone already, never queued, or another request's now
				}
				tx.RemoveWaiter(name, w.id)
				if q.Granted != nil {
					if next, released, _ := lock.Release(tx.Lock(name), w.req.Key, w.req.Requestor, false); released > 0 {
						tx.Set(name, next)
					}
				}
			}
			for _, name := range w.names {
				grantQueue(tx, name)
			}
			return nil
		})
		cancel()
		if err == nil {
			return
		}
		time.Sleep(time.Duration(try+1) * 100 * time.Millisecond)
	}
	w.e.log.Error("a waiter could not be taken out of the queue; a lease, if it has one, will free what it is granted", "lock", strings.Join(w.names, ","), "requestor", w.req.Requestor)
}

// refusal says why a request with key cannot have the lock called name,
// whose state is s.
func refusal(name string, s Snapshot, key string) string {
	if !s.Free() && s.Key == key && s.Full() {
		msg := fmt.Sprintf("%q is held with key %q by %s, as many holders as its limit of %d allows", name, key, s.HoldersString(), s.Limit)
		if n := len(s.Waiting); n > 0 {
			msg += fmt.Sprintf(", and %s waiting for it", plural(n, "request is", "requests are"))
		}
		return msg
	}
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

// limitText says a lock's limit: "3 holders", or "none".
func limitText(limit int) string {
	if limit == 0 {
		return "none"
	}
	return plural(limit, "holder", "holders")
}

// plural returns "1 request", "2 requests" and so on.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
