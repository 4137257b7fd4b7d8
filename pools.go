package main

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

// Pools: a named, durable set of interchangeable locks, its members. A
// claim takes any free members, in one change; a claim that waits is one
// waiter in every member's queue (Waiter.Count of Waiter.Set), first come,
// first served across the pool, granted when enough members are free
// where it is at the head (grantClaim). A claimed member is an ordinary
// lock: DELETE /lock/<member> gives it back.

var (
	errNoPool = errors.New("no such pool")
	// errPoolChanged: the pool's members changed while a claim read
	// them; it is tried again.
	errPoolChanged = errors.New("the pool's members changed during the claim")
)

// poolTries is how often a claim reads the pool again when its members
// change under it.
const poolTries = 3

// SetPool makes a pool called name of members (sorted, each once): new,
// or in place of the pool's members (a member left out stays held until
// given back; when each was last claimed is kept).
func (e *engine) SetPool(name string, members []string) (lock.Pool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	var p lock.Pool
	err := e.update(ctx, nil, txn.Options{Pool: name}, func(tx txn.Tx) error {
		old, _ := tx.Pool(name)
		p = old.WithMembers(members)
		tx.SetPool(name, p)
		return nil
	})
	if err != nil {
		return lock.Pool{}, e.fail(name, err)
	}
	e.log.Info("pool set", "pool", name, "members", strings.Join(p.Members, ","))
	return p, nil
}

// DeletePool removes the pool called name; its members stay as they are.
func (e *engine) DeletePool(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	err := e.update(ctx, nil, txn.Options{Pool: name}, func(tx txn.Tx) error {
		if _, ok := tx.Pool(name); !ok {
			return noPool(name)
		}
		tx.DeletePool(name)
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
	pools, err := e.Pools()
	if err != nil {
		return PoolView{}, err
	}
	p, ok := pools[name]
	if !ok {
		return PoolView{}, noPool(name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	v := PoolView{Pool: p}
	err = e.store.View(ctx, p.Members, func(r txn.Reader) error {
		v.Locks = snapshots(r, p.Members)
		seen := map[int64]bool{}
		var queue []txn.Waiter
		for _, m := range p.Members {
			for _, w := range r.Queue(m) {
				if w.Pool == name && w.Waiting() && !seen[w.ID] {
					seen[w.ID] = true
					queue = append(queue, w)
				}
			}
		}
		slices.SortFunc(queue, func(a, b txn.Waiter) int { return cmp.Compare(a.ID, b.ID) })
		for _, w := range queue {
			v.Waiting = append(v.Waiting, PoolWaiter{Waiting: lock.Waiting{Key: w.Req.Key, Requestor: w.Req.Requestor, Since: w.Since}, Count: w.Count})
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
// the pool. It returns the members it got.
func (e *engine) Claim(ctx context.Context, pool string, req acquireRequest) (map[string]Snapshot, error) {
	for try := 1; ; try++ {
		got, err := e.claim(ctx, pool, req)
		if !errors.Is(err, errPoolChanged) || try == poolTries {
			return got, err
		}
	}
}

// claim is one try of Claim, over the pool's members as read first.
func (e *engine) claim(ctx context.Context, pool string, req acquireRequest) (map[string]Snapshot, error) {
	pools, err := e.Pools()
	if err != nil {
		return nil, err
	}
	p, ok := pools[pool]
	switch {
	case !ok:
		return nil, noPool(pool)
	case req.Count > len(p.Members):
		return nil, fmt.Errorf("%w: the pool %q has %s; a claim may take at most that many", errBadRequest, pool, plural(len(p.Members), "member", "members"))
	}
	members := p.Members
	start := time.Now()
	var (
		verdict = lock.Refuse
		got     map[string]Snapshot
		w       txn.Waiter
		replay  *outcome
		woken   <-chan struct{}
		stop    = func() {}
		free    int
	)
	defer func() { stop() }()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	opts := txn.Options{Recall: req.Idem.scopeOrNone(), Token: true, NewWait: req.Wait > 0, Pool: pool}
	err = e.update(cctx, members, opts, func(tx txn.Tx) error {
		cur, ok := tx.Pool(pool)
		switch {
		case !ok:
			return noPool(pool)
		case !slices.Equal(cur.Members, members):
			return errPoolChanged
		}
		var err error
		if replay, err = recall(tx, req.Idem); replay != nil || err != nil {
			return err
		}
		if q, ok := findIdem(tx.Queue(members[0]), req.Idem); ok {
			// An earlier request with this key waits for the pool: this
			// one is the same request sent again. A grant it has not taken
			// up is taken up now; a wait is taken over.
			var in []string
			for _, m := range members {
				if _, ok := find(tx.Queue(m), q.ID); ok {
					in = append(in, m)
				}
			}
			if q.Granted != nil {
				verdict = lock.Grant
				got, err = takeUp(tx, in, q.ID, req)
				return err
			}
			if req.Wait == 0 {
				return fmt.Errorf("%w: a claim with this Idempotency-Key has waited for the pool %q since %s; send this one with ?wait= to take its place, or send it again once that one is answered",
					errKeyBusy, pool, q.Since.Format(time.RFC3339))
			}
			verdict, w = lock.Queue, q
			for _, m := range in {
				e, _ := find(tx.Queue(m), q.ID)
				e.Round, e.Left, e.Owner = q.Round+1, time.Time{}, ""
				tx.PutWaiter(m, e)
			}
			w.Round++
			stop()
			woken, stop = e.store.Watch(w.ID)
			return nil
		}
		var candidates []string
		for _, m := range members {
			if tx.Lock(m).Free() && waiting(tx.Queue(m)) == 0 {
				candidates = append(candidates, m)
			}
		}
		free = len(candidates)
		if chosen := cur.Pick(candidates, req.Count); chosen != nil {
			verdict = lock.Grant
			for _, m := range chosen {
				tx.Set(m, lock.Give(tx.Lock(m), req.Request, tx.Now(), tx.NextToken))
			}
			tx.SetPool(pool, cur.Claim(chosen, tx.Now()))
			got = snapshots(tx, chosen)
			return remember(tx, req.Idem, outcomeOf(got, nil, nil, true))
		}
		if req.Wait == 0 {
			return nil
		}
		verdict = lock.Queue
		w = txn.Waiter{ID: tx.NewWaiterID(), Req: req.Request, Since: tx.Now(), Idem: req.Idem.scopeOrNone(),
			Set: members, Count: req.Count, Pool: pool}
		for _, m := range members {
			tx.PutWaiter(m, w)
		}
		stop()
		woken, stop = e.store.Watch(w.ID)
		return nil
	})
	wt := &wait{e: e, names: members, pool: pool, id: w.ID, round: w.Round, req: req, start: start}
	switch {
	case err != nil && verdict == lock.Queue && errors.Is(err, txn.ErrUncertain):
		wt.takeOut(context.WithoutCancel(ctx))
		return nil, e.fail(pool, err)
	case err != nil:
		return nil, e.fail(pool, err)
	case replay != nil:
		return replay.locks(members), nil
	case verdict == lock.Grant:
		e.granted(slices.Sorted(maps.Keys(got)), req, got, 0)
		return got, nil
	case verdict == lock.Refuse:
		e.metrics.Refused()
		return nil, fmt.Errorf("%w: the pool %q has %d of its %s free for a claim of %d (a member another request waits for first is not free); %s",
			errLockHeld, pool, free, plural(len(members), "member", "members"), req.Count, advice.WaitForThem)
	}
	return wt.run(ctx, woken)
}
