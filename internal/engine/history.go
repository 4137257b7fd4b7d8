package engine

import (
	"context"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// recorder is the transaction every change's steps run over: it passes
// each lock it is given on to the store's transaction, with the events of
// the change.
type recorder struct {
	txn.Tx
	ending     lock.Ending // how the holds it ends now end, when not by their leases
	credential string      // the credential of the change's request
}

// Set records the events of changing the lock called name to l, then
// changes it. An event names the credential of the request that caused
// it: a taking from the queue, the waiting request's; a lease that ran
// out or a dead node's grant given back, none.
func (r *recorder) Set(name string, l lock.Lock) {
	now := r.Now()
	for _, e := range lock.Events(name, r.Tx.Lock(name), l, now, r.ending) {
		switch e.Kind {
		case lock.Taken:
			e.Credential = r.credential
			if w, ok := waiterOf(r.Tx.Queue(name), e); ok {
				e.Waited, e.Credential = lock.Duration(now.Sub(w.Since)), w.Credential
			}
		case lock.Expired, lock.Dropped:
		default:
			e.Credential = r.credential
		}
		r.Tx.Record(e)
	}
	r.Tx.Set(name, l)
}

// waiterOf returns the waiter of queue whose taking e is: its holder and
// key, waiting.
func waiterOf(queue []txn.Waiter, e lock.Event) (txn.Waiter, bool) {
	for _, w := range queue {
		if w.Waiting() && w.Req.Requestor == e.Holder && w.Req.Key == e.Key {
			return w, true
		}
	}
	return txn.Waiter{}, false
}

// credentialKey finds, in a request's context, the credential it was
// sent with.
type credentialKey struct{}

// WithCredential returns ctx for a request sent with the credential
// called name: the events of its changes name it.
func WithCredential(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, credentialKey{}, name)
}

// credentialOf returns the credential ctx's request was sent with, or "".
func credentialOf(ctx context.Context) string {
	name, _ := ctx.Value(credentialKey{}).(string)
	return name
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

// Backlog returns a page of up to limit of the events kept after from,
// in the order of their IDs (a stream's first page starts from the
// client's last event ID; each next one from the page before's Next).
func (e *Engine) Backlog(ctx context.Context, from txn.Mark, limit int) (txn.Backlog, error) {
	select {
	case e.backlogs <- struct{}{}:
		defer func() { <-e.backlogs }()
	case <-ctx.Done():
		return txn.Backlog{}, ctx.Err()
	}
	ctx, cancel := context.WithTimeout(ctx, changeTimeout)
	defer cancel()
	page, err := e.store.Backlog(ctx, from, limit)
	if err != nil {
		return txn.Backlog{}, e.fail("", err)
	}
	return page, nil
}
