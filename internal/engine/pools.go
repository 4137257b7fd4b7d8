package engine

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Pools: a named, durable set of interchangeable locks, its members. A
// claim takes any free members, in one change, by the steps of every
// request to take locks (acquire.go); a claim that waits is one waiter in
// every member's queue (Waiter.Count of Waiter.Set), first come, first
// served across the pool, granted when enough members are free where it
// is at the head (grantClaim). A claimed member is an ordinary lock. The
// claims that wait follow their pool's members as they change.

// SetPool makes a pool called name of members (sorted, each once): new,
// or in place of the pool's members (a member left out stays held until
// given back; when each was last claimed is kept). The claims that wait
// for the pool wait for its new members, in the same places: granted at
// once a new member that is free, no longer in the queue of one left
// out; a claim for more members than the pool now has is answered
// (ErrPoolTooSmall).
func (e *Engine) SetPool(name string, members []string) (lock.Pool, error) {
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
// answered with ErrNoPool.
func (e *Engine) DeletePool(name string) error {
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
	return fmt.Errorf("%w: there is no pool called %q; %s", ErrNoPool, name, advice.Pools)
}

// Pools returns every pool, by name.
func (e *Engine) Pools() (map[string]lock.Pool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	pools, err := e.store.Pools(ctx)
	if err != nil {
		return nil, e.fail("", err)
	}
	return pools, nil
}

// poolNamed returns the pool called name, or ErrNoPool.
func (e *Engine) poolNamed(name string) (lock.Pool, error) {
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
		ErrPoolTooSmall, name, advice.Plural(len(p.Members), "member", "members"), count)
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
func (e *Engine) Pool(name string) (PoolView, error) {
	p, err := e.poolNamed(name)
	if err != nil {
		return PoolView{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	v := PoolView{Pool: p}
	err = e.store.View(ctx, p.Members, func(r txn.Reader) error {
		v.Locks = snapshots(r, p.Members)
		claims := claimsOn(r, name, p.Members)
		slices.SortStableFunc(claims, func(a, b txn.Waiter) int { return cmp.Compare(b.Priority, a.Priority) }) // in the order they are served
		for _, w := range claims {
			if w.Waiting() {
				v.Waiting = append(v.Waiting, PoolWaiter{Waiting: lock.Waiting{ID: w.ID, Key: w.Req.Key, Requestor: w.Req.Requestor, Since: w.Since, Priority: w.Priority}, Count: w.Count})
			}
		}
		return nil
	})
	if err != nil {
		return PoolView{}, e.fail(name, err)
	}
	return v, nil
}
