package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Pools: a named, durable set of interchangeable locks, its members. A
// claim takes any free members, in one change; a claim that waits is one
// waiter in every member's queue (Waiter.Count of Waiter.Set), first come,
// first served across the pool, granted when enough members are free
// where it is at the head (grantClaim). A claimed member is an ordinary
// lock: DELETE /lock/<member> gives it back.

var (
	errNoPool = errors.New("no such pool")
	// errPoolChanged: the pool's members changed again and again while a
	// request read them.
	errPoolChanged = errors.New("the pool changed during the request")
	// errPoolTooSmall: a waiting claim's pool now has fewer members
	// than it claims.
	errPoolTooSmall = errors.New("the pool is too small for the claim")
)

// SetPool makes a pool called name of members (sorted, each once): new,
// or in place of the pool's members (a member left out stays held until
// given back; when each was last claimed is kept). The claims that wait
// for the pool wait for its new members, in the same places: granted at
// once a new member that is free, no longer in the queue of one left
// out; a claim for more members than the pool now has is answered
// (errPoolTooSmall).
func (e *engine) SetPool(name string, members []string) (lock.Pool, error) {
	pools, err := e.Pools()
	if err != nil {
		return lock.Pool{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	var p lock.Pool
	both := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(pools[name].Members), members...))))
	_, err = e.updateNaming(ctx, both, txn.Options{Pool: name}, func(tx txn.Tx, _ []string) error {
		old, _ := tx.Pool(name)
		if err := needs(tx, old.Members); err != nil {
			return err
		}
		p = old.WithMembers(members)
		tx.SetPool(name, p)
		for _, w := range claimsOn(tx, name, old.Members) {
			for _, m := range old.Members {
				if w.Count > len(p.Members) || !slices.Contains(p.Members, m) {
					tx.RemoveWaiter(m, w.ID)
				}
			}
			tx.Wake(w.ID) // its request sees where it waits now, or why it is answered
			if w.Count > len(p.Members) {
				continue
			}
			w.Set = p.Members
			for _, m := range p.Members {
				tx.PutWaiter(m, w) // in its place: a queue is in the order of IDs
			}
		}
		for _, m := range both {
			grantQueue(tx, m) // a member left out may be free now, a new one may be granted
		}
		return nil
	})
	if err != nil {
		return lock.Pool{}, e.fail(name, err)
	}
	e.log.Info("pool set", "pool", name, "members", strings.Join(p.Members, ","))
	return p, nil
}

// claimsOn returns the claims on pool that wait, or keep a place, in the
// queues of members (granted ones aside), each once, in the order of
// their IDs.
func claimsOn(tx txn.Reader, pool string, members []string) []txn.Waiter {
	seen := map[int64]bool{}
	var claims []txn.Waiter
	for _, m := range members {
		for _, w := range tx.Queue(m) {
			if w.Pool == pool && w.Granted == nil && !seen[w.ID] {
				seen[w.ID] = true
				claims = append(claims, w)
			}
		}
	}
	slices.SortFunc(claims, func(a, b txn.Waiter) int { return cmp.Compare(a.ID, b.ID) })
	return claims
}

// DeletePool removes the pool called name; its members stay as they are.
// The claims that wait for it leave its members' queues, and are
// answered with errNoPool.
func (e *engine) DeletePool(name string) error {
	p, err := e.poolNamed(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	_, err = e.updateNaming(ctx, p.Members, txn.Options{Pool: name}, func(tx txn.Tx, _ []string) error {
		p, ok := tx.Pool(name)
		if !ok {
			return noPool(name)
		}
		if err := needs(tx, p.Members); err != nil {
			return err
		}
		for _, w := range claimsOn(tx, name, p.Members) {
			for _, m := range p.Members {
				tx.RemoveWaiter(m, w.ID)
			}
			tx.Wake(w.ID)
		}
		tx.DeletePool(name)
		for _, m := range p.Members {
			grantQueue(tx, m)
		}
		return nil
	})
	if err != nil {
		return e.fail(name, err)
	}
	e.log.Info("pool removed", "pool", name)
	return nil
}

// noPool says there is no pool called name, and what to do.
func noPool(name string) error {
	return fmt.Errorf("%w: there is no pool called %q; %s", errNoPool, name, advice.Pools)
}

// Pools returns every pool, by name.
func (e *engine) Pools() (map[string]lock.Pool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	pools, err := e.store.Pools(ctx)
	if err != nil {
		return nil, e.fail("", err)
	}
	return pools, nil
}

// poolNamed returns the pool called name, or errNoPool.
func (e *engine) poolNamed(name string) (lock.Pool, error) {
	pools, err := e.Pools()
	if err != nil {
		return lock.Pool{}, err
	}
	p, ok := pools[name]
	if !ok {
		return lock.Pool{}, noPool(name)
	}
	return p, nil
}

// poolTooSmall says that a claim of count can never be granted from p.
func poolTooSmall(name string, p lock.Pool, count int) error {
	return fmt.Errorf("%w: the pool %q now has %s, fewer than this claim of %d; claim fewer, or add members to the pool",
		errPoolTooSmall, name, plural(len(p.Members), "member", "members"), count)
}

// PoolWaiter is a claim waiting for a pool's members.
type PoolWaiter struct {
	lock.Waiting
	Count int `json:"count"`
}

// PoolView is a pool as it is: each member's lock, and the claims that
// wait, first come first.
type PoolView struct {
	lock.Pool
	Locks   map[string]Snapshot
	Waiting []PoolWaiter
}

// Pool returns the pool called name, its members' locks and its queue.
func (e *engine) Pool(name string) (PoolView, error) {
	p, err := e.poolNamed(name)
	if err != nil {
		return PoolView{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	v := PoolView{Pool: p}
	err = e.store.View(ctx, p.Members, func(r txn.Reader) error {
		v.Locks = snapshots(r, p.Members)
		for _, w := range claimsOn(r, name, p.Members) {
			if w.Waiting() {
				v.Waiting = append(v.Waiting, PoolWaiter{Waiting: lock.Waiting{Key: w.Req.Key, Requestor: w.Req.Requestor, Since: w.Since}, Count: w.Count})
			}
		}
		return nil
	})
	if err != nil {
		return PoolView{}, e.fail(name, err)
	}
	return v, nil
}

// Claim takes req.Count free members of the pool called pool for
// req.Requestor, in one change: the ones claimed least recently. With
// req.Wait, when too few are free, it waits first come, first served for
// the pool. It returns the members it got. It runs the steps of
// AcquireSet, with the pool's rule to decide.
func (e *engine) Claim(ctx context.Context, pool string, req acquireRequest) (map[string]Snapshot, error) {
	p, err := e.poolNamed(pool)
	if err != nil {
		return nil, err
	}
	if req.Count > len(p.Members) {
		return nil, fmt.Errorf("%w: the pool %q has %s; a claim may take at most that many", errInvalid, pool, plural(len(p.Members), "member", "members"))
	}
	a := newAttempt(p.Members, req)
	a.pool = pool
	defer func() { a.stop() }()
	free := 0
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	opts := txn.Options{Recall: req.Idem.scopeOrNone(), Token: true, NewWait: req.Wait > 0, Pool: pool}
	_, err = e.updateNaming(cctx, p.Members, opts, func(tx txn.Tx, _ []string) error {
		a.verdict, a.got, a.replay = lock.Refuse, nil, nil
		cur, ok := tx.Pool(pool)
		switch {
		case !ok:
			return noPool(pool)
		case req.Count > len(cur.Members):
			return poolTooSmall(pool, cur, req.Count)
		}
		if err := needs(tx, cur.Members); err != nil {
			return err
		}
		a.names = cur.Members
		if again, err := e.again(tx, a); again || err != nil {
			return err
		}
		var candidates []string
		for _, m := range cur.Members {
			if tx.Lock(m).Free() && waiting(tx.Queue(m)) == 0 {
				candidates = append(candidates, m)
			}
		}
		free = len(candidates)
		if chosen := cur.Pick(candidates, req.Count); chosen != nil {
			a.verdict = lock.Grant
			for _, m := range chosen {
				tx.Set(m, lock.Give(tx.Lock(m), req.Request, tx.Now(), tx.NextToken))
			}
			tx.SetPool(pool, cur.Claim(chosen, tx.Now()))
			a.got = snapshots(tx, chosen)
			return remember(tx, req.Idem, outcomeOf(a.got, nil, nil, true))
		}
		if req.Wait > 0 {
			w := txn.Waiter{ID: tx.NewWaiterID(), Req: req.Request, Since: tx.Now(), Idem: req.Idem.scopeOrNone(),
				Set: cur.Members, Count: req.Count, Pool: pool}
			for _, m := range cur.Members {
				tx.PutWaiter(m, w)
			}
			a.queued(e.store, w)
		}
		return nil
	})
	return e.answer(ctx, a, err, func() error {
		return fmt.Errorf("%w: the pool %q has %d of its %s free for a claim of %d (a member another request waits for first is not free); %s",
			errLockHeld, pool, free, plural(len(a.names), "member", "members"), req.Count, advice.WaitForThem)
	})
}
