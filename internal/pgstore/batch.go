package pgstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Group commit: a node's changes that arrive together share one database
// transaction, and so one commit. A committer takes the change that
// waits first and every other one waiting at that moment (the changes
// that came while its last commit was in flight), runs them in one
// transaction (runBatch, below), and answers each. Nothing waits to make a batch bigger: a change that finds
// a committer free starts at once, alone.
const (
	// committers is how many transactions a node has in flight at once.
	// One is fastest: the next batch gathers while it commits. Measured
	// with make bench's postgres step, 16 clients, one sitting: 1 node
	// 3,711 req/s with one, 3,165 with two, 2,654 with four; 3 nodes
	// 2,066, 1,656 and 1,506. The price: a batch that waits for a row
	// another node's transaction holds holds up this node's other changes
	// as long (see idleInTransaction for a node that vanished).
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

// commitLoop runs batches of the changes that wait, until the store
// closes.
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

// runBatch runs jobs in one database transaction, and answers each.
func (s *Store) runBatch(jobs []*job) {
	defer func() {
		for _, j := range jobs {
			close(j.done)
		}
	}()
	var live []*job
	for _, j := range jobs {
		if err := j.ctx.Err(); err != nil {
			j.err = fmt.Errorf("%w: %w", txn.ErrUnavailable, err) // gave up while queued: nothing was done
			continue
		}
		live = append(live, j)
	}
	if len(live) == 0 {
		return
	}
	failAll := func(err error) {
		for _, j := range live {
			if j.err == nil {
				j.err = err
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		failAll(fmt.Errorf("%w: %w", txn.ErrUnavailable, err))
		return
	}
	defer conn.Release()
	t, err := s.beginBatch(ctx, conn.Conn(), live)
	for try := 0; errors.Is(err, errRowGone) && try < 5; try++ {
		// A free lock's row was deleted as this transaction waited for
		// its row lock: begin again, with a row of its own.
		_, _ = conn.Exec(ctx, "ROLLBACK")
		t, err = s.beginBatch(ctx, conn.Conn(), live)
	}
	if err == nil {
		for _, j := range live {
			t.run(j)
			if t.err != nil {
				break
			}
		}
		err = t.commit()
	} else {
		err = fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	if err != nil {
		// A connection left in a failed transaction is closed by the pool.
		_, _ = conn.Exec(ctx, "ROLLBACK")
		failAll(err)
		return
	}
	s.wake(t.told) // this node's own waiters, at once
}

// beginBatch opens the transaction of jobs.
func (s *Store) beginBatch(ctx context.Context, conn *pgx.Conn, jobs []*job) (*tx, error) {
	var names []string
	for _, j := range jobs {
		names = append(names, j.names...)
	}
	t := &tx{s: s, conn: conn, ctx: ctx, names: sorted(names)}
	return t, t.begin(jobs)
}

// run runs one job's rules over the transaction; a job that fails is
// undone, and the others keep what they did. A job whose rules panic (a
// bug) fails alone too, as a request would under net/http's recovery:
// the committer must go on serving the node's other changes.
func (t *tx) run(j *job) {
	t.jobNames, t.jobPool = j.names, j.opts.Pool
	m := t.mark()
	defer func() {
		if p := recover(); p != nil {
			t.restore(m)
			j.err = fmt.Errorf("a change's rules failed: %v\n%s", p, debug.Stack())
		}
	}()
	if err := j.apply(t); err != nil {
		t.restore(m)
		j.err = err
	}
}

// mark is what a transaction had staged before a job ran.
type mark struct {
	locks      map[string]lock.Lock
	queues     map[string][]txn.Waiter
	put        map[queueKey]queueRow
	gone, told int
	events     int
	memo       map[string]*idempotency.Entry
	pools      map[string]poolState
}

// mark notes what t has staged. The maps are copied; the slices in them
// are not changed in place after (PutWaiter and RemoveWaiter copy a
// queue before they first change it: ownQueue).
func (t *tx) mark() mark {
	t.owned = nil
	return mark{locks: maps.Clone(t.locks), queues: maps.Clone(t.queues), put: maps.Clone(t.put),
		gone: len(t.gone), told: len(t.told), memo: t.memo, pools: t.pools, events: len(t.events)}
}

// restore takes t back to what it had staged at m.
func (t *tx) restore(m mark) {
	t.locks, t.queues, t.put, t.memo, t.pools = m.locks, m.queues, m.put, m.memo, m.pools
	t.owned = nil
	t.gone, t.told, t.events = t.gone[:m.gone], t.told[:m.told], t.events[:m.events]
}
