package engine

// An operator's actions on the queue: taking a waiting request out.

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/locker-ci/locker/internal/txn"
)

// Waiter returns the locks whose queues the waiter with id is in (a set's
// or a claim's: several) and a claim's pool, for a caller that must check
// who may remove it before it does; ErrNoWaiter when no request waits
// with that ID.
func (e *Engine) Waiter(ctx context.Context, id int64) (names []string, pool string, err error) {
	rows, err := e.store.Waiter(ctx, id, nil)
	if err != nil {
		return nil, "", e.fail("", err)
	}
	for _, q := range rows {
		if q.Waiting() {
			return slices.Sorted(maps.Keys(rows)), q.Pool, nil
		}
	}
	return nil, "", noWaiter(id)
}

// RemoveWaiter takes the waiter with id out of the queues of names (as
// Waiter found them): its request is answered ErrRemoved with why (who
// removed it, and their reason), and those behind it move up, granted
// at once if they now can be. A waiter granted meanwhile, or gone, is
// ErrNoWaiter, and nothing changes.
func (e *Engine) RemoveWaiter(ctx context.Context, id int64, names []string, why string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	err := e.update(ctx, names, txn.Options{}, func(tx txn.Tx) error {
		var in []string
		for _, name := range names {
			if q, ok := find(tx.Queue(name), id); ok && q.Waiting() {
				in = append(in, name)
			}
		}
		if len(in) == 0 {
			return noWaiter(id)
		}
		removeWaiter(tx, in, id, why)
		return nil
	})
	if err != nil {
		return e.fail(names[0], err)
	}
	e.log.Info("waiter removed", "waiter", id, "locks", names, "why", why)
	return nil
}

// removeWaiter marks the waiter with id removed, for why, in the queues
// of in, tells its request, and grants whom it held up.
func removeWaiter(tx txn.Tx, in []string, id int64, why string) {
	for _, name := range in {
		q, _ := find(tx.Queue(name), id)
		q.Removed = why
		tx.PutWaiter(name, q)
	}
	tx.Wake(id)
	for _, name := range in {
		grantQueue(tx, name)
	}
}

// supersede takes out of the queues of a's locks the earlier waiting
// requests of a's requestor for the same lock, set or pool (the same
// target), each answered that a newer request took its place; a then
// queues at the back, or is granted if they were all that stood before it.
func supersede(tx txn.Tx, a *attempt) {
	why := "superseded by a newer request from " + a.req.Requestor
	done := map[int64]bool{}
	for _, name := range a.names {
		for _, q := range slices.Clone(tx.Queue(name)) {
			if done[q.ID] || !q.Waiting() || q.Req.Requestor != a.req.Requestor || !sameTarget(q, a) {
				continue
			}
			done[q.ID] = true
			var in []string
			for _, n := range a.names {
				if _, ok := find(tx.Queue(n), q.ID); ok {
					in = append(in, n)
				}
			}
			removeWaiter(tx, in, q.ID, why)
		}
	}
}

// sameTarget reports whether waiter q waits for what a asks for: the
// same pool, the same set, or the same lock alone.
func sameTarget(q txn.Waiter, a *attempt) bool {
	switch {
	case a.pool != "":
		return q.Pool == a.pool
	case q.Pool != "":
		return false
	case len(a.names) == 1:
		return q.Set == nil
	}
	return slices.Equal(q.Set, a.names)
}

// noWaiter says no request waits with id.
func noWaiter(id int64) error {
	return fmt.Errorf("%w: no request waits with the ID %d: it was granted, gave up, or was removed already (GET /lock/<name> shows each waiter's ID)", ErrNoWaiter, id)
}
