package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// The steps of every change, inside its transaction: the first step
// (settle), a request sent again (again, takeOver, takeUp, stillHeld),
// and a change that must name more locks than it did (updateNaming).

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
func (e *Engine) update(ctx context.Context, names []string, opts txn.Options, apply func(txn.Tx) error) error {
	var ended []expiry
	err := e.store.Update(ctx, names, opts, func(tx txn.Tx) error {
		r := &recorder{Tx: tx, credential: credentialOf(ctx)} // the changes' events go with them (history.go)
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
	queue := r.Queue(name)
	prioritized := false
	for _, w := range queue {
		if w.Waiting() {
			s.Waiting = append(s.Waiting, lock.Waiting{ID: w.ID, Key: w.Req.Key, Requestor: w.Req.Requestor, Since: w.Since, Priority: w.Priority})
			prioritized = prioritized || w.Priority != 0
		}
	}
	if prioritized { // in the order they are served
		slices.SortStableFunc(s.Waiting, func(a, b lock.Waiting) int { return cmp.Compare(b.Priority, a.Priority) })
	}
	return s
}

// snapshots returns snapshot of each lock in names.
func snapshots(r txn.Reader, names []string) map[string]Snapshot {
	got := make(map[string]Snapshot, len(names))
	for _, name := range names {
		got[name] = snapshot(r, name)
	}
	return got
}

// again answers a request sent before with its Idempotency-Key, and
// reports whether it was one: the outcome remembered, while the hold it
// tells of lasts (stillHeld), or the waiter an earlier request left in the
// queue, whose grant it takes up or whose place it takes (takeOver). A
// place kept after a wait ran out is taken only by a request that waits.
func (e *Engine) again(tx txn.Tx, a *attempt) (bool, error) {
	var err error
	if a.replay, err = recall(tx, a.req.Idem); a.replay != nil || err != nil {
		return true, stillHeld(tx, a.names, a.req, a.replay, err)
	}
	p, ok := findIdem(tx, a.names, a.req.Idem)
	switch {
	case !ok || a.req.Wait == 0 && !p.Left.IsZero():
		return false, nil
	case p.Removed != "":
		return true, removedError(p.Removed) // sent again: the same answer
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

// findIdem returns the waiter that a request with idem's key left in
// the queue of one of names, if any.
func findIdem(tx txn.Reader, names []string, idem *IdempotencyKey) (txn.Waiter, bool) {
	if idem == nil {
		return txn.Waiter{}, false
	}
	for _, name := range names {
		for _, w := range tx.Queue(name) {
			if w.Idem == idem.Scope && !w.Abandoned {
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
func sameRequest(p txn.Waiter, names []string, req Request) bool {
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
func takeOver(tx txn.Tx, names []string, p txn.Waiter, req Request) (lock.Verdict, map[string]Snapshot, error) {
	if !sameRequest(p, names, req) {
		return lock.Refuse, nil, fmt.Errorf("%w: it is in the queue for another request (key %q, requestor %q); send a new key with a new request",
			ErrKeyReused, p.Req.Key, p.Req.Requestor)
	}
	in := queuesOf(tx, names, p.ID)
	if p.Granted != nil {
		got, err := takeUp(tx, in, p.ID, req)
		return lock.Grant, got, err
	}
	if req.Wait == 0 {
		return lock.Refuse, nil, fmt.Errorf("%w: a request with this Idempotency-Key has waited for %s since %s and is still in the queue; send this one with ?wait= to take its place, or send it again once that one is answered",
			ErrKeyBusy, waitedFor(names, p), p.Since.Format(time.RFC3339))
	}
	for _, name := range in {
		q, _ := find(tx.Queue(name), p.ID)
		q.Round = p.Round + 1
		q.Left, q.Owner = time.Time{}, "" // waiting again, for this node's request
		tx.PutWaiter(name, q)
	}
	return lock.Queue, nil, nil
}

// takeUp takes the grant of waiter id in each lock of names up: it leaves
// the queues, and the locks as granted to it are answered and remembered.
func takeUp(tx txn.Tx, names []string, id int64, req Request) (map[string]Snapshot, error) {
	got := make(map[string]Snapshot, len(names))
	for _, name := range names {
		q, _ := find(tx.Queue(name), id)
		tx.RemoveWaiter(name, id)
		s := snapshot(tx, name)
		if g := q.Granted; g != nil && !holdsGrant(s.Lock, *g, req.Requestor) {
			s.Lock = g.Clone() // ended since (its lease ran out): the hold as granted
		}
		got[name] = s
	}
	return got, remember(tx, req.Idem, outcomeOf(got, nil, nil, req.Count > 0))
}

// holdsGrant reports whether l is still the lock granted to requestor as
// g: the same key and token, requestor among its holders.
func holdsGrant(l, g lock.Lock, requestor string) bool {
	_, holds := l.Holder(requestor)
	return holds && l.Key == g.Key && l.Token == g.Token
}

// stillHeld passes on a remembered grant only while its hold lasts: a
// client that sent again long after must not take a hold that has since
// ended (its lease ran out, someone forced it free) for a live one. A
// claim's members may have left its pool since: the change is run again
// naming them (moreLocks).
func stillHeld(tx txn.Tx, names []string, req Request, replay *outcome, err error) error {
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
			ErrGrantEnded, name, was.Token, was.AcquiredAt.Format(time.RFC3339), advice.TakeAgain)
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
func (e *Engine) updateNaming(ctx context.Context, names []string, opts txn.Options, apply func(tx txn.Tx, names []string) error) ([]string, error) {
	for try := 1; ; try++ {
		err := e.update(ctx, names, opts, func(tx txn.Tx) error { return apply(tx, names) })
		var more *moreLocks
		if !errors.As(err, &more) {
			return names, err
		}
		if try == namingTries {
			return names, fmt.Errorf("%w: its members changed %d times while this request read them; send it again", ErrPoolChanged, namingTries)
		}
		names = slices.Sorted(slices.Values(append(slices.Clone(names), more.names...)))
		names = slices.Compact(names)
	}
}
