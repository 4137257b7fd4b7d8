package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/locker-ci/locker/internal/txn"
)

// Group commit: a node's changes that arrive together share one database
// transaction, and so one commit. A committer takes the change that
// waits first and every other one waiting at that moment (the changes
// that came while its last commit was in flight), runs them (tx.go), and
// answers each. Nothing waits to make a batch bigger: a change that finds
// a committer free starts at once, alone.
const (
	// committers is how many transactions a node has in flight at once.
	// One is fastest: the next batch gathers while it commits. Measured
	// with make bench's postgres step, 16 clients, one sitting: 1 node
	// 3,711 req/s with one, 3,165 with two, 2,654 with four; 3 nodes
	// 2,066, 1,656 and 1,506.
	committers = 1
	// maxBatch bounds the changes of one transaction, so that one commit
	// does not hold many locks' rows for long.
	maxBatch = 64
	// batchTimeout bounds one transaction, as changeTimeout bounds a change.
	batchTimeout = 10 * time.Second
)

// errClosed answers the changes that come after Close.
var errClosed = errors.New("the node is shutting down")

// job is one change waiting for its transaction.
type job struct {
	ctx   context.Context
	names []string // sorted, once each
	opts  txn.Options
	apply func(txn.Tx) error
	err   error         // what it came to; read after done is closed
	done  chan struct{} // closed once it is answered
}

// Update runs apply in a database transaction over the locks named, under
// their row locks, with the database's clock: a transaction it may share
// with other changes of this node (apply sees what they changed before
// it, and a change that fails is undone alone).
func (s *Store) Update(ctx context.Context, names []string, opts txn.Options, apply func(txn.Tx) error) error {
	j := &job{ctx: ctx, names: sorted(names), opts: opts, apply: apply, done: make(chan struct{})}
	select {
	case s.jobs <- j:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, ctx.Err())
	case <-s.closing:
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, errClosed)
	}
	<-j.done
	return j.err
}

// commit runs batches of the changes that wait until the store closes.
func (s *Store) commitLoop() {
	for {
		var batch []*job
		select {
		case j := <-s.jobs:
			batch = append(batch, j)
		case <-s.closing:
			return
		}
	gather:
		for len(batch) < maxBatch {
			select {
			case j := <-s.jobs:
				batch = append(batch, j)
			default:
				break gather
			}
		}
		s.batches.Add(1)
		s.runBatch(batch)
	}
}
