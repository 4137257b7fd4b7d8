package engine

// Taking locks: a lock, a set of locks and a claim on a pool's members
// are one request kind, whose steps are written once (acquire): recall
// its Idempotency-Key or take over its earlier self (again), decide,
// grant or queue, and after the commit answer it or wait (answer). What
// differs between the kinds is which locks it names and how it decides
// (attempt's methods): a lock or a set by lock.Decide on each, a claim by
// its pool's rule (lock.Pool.Pick).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Acquire takes the lock called name for req.Requestor with req.Key, as
// lock.Decide rules: at once, refused with ErrHeld, or, with req.Wait,
// after waiting in the lock's queue until it is granted, the wait runs out
// (ErrHeld), or ctx is done.
func (e *Engine) Acquire(ctx context.Context, name string, req Request) (Snapshot, error) {
	got, err := e.AcquireSet(ctx, []string{name}, req)
	return got[name], err
}

// AcquireSet takes every lock in names (sorted, no name twice) for
// req.Requestor with req.Key in one change, or none of them: at once,
// refused with ErrHeld when one cannot be had, or, with req.Wait, after
// waiting in each one's queue until it is at the head of all of them (one
// waiter in every queue, with one ID: requests for sets that overlap are
// queued in the same order everywhere, so none waits for another in a
// circle). Each lock gets its own fencing token.
func (e *Engine) AcquireSet(ctx context.Context, names []string, req Request) (map[string]Snapshot, error) {
	return e.acquire(ctx, &attempt{names: names, req: req})
}

// Claim takes req.Count free members of the pool called pool for
// req.Requestor, in one change: the ones claimed least recently. With
// req.Wait, when too few are free, it waits first come, first served for
// the pool. It returns the members it got.
func (e *Engine) Claim(ctx context.Context, pool string, req Request) (map[string]Snapshot, error) {
	p, err := e.poolNamed(pool)
	if err != nil {
		return nil, err
	}
	if req.Count > len(p.Members) {
		return nil, fmt.Errorf("%w: the pool %q has %s; a claim may take at most that many", ErrInvalid, pool, advice.Plural(len(p.Members), "member", "members"))
	}
	return e.acquire(ctx, &attempt{names: p.Members, pool: pool, req: req})
}

// attempt is a request to take locks and what its change decided, for
// after it: shared by the change's function and its caller.
type attempt struct {
	names   []string // the locks it names (a claim's: its pool's members)
	pool    string   // a claim's pool, or ""
	req     Request
	start   time.Time
	p       lock.Pool // a claim's pool, as the change read it
	free    int       // a claim's: how many members the change found free
	verdict lock.Verdict
	got     map[string]Snapshot // granted, or as they are, for a refusal
	w       txn.Waiter          // its waiter, once queued
	replay  *outcome            // the outcome remembered for its Idempotency-Key
	woken   <-chan struct{}     // the store's signal that its waiter was granted
	stop    func()              // ends the watch of its waiter
}

// acquire runs a's steps in one change, and answers it, or waits for its
// grant.
func (e *Engine) acquire(ctx context.Context, a *attempt) (map[string]Snapshot, error) {
	a.start, a.stop = time.Now(), func() {}
	defer func() { a.stop() }()
	// The change runs to its end whatever the client does: a waiter queued
	// by a request that gave up before hearing so would wait for no one.
	// A client that left is seen in the wait.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	opts := txn.Options{Recall: a.req.Idem.scopeOrNone(), Token: true, NewWait: a.req.Wait > 0, Pool: a.pool}
	_, err := e.updateNaming(cctx, a.names, opts, func(tx txn.Tx, _ []string) error {
		a.verdict, a.got, a.replay = lock.Refuse, nil, nil
		if err := a.readPool(tx); err != nil {
			return err
		}
		if again, err := e.again(tx, a); again || err != nil {
			return err
		}
		if a.req.Supersede && a.req.Wait > 0 {
			supersede(tx, a)
		}
		chosen, err := a.decide(tx)
		if err != nil {
			return err
		}
		switch a.verdict {
		case lock.Grant:
			return a.give(tx, chosen)
		case lock.Queue:
			a.queued(e.store, enqueue(tx, a.names, a.pool, a.req, credentialOf(ctx)))
		default:
			a.got = snapshots(tx, a.names) // for the refusal
		}
		return nil
	})
	return e.answer(ctx, a, err)
}

// readPool reads a claim's pool in tx: its members are the locks the
// claim names (those tx did not name are asked for: moreLocks).
func (a *attempt) readPool(tx txn.Tx) error {
	if a.pool == "" {
		return nil
	}
	p, ok := tx.Pool(a.pool)
	switch {
	case !ok:
		return noPool(a.pool)
	case a.req.Count > len(p.Members):
		return poolTooSmall(a.pool, p, a.req.Count)
	}
	a.p, a.names = p, p.Members
	return needs(tx, p.Members)
}

// decide sets a's verdict and returns the locks to grant: for a lock or a
// set, lock.Decide on each (granted if every one can be had now); for a
// claim, a.req.Count of the members that are free with no one waiting
// for them first (of its priority or higher), the least recently
// claimed (lock.Pool.Pick).
func (a *attempt) decide(tx txn.Tx) ([]string, error) {
	if a.pool == "" {
		for _, name := range a.names {
			if l := tx.Lock(name); lock.LimitDiffers(l, a.req.Request) {
				return nil, fmt.Errorf("%w: %q is held under a limit of %s, set by the request that took it; %s%d, or no limit, to share it",
					ErrLimitDiffers, name, limitText(l.Limit), advice.Limit, l.Limit)
			}
		}
		a.verdict = decide(tx, a.names, a.req)
		return a.names, nil
	}
	var candidates []string
	for _, m := range a.names {
		if tx.Lock(m).Free() && waitingAhead(tx.Queue(m), a.req.Priority) == 0 {
			candidates = append(candidates, m)
		}
	}
	a.free = len(candidates)
	chosen := a.p.Pick(candidates, a.req.Count)
	switch {
	case chosen != nil:
		a.verdict = lock.Grant
	case a.req.Wait > 0:
		a.verdict = lock.Queue
	}
	return chosen, nil
}

// give grants a the locks chosen, each with its own token, and remembers
// the outcome; a claim's pool notes when they were claimed.
func (a *attempt) give(tx txn.Tx, chosen []string) error {
	for _, name := range chosen {
		tx.Set(name, lock.Give(tx.Lock(name), a.req.Request, tx.Now(), tx.NextToken))
	}
	if a.pool != "" {
		tx.SetPool(a.pool, a.p.Claim(chosen, tx.Now()))
	}
	a.got = snapshots(tx, chosen)
	return remember(tx, a.req.Idem, outcomeOf(a.got, nil, nil, a.pool != ""))
}

// refused says why a was refused.
func (a *attempt) refused() error {
	if a.pool == "" {
		return fmt.Errorf("%w: %s; %s", ErrHeld, refusals(a.got, a.req.Key), advice.Wait)
	}
	return fmt.Errorf("%w: the pool %q has %d of its %s free for a claim of %d (a member another request waits for first is not free); %s",
		ErrHeld, a.pool, a.free, advice.Plural(len(a.names), "member", "members"), a.req.Count, advice.WaitForThem)
}

// queued notes that the change put w in the queue (or took over its
// place), and watches it from now on: its grant may come at the commit.
func (a *attempt) queued(store Store, w txn.Waiter) {
	a.verdict, a.w = lock.Queue, w
	a.stop()
	a.woken, a.stop = store.Watch(w.ID)
}

// answer answers a, whose change returned err. A request queued waits for
// its grant.
func (e *Engine) answer(ctx context.Context, a *attempt, err error) (map[string]Snapshot, error) {
	w := &wait{e: e, names: a.names, pool: a.pool, id: a.w.ID, round: a.w.Round, req: a.req, start: a.start}
	what := a.names[0]
	if a.pool != "" {
		what = a.pool
	}
	switch {
	case err != nil && a.verdict == lock.Queue && errors.Is(err, txn.ErrUncertain):
		// The waiter may be in the queue with no one to answer it.
		w.takeOut(context.WithoutCancel(ctx))
		return nil, e.fail(what, err)
	case err != nil:
		return nil, e.fail(what, err)
	case a.replay != nil:
		return a.replay.locks(a.names), nil
	case a.verdict == lock.Grant:
		e.granted(a.req, a.got, 0)
		return a.got, nil
	case a.verdict == lock.Refuse:
		e.metrics.Refused()
		return nil, a.refused()
	}
	return w.run(ctx, a.woken)
}

// granted logs and counts a grant of each lock in got.
func (e *Engine) granted(req Request, got map[string]Snapshot, waited time.Duration) {
	if len(got) == 1 { // the common case, without a slice of names
		for name, s := range got {
			e.grantedOne(name, req, s.Token, waited, "")
		}
		return
	}
	names := slices.Sorted(maps.Keys(got))
	set := strings.Join(names, ",")
	for _, name := range names {
		e.grantedOne(name, req, got[name].Token, waited, set)
	}
}

// grantedOne logs and counts the grant of one lock, of set if it is one
// of several.
func (e *Engine) grantedOne(name string, req Request, token uint64, waited time.Duration, set string) {
	e.metrics.Acquired(waited, waited > 0)
	// Attrs, not key-value pairs: no value is boxed, and the record
	// holds them without a slice of its own.
	attrs := make([]slog.Attr, 0, 6)
	attrs = append(attrs, slog.String("lock", name), slog.String("key", req.Key), slog.String("holder", req.Requestor),
		slog.Uint64("token", token))
	if waited > 0 {
		attrs = append(attrs, slog.Duration("waited", waited.Round(time.Millisecond)))
	}
	if set != "" {
		attrs = append(attrs, slog.String("set", set))
	}
	e.log.LogAttrs(context.Background(), slog.LevelInfo, "lock granted", attrs...)
}
