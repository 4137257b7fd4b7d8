package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/advice"
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
		g := l.Only(w.Req.Requestor)
		w.Granted = &g
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
		g := l.Only(w.Req.Requestor)
		q.Granted = &g
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
		g := l.Only(w.Req.Requestor)
		q.Granted = &g
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

// findIdem returns the waiter that a request with idem's key left in
// the queue of one of names, if any.
func findIdem(tx txn.Reader, names []string, idem *idemRequest) (txn.Waiter, bool) {
	if idem == nil {
		return txn.Waiter{}, false
	}
	for _, name := range names {
		for _, w := range tx.Queue(name) {
			if w.Idem == idem.scope && !w.Abandoned {
				return w, true
			}
		}
	}
	return txn.Waiter{}, false
}

// sameRequest reports whether req, over names, is the request that left
// waiter p: the same body (the fingerprint of an answered request is
// checked by recall; an unanswered one's here), the same locks, and for
// a claim the same count.
func sameRequest(p txn.Waiter, names []string, req acquireRequest) bool {
	sameLocks := len(names) == 1 && p.Set == nil || slices.Equal(p.Set, names)
	return sameLocks && p.Req == req.Request && p.Count == req.Count
}

// queuesOf returns those of names whose queue holds the waiter with id:
// all of them while it waits, a claim's granted members once granted.
func queuesOf(tx txn.Reader, names []string, id int64) []string {
	var in []string
	for _, name := range names {
		if _, ok := find(tx.Queue(name), id); ok {
			in = append(in, name)
		}
	}
	return in
}

// takeOver answers req, sent again with the Idempotency-Key of waiter p.
// A grant p has not taken up is taken up now (Grant, with the locks); a
// waiting p, or the place it kept, is taken over (Queue): req waits in
// its place, and the earlier request, if still there, stands down.
func takeOver(tx txn.Tx, names []string, p txn.Waiter, req acquireRequest) (lock.Verdict, map[string]Snapshot, error) {
	if !sameRequest(p, names, req) {
		return lock.Refuse, nil, fmt.Errorf("%w: it is in the queue for another request (key %q, requestor %q); send a new key with a new request",
			errKeyReused, p.Req.Key, p.Req.Requestor)
	}
	in := queuesOf(tx, names, p.ID)
	if p.Granted != nil {
		got, err := takeUp(tx, in, p.ID, req)
		return lock.Grant, got, err
	}
	if req.Wait == 0 {
		return lock.Refuse, nil, fmt.Errorf("%w: a request with this Idempotency-Key has waited for %s since %s and is still in the queue; send this one with ?wait= to take its place, or send it again once that one is answered",
			errKeyBusy, waitedFor(names, p), p.Since.Format(time.RFC3339))
	}
	for _, name := range in {
		q, _ := find(tx.Queue(name), p.ID)
		q.Round = p.Round + 1
		q.Left, q.Owner = time.Time{}, "" // waiting again, for this node's request
		tx.PutWaiter(name, q)
	}
	return lock.Queue, nil, nil
}

// waitedFor names what waiter p waits for, for messages: its pool, or
// its locks.
func waitedFor(names []string, p txn.Waiter) string {
	if p.Pool != "" {
		return fmt.Sprintf("the pool %q", p.Pool)
	}
	return quoteAll(names)
}

// quoteAll names locks for a message: "a", "b".
func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

// takeUp takes the grant of waiter id in each lock of names up: it leaves
// the queues, and the locks as granted to it are answered and remembered.
func takeUp(tx txn.Tx, names []string, id int64, req acquireRequest) (map[string]Snapshot, error) {
	got := make(map[string]Snapshot, len(names))
	for _, name := range names {
		q, _ := find(tx.Queue(name), id)
		tx.RemoveWaiter(name, id)
		s := snapshot(tx, name)
		if g := q.Granted; g != nil && !holdsGrant(s.Lock, *g) {
			s.Lock = g.Clone() // ended since (its lease ran out): the hold as granted
		}
		got[name] = s
	}
	return got, remember(tx, req.Idem, outcomeOf(got, nil, nil, req.Count > 0))
}

// holdsGrant reports whether l is still the lock granted as g: the same
// key and token, held by g's holder.
func holdsGrant(l, g lock.Lock) bool {
	if l.Key != g.Key || l.Token != g.Token || len(g.Holders) == 0 {
		return false
	}
	_, holds := l.Holder(g.Holders[0].Name)
	return holds
}

// stillHeld passes on a remembered grant only while its hold lasts: a
// client that sent again long after must not take a hold that has since
// ended (its lease ran out, someone forced it free) for a live one. A
// claim's members may have left its pool since: the change is run again
// naming them (moreLocks).
func stillHeld(tx txn.Tx, names []string, req acquireRequest, replay *outcome, err error) error {
	if err != nil || replay == nil {
		return err
	}
	was := replay.locks(names)
	if err := needs(tx, slices.Collect(maps.Keys(was))); err != nil {
		return err
	}
	for name, was := range was {
		now := snapshot(tx, name)
		if _, holds := now.Holder(req.Requestor); holds && now.Token == was.Token && now.Key == was.Key {
			continue
		}
		return fmt.Errorf("%w: this request (its Idempotency-Key) was granted %q with token %d at %s, but that hold has since ended (its lease ran out, or it was released or forced free); %s",
			errGrantEnded, name, was.Token, was.AcquiredAt.Format(time.RFC3339), advice.TakeAgain)
	}
	return nil
}

// moreLocks asks for a change to be run again over more locks: a step
// found that it must see locks its transaction did not name (a pool's
// members changed under a claim, or a remembered claim's member has left
// its pool). A transaction names its locks as it begins, so that the
// PostgreSQL store can take their row locks in one order.
type moreLocks struct{ names []string }

func (m *moreLocks) Error() string {
	return "the change must see more locks: " + strings.Join(m.names, ", ")
}

// needs returns a *moreLocks for those of names tx did not name, or nil.
func needs(tx txn.Reader, names []string) error {
	var missing []string
	for _, name := range names {
		if !tx.Named(name) {
			missing = append(missing, name)
		}
	}
	if missing == nil {
		return nil
	}
	return &moreLocks{missing}
}

// namingTries bounds how often a change is run again over more locks:
// each run names every lock asked for before, so only a pool whose
// members change again and again between two runs needs another.
const namingTries = 5

// updateNaming is update over names, run again over more when apply asks
// for them (moreLocks). It returns the names of its last run.
func (e *engine) updateNaming(ctx context.Context, names []string, opts txn.Options, apply func(tx txn.Tx, names []string) error) ([]string, error) {
	for try := 1; ; try++ {
		err := e.update(ctx, names, opts, func(tx txn.Tx) error { return apply(tx, names) })
		var more *moreLocks
		if !errors.As(err, &more) {
			return names, err
		}
		if try == namingTries {
			return names, fmt.Errorf("%w: its members changed %d times while this request read them; send it again", errPoolChanged, namingTries)
		}
		names = slices.Sorted(slices.Values(append(slices.Clone(names), more.names...)))
		names = slices.Compact(names)
	}
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
		case endsTheWait(err):
			return nil, err
		case err != nil && ctx.Err() != nil:
			return w.end(ctx, false)
		}
	}
}

// endsTheWait reports whether err, from a look at a waiter, is its
// request's answer: its pool was removed or became too small for it, or
// the grant it was told of has since ended.
func endsTheWait(err error) bool {
	return errors.Is(err, errNoPool) || errors.Is(err, errPoolTooSmall) || errors.Is(err, errGrantEnded)
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
		return nil, fmt.Errorf("%w: timed out after %v waiting for %d of the pool %q: %s", errLockHeld, w.req.Wait, w.req.Count, w.pool, refusals(got, w.req.Key))
	case timedOut:
		w.e.metrics.WaitTimedOut()
		return nil, fmt.Errorf("%w: timed out after %v waiting: %s", errLockHeld, w.req.Wait, refusals(got, w.req.Key))
	case !clientGone(ctx):
		return nil, errShuttingDown
	}
	return nil, errClientGone
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
	names, err := w.e.updateNaming(ctx, w.names, txn.Options{Pool: w.pool}, func(tx txn.Tx, names []string) error {
		granted, set = false, nil
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
			return nil, false, fmt.Errorf("%w: the pool %q was removed while this claim waited for it; %s", errNoPool, w.pool, advice.Pools)
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
func heldBy(tx txn.Reader, names []string, req acquireRequest) map[string]Snapshot {
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
	w.e.granted(w.req, got, time.Since(w.start))
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
