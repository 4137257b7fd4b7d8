package engine

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Changes that do not wait: releases, forced releases, renewals, and
// reading one lock.

// change runs step in a transaction over the locks named, for a request
// that does not wait: it is answered within changeTimeout, and a request
// seen before, by its Idempotency-Key, gets its first outcome (replay)
// and changes nothing but the first step of every change. A change with
// a precondition (o) is made only if its locks meet it.
func (e *Engine) change(ctx context.Context, names []string, idem *IdempotencyKey, o options, step func(tx txn.Tx) error) (replay *outcome, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	err = e.update(ctx, names, txn.Options{Recall: idem.scopeOrNone()}, func(tx txn.Tx) error {
		var err error
		if replay, err = recall(tx, idem); replay != nil || err != nil {
			return err
		}
		if o.precondition != nil {
			if err := o.precondition.check(tx, names); err != nil {
				return err
			}
		}
		return step(tx)
	})
	if err != nil {
		return nil, e.fail(names[0], err)
	}
	return replay, nil
}

// Release gives back one count of requestor's hold on the lock called name,
// or every count when all is set, and says how many counts it gave back.
// Releasing a free lock, or for a requestor that holds nothing under key,
// changes nothing; a lock held with another key is refused with ErrHeld.
func (e *Engine) Release(ctx context.Context, name, key, requestor string, all bool, idem *IdempotencyKey, opts ...Option) (Snapshot, int, error) {
	got, released, err := e.ReleaseSet(ctx, []string{name}, key, requestor, all, idem, opts...)
	return got[name], released[name], err
}

// ReleaseSet is Release over every lock in names, in one change: refused
// whole when one of them is held with another key.
func (e *Engine) ReleaseSet(ctx context.Context, names []string, key, requestor string, all bool, idem *IdempotencyKey, opts ...Option) (map[string]Snapshot, map[string]int, error) {
	// What the change did, shared with its function (one allocation).
	var out struct {
		got      map[string]Snapshot
		held     map[string]lock.Lock
		released map[string]int
	}
	replay, err := e.change(ctx, names, idem, optionsOf(opts), func(tx txn.Tx) error {
		out.held, out.released = make(map[string]lock.Lock, len(names)), make(map[string]int, len(names))
		for _, name := range names {
			l := tx.Lock(name)
			next, n, ok := lock.Release(l, key, requestor, all)
			if !ok {
				return fmt.Errorf("%w: %q is held with key %q by %s; %s",
					ErrHeld, name, l.Key, l.HoldersString(), advice.ReleaseKey)
			}
			out.held[name], out.released[name] = l, n
			if n > 0 {
				tx.Set(name, next)
				grantQueue(tx, name)
			}
		}
		out.got = snapshots(tx, names)
		if sum(out.released) > 0 {
			return remember(tx, idem, outcomeOf(out.got, out.released, nil, false))
		}
		return nil
	})
	got, held, released := out.got, out.held, out.released
	switch {
	case err != nil:
		return nil, nil, err
	case replay != nil:
		return replay.locks(names), replay.released(names), nil
	}
	for _, name := range names {
		n := released[name]
		e.metrics.Released(n)
		if n > 0 {
			e.log.LogAttrs(context.Background(), slog.LevelInfo, "lock released", slog.String("lock", name), slog.String("key", held[name].Key),
				slog.String("holder", requestor), slog.Uint64("token", held[name].Token), slog.Int("counts", n), slog.Bool("now_free", got[name].Free()))
		}
	}
	return got, released, nil
}

// ForceRelease frees the lock called name whoever holds it, for by (who
// asked, for its history; Because says why), and returns what it was and
// what it is now (the next waiters may have it).
func (e *Engine) ForceRelease(ctx context.Context, name, by string, idem *IdempotencyKey, opts ...Option) (lock.Lock, Snapshot, error) {
	old, got, err := e.ForceReleaseSet(ctx, []string{name}, by, idem, opts...)
	return old[name], got[name], err
}

// ForceReleaseSet is ForceRelease over every lock in names, in one change.
func (e *Engine) ForceReleaseSet(ctx context.Context, names []string, by string, idem *IdempotencyKey, opts ...Option) (map[string]lock.Lock, map[string]Snapshot, error) {
	var (
		got map[string]Snapshot
		old map[string]lock.Lock
	)
	o := optionsOf(opts)
	replay, err := e.change(ctx, names, idem, o, func(tx txn.Tx) error {
		defer ending(tx, lock.Ending{Kind: lock.Forced, By: by, Reason: o.reason})()
		old = make(map[string]lock.Lock, len(names))
		for _, name := range names {
			if l := tx.Lock(name); !l.Free() {
				old[name] = l.Clone()
				tx.Set(name, lock.Lock{})
				grantQueue(tx, name)
			}
		}
		got = snapshots(tx, names)
		if len(old) == 0 {
			return nil
		}
		return remember(tx, idem, outcomeOf(got, nil, old, false))
	})
	switch {
	case err != nil:
		return nil, nil, err
	case replay != nil:
		return replay.olds(names), replay.locks(names), nil
	}
	for range old {
		e.metrics.Forced()
	}
	return old, got, nil
}

// Renew sets requestor's lease on the lock called name to end ttl from now,
// without changing its count. It is refused with ErrHeld when requestor
// holds nothing under key.
func (e *Engine) Renew(ctx context.Context, name, key, requestor string, ttl time.Duration, idem *IdempotencyKey, opts ...Option) (Snapshot, error) {
	got, err := e.RenewSet(ctx, []string{name}, key, requestor, ttl, idem, opts...)
	return got[name], err
}

// RenewSet is Renew over every lock in names, in one change: refused
// whole when requestor holds one of them with nothing under key.
func (e *Engine) RenewSet(ctx context.Context, names []string, key, requestor string, ttl time.Duration, idem *IdempotencyKey, opts ...Option) (map[string]Snapshot, error) {
	var got map[string]Snapshot
	replay, err := e.change(ctx, names, idem, optionsOf(opts), func(tx txn.Tx) error {
		for _, name := range names {
			next, ok := lock.Renew(tx.Lock(name), key, requestor, tx.Now().Add(ttl))
			if !ok {
				return fmt.Errorf("%w: %s holds nothing on %q with key %q, so there is no lease to renew; %s",
					ErrHeld, requestor, name, key, advice.Take)
			}
			tx.Set(name, next)
		}
		got = snapshots(tx, names)
		return remember(tx, idem, outcomeOf(got, nil, nil, false))
	})
	switch {
	case err != nil:
		return nil, err
	case replay != nil:
		return replay.locks(names), nil
	}
	return got, nil
}

// Get returns the lock called name and its queue; a lock no one holds is
// free.
func (e *Engine) Get(name string) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	var s Snapshot
	err := e.store.View(ctx, []string{name}, func(r txn.Reader) error {
		s = snapshot(r, name)
		return nil
	})
	if err != nil {
		return Snapshot{}, e.fail(name, err)
	}
	return s, nil
}
