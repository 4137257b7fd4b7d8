package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// A request queued (a lock, a set or a claim, with a wait) waits for its
// grant, takes it up, and leaves the queue however its wait ends, each
// step a transaction of the engine's.

// wait is a request queued for a lock, or for a set of locks.
type wait struct {
	e     *Engine
	names []string // the locks, sorted (a claim's: the pool's members)
	pool  string   // a claim's pool, or ""
	id    int64    // its waiter in each lock's queue
	round int      // the waiter's round this request answers for
	req   Request
	start time.Time // when the request came
	// uncertain says a claim's commit may have gone through unanswered:
	// a waiter then gone from the queue may have been taken up by it.
	uncertain bool
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
			if !w.mayHaveNews(ctx) {
				continue
			}
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
			return nil, fmt.Errorf("%w: %w", ErrKeyBusy, err)
		case endsTheWait(err):
			return nil, err
		case err != nil && ctx.Err() != nil:
			return w.end(ctx, false)
		}
	}
}

// mayHaveNews reports whether a look at w's waiter under the locks'
// transaction may find something new: unless its own rows, read alone,
// show it still waiting in each lock it waited in, as this request's
// round, with no grant. (A grant whose notification was lost shows
// there; the rest of a queue is not read.)
func (w *wait) mayHaveNews(ctx context.Context) bool {
	rows, err := w.e.store.Waiter(ctx, w.id, w.names)
	if err != nil || len(rows) != len(w.names) {
		return true
	}
	for _, q := range rows {
		if q.Granted != nil || q.Round != w.round || !q.Left.IsZero() || q.Removed != "" {
			return true
		}
	}
	return false
}

// endsTheWait reports whether err, from a look at a waiter, is its
// request's answer: its pool was removed or became too small for it, the
// grant it was told of has since ended, or it was taken out of the queue.
func endsTheWait(err error) bool {
	return errors.Is(err, ErrNoPool) || errors.Is(err, ErrPoolTooSmall) || errors.Is(err, ErrGrantEnded) || errors.Is(err, ErrRemoved)
}

// removedError is the answer to a request whose waiter was taken out of
// its queue: why, as the waiter says (Waiter.Removed). It is ErrRemoved.
type removedError string

func (e removedError) Error() string        { return string(e) }
func (e removedError) Is(target error) bool { return target == ErrRemoved }

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
		return nil, fmt.Errorf("%w: %w", ErrKeyBusy, err)
	case endsTheWait(err):
		return nil, err
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
	case timedOut && w.pool != "":
		w.e.metrics.WaitTimedOut()
		return nil, fmt.Errorf("%w: timed out after %v waiting for %d of the pool %q: %s", ErrHeld, w.req.Wait, w.req.Count, w.pool, refusals(got, w.req.Key))
	case timedOut:
		w.e.metrics.WaitTimedOut()
		return nil, fmt.Errorf("%w: timed out after %v waiting: %s", ErrHeld, w.req.Wait, refusals(got, w.req.Key))
	case !clientGone(ctx):
		return nil, ErrClosed
	}
	return nil, ErrClientGone
}

// locate finds w's waiter in the queues of names: the queues it is in,
// and the waiter. A claim's waiter moves with its pool's members
// (SetPool): the locks it is in that names lack are asked for
// (moreLocks), and so are the pool's members when it is in none of
// names.
func (w *wait) locate(tx txn.Tx, names []string) ([]string, txn.Waiter, error) {
	var q txn.Waiter
	var in []string
	for _, name := range names {
		if e, ok := find(tx.Queue(name), w.id); ok {
			q, in = e, append(in, name)
		}
	}
	if w.pool == "" {
		return in, q, nil
	}
	if len(in) > 0 {
		return in, q, needs(tx, q.Set)
	}
	if p, ok := tx.Pool(w.pool); ok {
		return in, q, needs(tx, p.Members)
	}
	return in, q, nil
}

// claim looks at w in its locks' queues: once granted (a set is granted
// whole), it takes the grant up (the waiter leaves the queues, the
// outcome is remembered) and returns the locks as granted. With end, a
// waiter not yet granted leaves, or keeps its place with hold. The locks
// as they are now are returned either way.
func (w *wait) claim(ctx context.Context, end, hold bool) (got map[string]Snapshot, granted bool, err error) {
	var set []string // the locks w waits in, as this look found them
	var removed string
	names, err := w.e.updateNaming(ctx, w.names, txn.Options{Pool: w.pool}, func(tx txn.Tx, names []string) error {
		granted, set, removed = false, nil, ""
		in, q, err := w.locate(tx, names)
		if err != nil {
			return err
		}
		waitsIn := names // the locks w waits for: a claim's pool's members as its waiter says
		if q.Set != nil {
			waitsIn = q.Set
		}
		switch {
		case len(in) == 0, q.Granted == nil && len(in) < len(waitsIn):
			got, granted, err = w.gone(tx, names)
			return err
		case q.Round != w.round:
			return errSuperseded
		case q.Granted != nil:
			granted = true
			got, err = takeUp(tx, in, w.id, w.req)
			return err
		case q.Removed != "":
			removed = q.Removed
			for _, name := range in {
				tx.RemoveWaiter(name, w.id)
			}
			for _, name := range in {
				grantQueue(tx, name)
			}
			return nil
		}
		set = in
		if !end && q.Left.IsZero() {
			return nil
		}
		for _, name := range in {
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
		for _, name := range in {
			grantQueue(tx, name) // whoever queued behind it may now be at the head
		}
		got = snapshots(tx, in)
		return nil
	})
	switch {
	case err != nil:
	case removed != "":
		return nil, false, removedError(removed)
	case set != nil:
		w.names = set // a claim's waiter follows its pool's members
	default:
		w.names = names
	}
	return got, granted, err
}

// gone answers a wait whose waiter is no longer in the queues of names:
// taken up by a claim whose commit went unanswered, or by the same
// request sent again (both remembered its outcome), taken out because
// its pool was removed or became too small for it, or dropped because
// its node was taken for dead.
func (w *wait) gone(tx txn.Tx, names []string) (map[string]Snapshot, bool, error) {
	if o, err := recall(tx, w.req.Idem); o != nil || err != nil {
		if err = stillHeld(tx, names, w.req, o, err); err != nil {
			return nil, false, err
		}
		return o.locks(names), true, nil
	}
	if w.pool != "" {
		p, ok := tx.Pool(w.pool)
		switch {
		case !ok:
			return nil, false, fmt.Errorf("%w: the pool %q was removed while this claim waited for it; %s", ErrNoPool, w.pool, advice.Pools)
		case w.req.Count > len(p.Members):
			return nil, false, poolTooSmall(w.pool, p, w.req.Count)
		}
	}
	want := len(names) // a claim's: its count of them
	if w.req.Count > 0 {
		want = w.req.Count
	}
	if got := heldBy(tx, names, w.req); w.uncertain && len(got) == want {
		return got, true, nil
	}
	return nil, false, txn.ErrDropped
}

// heldBy returns those of names that req's requestor holds with req's
// key.
func heldBy(tx txn.Reader, names []string, req Request) map[string]Snapshot {
	got := map[string]Snapshot{}
	for _, name := range names {
		if s := snapshot(tx, name); s.Key == req.Key {
			if _, holds := s.Holder(req.Requestor); holds {
				got[name] = s
			}
		}
	}
	return got
}

// errSuperseded: a later request with the same Idempotency-Key took the
// waiter over; it will be answered, and this one stands down.
var errSuperseded = errors.New("a later request with the same Idempotency-Key took this one's place in the queue, and will be answered instead")

// taken answers a waiter whose grant it took up, unless its client went
// away meanwhile: then the locks are given back, or a client no one can
// answer holds them for good. (A reply can still be lost on the wire after
// this; leases and Idempotency-Keys cover that.)
func (w *wait) taken(ctx context.Context, got map[string]Snapshot) (map[string]Snapshot, error) {
	if clientGone(ctx) {
		w.giveBack(context.WithoutCancel(ctx))
		return nil, ErrClientGone
	}
	w.e.granted(w.req, got, time.Since(w.start))
	return got, nil
}

// clientGone reports whether the request behind ctx has no client left to
// answer: its context is done, and not because the server is shutting down
// (then the client still hears a 503, or its grant).
func clientGone(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), ErrClosed)
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
			tx.Forget(w.req.Idem.Scope)
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
		_, err := w.e.updateNaming(cctx, w.names, txn.Options{Pool: w.pool}, func(tx txn.Tx, names []string) error {
			in, q, err := w.locate(tx, names)
			if err != nil || len(in) == 0 || q.Round != w.round {
				return err // gone already, never queued, or another request's now
			}
			for _, name := range in {
				tx.RemoveWaiter(name, w.id)
				if q.Granted != nil {
					if next, released, _ := lock.Release(tx.Lock(name), w.req.Key, w.req.Requestor, false); released > 0 {
						tx.Set(name, next)
					}
				}
			}
			for _, name := range in {
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
