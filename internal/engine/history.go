package engine

import (
	"context"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// recorder is the transaction every change's steps run over: it passes
// each lock it is given on to the store's transaction, with the events of
// the change.
type recorder struct {
	txn.Tx
	ending lock.Ending // how the holds it ends now end, when not by their leases
}

// Set records the events of changing the lock called name to l, then
// changes it.
func (r *recorder) Set(name string, l lock.Lock) {
	now := r.Now()
	for _, e := range lock.Events(name, r.Tx.Lock(name), l, now, r.ending) {
		if e.Kind == lock.Taken {
			e.Waited = waited(r.Tx.Queue(name), e, now)
		}
		r.Tx.Record(e)
	}
	r.Tx.Set(name, l)
}

// waited is how long the holder of a taking waited in the queue: since
// its waiter came, if it had one.
func waited(queue []txn.Waiter, e lock.Event, now time.Time) lock.Duration {
	for _, w := range queue {
		if w.Waiting() && w.Req.Requestor == e.Holder && w.Req.Key == e.Key {
			return lock.Duration(now.Sub(w.Since))
		}
	}
	return 0
}

// ending makes the holds tx ends from now on end as why says, until the
// function it returns is called.
func ending(tx txn.Tx, why lock.Ending) (restore func()) {
	r, ok := tx.(*recorder)
	if !ok {
		return func() {}
	}
	old := r.ending
	r.ending = why
	return func() { r.ending = old }
}

// History returns up to limit of the events of the lock called name with
// IDs below before (0: the newest), newest first.
func (e *Engine) History(name string, before uint64, limit int) ([]lock.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	events, err := e.store.History(ctx, name, before, limit)
	if err != nil {
		return nil, e.fail(name, err)
	}
	return events, nil
}

// Recent returns the last n events of each lock in names, newest first.
func (e *Engine) Recent(ctx context.Context, names []string, n int) (map[string][]lock.Event, error) {
	recent, err := e.store.Recent(ctx, names, n)
	if err != nil {
		return nil, e.fail("", err)
	}
	return recent, nil
}

// Backlog returns up to limit of the events kept with IDs above after, in
// the order of their IDs, and the highest ID of an event no longer kept.
func (e *Engine) Backlog(ctx context.Context, after uint64, limit int) ([]lock.Event, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, changeTimeout)
	defer cancel()
	events, forgotten, err := e.store.Backlog(ctx, after, limit)
	if err != nil {
		return nil, 0, e.fail("", err)
	}
	return events, forgotten, nil
}
