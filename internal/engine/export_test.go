package engine

import (
	"context"

	"github.com/locker-ci/locker/internal/txn"
)

// What the tests of package engine_test reach inside the engine, to set
// up what a request cannot (a waiter whose request is gone) and to look
// as a waiting request does.

// Update runs apply in a change over the locks named, after the first
// step of every change (settle).
func Update(e *Engine, ctx context.Context, names []string, opts txn.Options, apply func(txn.Tx) error) error {
	return e.update(ctx, names, opts, apply)
}

// Enqueue puts req in the queue of each lock in names, as one waiter.
func Enqueue(tx txn.Tx, names []string, req Request) txn.Waiter {
	return enqueue(tx, names, "", req, "")
}

// Look looks at the waiter with id in the queues of names once, as the
// request of req that waits for it does: its grant taken up (granted),
// or as it is; with end, as its wait ends. uncertain says a look before
// may have taken it up unanswered.
func Look(e *Engine, names []string, id int64, req Request, uncertain, end bool) (map[string]Snapshot, bool, error) {
	w := &wait{e: e, names: names, id: id, req: req, uncertain: uncertain}
	return w.claim(context.Background(), end, false)
}

// ScanPage is how many locks a listing reads at a time.
const ScanPage = scanPage
