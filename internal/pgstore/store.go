// Package pgstore keeps the lock table in PostgreSQL, so that several
// locker nodes share one table. It implements the transactions of
// internal/txn and nothing of the rules: a transaction is a database
// transaction under the row locks of the locks it names, taken in name
// order, with the database's clock; fencing tokens come from one
// sequence. Queues are rows, first come first served across nodes; a
// node is told by LISTEN/NOTIFY when one of its waiters is granted, and
// its waiters look again every second in case a notification was lost.
package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/stream"
	"github.com/locker-ci/locker/internal/txn"
)

// Tuned for several nodes.
const (
	// heartbeat is how often a node says it is alive; after deadAfter
	// without one, its waiters are dropped and never granted.
	heartbeat = time.Second
	deadAfter = 5 * time.Second
	// recheck is how often a waiter looks at its lock without being told:
	// a lost notification, or a lease that ran out with no one to notice,
	// costs at most this.
	recheck = time.Second
	// channel is the LISTEN/NOTIFY channel; the payload is the IDs of the
	// waiters a change granted.
	channel = "locker"
	// keptPlaces is how long a place kept in a queue for a client's next
	// round stays in the database when no change comes to its lock: longer
	// than the engine keeps one (30 s).
	keptPlaces = time.Minute
	// idleInTransaction is how long the database lets a session of this
	// node sit idle in a transaction before it ends it (see Open).
	idleInTransaction = 5 * time.Second
)

// Store is one node's view of the shared table.
type Store struct {
	pool *pgxpool.Pool
	node string // unique per process: its waiters are its own
	keep txn.History

	onEvents      func([]lock.Event) // told of the events every node commits
	onCredentials func()             // told that the credentials may have changed
	sent          stream.Seen        // the events handed to onEvents; pollEvents'
	read          txn.Mark           // where pollEvents' next read starts; its own
	eventsTold    chan struct{}      // a node told of events (room for one)
	toldAt        atomic.Int64       // when this node last told the others of events, in Unix nanoseconds
	trimmedTo     int64              // the highest event ID when history was last trimmed; the heartbeats'
	// reachedSince is since when (Unix nanoseconds) this node's heartbeats
	// have reached the database without a miss; 0 while they miss. Only a
	// node that has been beating for deadAfter judges others dead: after
	// a failover, or an outage, every node's last beat is old, and
	// the others need a beat or two of their own to show they are alive.
	reachedSince atomic.Int64

	mu       sync.Mutex                // guards watchers
	watchers map[int64][]chan struct{} // this node's waiters, by ID

	jobs       chan *job     // changes waiting for a committer (batch.go)
	batches    atomic.Int64  // transactions the committers ran, for the tests
	closing    chan struct{} // closed by Close: no more changes
	committing sync.WaitGroup

	stop context.CancelFunc
	done sync.WaitGroup

	// standbyAt is when a new connection last reached a standby (Unix
	// ns), for Ready: a connection attempt that is slow to fail says so.
	standbyAt *atomic.Int64

	leadMu sync.Mutex    // guards lead
	lead   *pgxpool.Conn // the connection that holds the lead (Leads); nil while another node has it
}

// Options are a node's settings beyond its database.
type Options struct {
	// History is how much of each lock's history to keep (zero: none).
	// Every node of a database should keep the same.
	History txn.History
	// Events, if set, is told of the events every node commits, as they
	// commit: each lock's in order. It runs on the node's listener and
	// must be quick.
	Events func([]lock.Event)
	// CredentialsChanged, if set, is told when a node (this one too)
	// changed a credential, and every heartbeat: the credentials are to be
	// read again. It must be quick.
	CredentialsChanged func()
	// NewPrimary, if set, is told when this node finds the database on a
	// primary the table has not seen (a standby promoted), and moved the
	// sequences past the old one's (primary.go).
	NewPrimary func(old, now Primary)
}

// Open connects to the database at url, migrates its schema, and joins
// the table as a node called name (made unique with a random suffix).
func Open(ctx context.Context, url, name string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("LOCKER_DATABASE_URL: %w", err)
	}
	// A node that vanishes mid-transaction (its machine gone, its network
	// cut) would keep its rows locked until the database notices the dead
	// connection, which may take hours; every change to those locks, and
	// with group commit every change of the nodes that wait on them, would
	// wait. The database ends such a transaction after this long idle.
	// A transaction of ours is never idle that long: its two round trips
	// follow each other at once.
	if _, set := cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"]; !set {
		cfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = strconv.Itoa(int(idleInTransaction.Milliseconds()))
	}
	standbyAt := new(atomic.Int64) // when a new connection last reached a standby (Unix ns)
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		err := followPrimary(ctx, conn, opts.NewPrimary)
		if errors.Is(err, txn.ErrStandby) {
			standbyAt.Store(time.Now().UnixNano())
		}
		return err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("LOCKER_DATABASE_URL: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	// The connections made so far were checked before the table of
	// primaries was there (a new database): say which primary this is now,
	// so that the first connection to another moves the sequences.
	if err := pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error { return followPrimary(ctx, c.Conn(), opts.NewPrimary) }); err != nil {
		pool.Close()
		return nil, err
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	s := &Store{pool: pool, standbyAt: standbyAt, node: name + "-" + hex.EncodeToString(suffix), keep: opts.History, onEvents: opts.Events, onCredentials: opts.CredentialsChanged, watchers: map[int64][]chan struct{}{},
		eventsTold: make(chan struct{}, 1), jobs: make(chan *job), closing: make(chan struct{})}
	if err := s.beat(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	s.reachedSince.Store(time.Now().UnixNano())
	if s.onEvents != nil && s.keep.Events > 0 {
		// The stream hands on the events committed from now on.
		var last int64
		var running string
		if err := pool.QueryRow(ctx, "SELECT coalesce(max(id), 0), pg_snapshot_xmin(pg_current_snapshot())::text FROM locker_events").Scan(&last, &running); err != nil {
			pool.Close()
			return nil, err
		}
		s.sent.Max = uint64(last)
		if s.read.Running, err = strconv.ParseUint(running, 10, 64); err != nil {
			pool.Close()
			return nil, fmt.Errorf("the oldest running transaction %q: %w", running, err)
		}
		s.read.After = s.sent.Max
	}
	for range committers {
		s.committing.Go(s.commitLoop)
	}
	bg, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.done.Go(func() { s.heartbeats(bg) })
	s.done.Go(func() { s.listen(bg) })
	if s.onEvents != nil && s.keep.Events > 0 {
		s.done.Go(func() { s.pollEvents(bg) })
	}
	return s, nil
}

// Node is this node's name in the database.
func (s *Store) Node() string { return s.node }

// Close stops the node's heartbeat and listener, takes the node out of
// the table of nodes, and closes the pool. Its waiters, if any are left,
// are dropped by the other nodes.
func (s *Store) Close(bool) error {
	close(s.closing)
	s.committing.Wait() // the transactions in flight end first
	s.stop()
	s.done.Wait()
	s.leadMu.Lock()
	if s.lead != nil {
		s.lead.Hijack().Close(context.Background()) // lets the lead go at once
		s.lead = nil
	}
	s.leadMu.Unlock()
	// A node that leaves says so, so that locker migrate need not wait
	// for its heartbeat to grow old (best effort: a node that cannot
	// reach the database is taken for dead after a few seconds anyway).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = s.pool.Exec(ctx, "DELETE FROM locker_nodes WHERE node = $1", s.node)
	s.pool.Close()
	return nil
}

// beat records that this node is alive.
func (s *Store) beat(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO locker_nodes (node, seen) VALUES ($1, clock_timestamp())
		ON CONFLICT (node) DO UPDATE SET seen = excluded.seen`, s.node)
	return err
}

// heartbeats beats until ctx is done, and forgets the outcomes and the
// kept places that are past their time.
func (s *Store) heartbeats(ctx context.Context) {
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.beat(ctx) != nil {
			s.reachedSince.Store(0)
			continue // the database is away; the next beat tries again
		}
		s.reachedSince.CompareAndSwap(0, time.Now().UnixNano())
		_, _ = s.pool.Exec(ctx, "DELETE FROM locker_requests WHERE at < clock_timestamp() - $1::interval", idempotency.Retention.String())
		s.sweep(ctx)
		s.trimHistory(ctx)
		_, _ = s.pool.Exec(ctx, "DELETE FROM locker_queue WHERE left_at < clock_timestamp() - $1::interval", keptPlaces.String())
		if s.onCredentials != nil {
			s.onCredentials() // a notification may have been lost with the listener's connection
		}
	}
}

// sweep deletes the rows of free locks that no one waits for, a batch a
// heartbeat: a name sent once must not cost a row for ever. A row in use
// (its row lock held) is skipped; a transaction that was about to lock a
// row deleted here begins again (errRowGone). Rows are not deleted as the
// lock is freed: a lock taken again at once would make and delete a row
// each time (5-9% fewer changes a second in make bench).
func (s *Store) sweep(ctx context.Context) {
	_, _ = s.pool.Exec(ctx, `DELETE FROM locker_locks WHERE name IN (
		SELECT name FROM locker_locks l WHERE lock IS NULL AND NOT EXISTS (SELECT 1 FROM locker_queue q WHERE q.name = l.name)
		LIMIT 1000 FOR UPDATE SKIP LOCKED)`)
}

// Run has settle look, each heartbeat, at the locks whose leases ran out,
// and at those whose queues hold waiters of nodes that stopped beating,
// or of this node with no request left (orphans), until ctx is done: the engine takes them out, gives back what they were
// granted, and grants whoever is next.
func (s *Store) Run(ctx context.Context, settle func(ctx context.Context, names []string) error) {
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rows, err := s.pool.Query(ctx, `SELECT DISTINCT name FROM locker_queue WHERE left_at IS NULL AND (node NOT IN
			(SELECT node FROM locker_nodes WHERE seen > clock_timestamp() - $1::interval)
			OR node = $2 AND NOT (id = ANY($3)) AND since < clock_timestamp() - $4::interval)`,
			s.deadAfter(), s.node, s.watched(), orphanAfter.String())
		if err != nil {
			continue
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			continue
		}
		// And the locks whose leases ran out: every node looks, and the
		// row locks let one end each lease once.
		rows, err = s.pool.Query(ctx, `SELECT name FROM locker_locks WHERE expires <= clock_timestamp() ORDER BY expires LIMIT 1000`)
		if err != nil {
			continue
		}
		expired, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(names)+len(expired) == 0 {
			continue
		}
		_ = settle(ctx, sorted(append(names, expired...)))
	}
}

// deadAfter returns how long a node may go without a heartbeat before
// this node takes it for dead (an interval, as the queries take it):
// deadAfter, once this node's own beats have reached the database for
// that long; until then, never.
func (s *Store) deadAfter() string {
	if since := s.reachedSince.Load(); since == 0 || time.Since(time.Unix(0, since)) <= deadAfter {
		return "100 years"
	}
	return deadAfter.String()
}

// orphanAfter is how long a waiter of this node may have no request
// watching it before it is taken for abandoned.
const orphanAfter = 2 * time.Second

// orphans marks abandoned the waiters of this node that no request
// watches any more (one whose request ended while the database could not
// be reached, and whose takeOut gave up): as a dead node's, the engine
// takes them out and gives back what they were granted. A request
// watches its waiter from the transaction that queues it.
func (s *Store) orphans(queues map[string][]txn.Waiter, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, q := range queues {
		for i, w := range q {
			if w.Owner == s.node && w.Left.IsZero() && len(s.watchers[w.ID]) == 0 && now.Sub(w.Since) > orphanAfter {
				q[i].Abandoned = true
			}
		}
		queues[name] = q
	}
}

// watched returns the IDs of the waiters this node's requests watch.
func (s *Store) watched() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]int64, 0, len(s.watchers))
	for id := range s.watchers {
		ids = append(ids, id)
	}
	return ids
}

// listen wakes this node's waiters when a lock they wait for changes, and
// pollEvents when a node tells of events, reconnecting when the
// connection is lost.
func (s *Store) listen(ctx context.Context) {
	for ctx.Err() == nil {
		conn, err := s.pool.Acquire(ctx)
		if err == nil {
			_, err = conn.Exec(ctx, "LISTEN "+channel+"; LISTEN "+eventsChannel+"; LISTEN "+credentialsChannel)
			for err == nil {
				var n *pgconn.Notification
				if n, err = conn.Conn().WaitForNotification(ctx); err != nil {
					break
				}
				if n.Channel == credentialsChannel {
					if s.onCredentials != nil {
						s.onCredentials()
					}
					continue
				}
				if n.Channel == eventsChannel {
					select {
					case s.eventsTold <- struct{}{}:
					default: // pollEvents has yet to look
					}
					continue
				}
				s.wakePayload(n.Payload)
			}
			conn.Hijack().Close(context.Background()) // a connection that listened is not given back
		}
		select {
		case <-ctx.Done():
		case <-time.After(recheck): // the waiters re-check meanwhile
		}
	}
}

// wake signals the watchers of the waiters with ids, if they are this
// node's.
func (s *Store) wake(ids []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		for _, ch := range s.watchers[id] {
			select {
			case ch <- struct{}{}:
			default: // told already
			}
		}
	}
}

// wakePayload wakes the waiters a notification names: granted IDs,
// separated by commas.
func (s *Store) wakePayload(payload string) {
	var ids []int64
	for f := range strings.SplitSeq(payload, ",") {
		if id, err := strconv.ParseInt(f, 10, 64); err == nil {
			ids = append(ids, id)
		}
	}
	s.wake(ids)
}

// Watch returns a channel signalled when waiter id is granted, by any
// node.
func (s *Store) Watch(id int64) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.watchers[id] = append(s.watchers[id], ch)
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.watchers[id] = slices.DeleteFunc(s.watchers[id], func(c chan struct{}) bool { return c == ch })
		if len(s.watchers[id]) == 0 {
			delete(s.watchers, id)
		}
	}
}

// Recheck is how often a waiter looks without being told: notifications
// are lost when the listening connection is, and a lease that runs out
// is ended only by a change.
func (s *Store) Recheck() time.Duration { return recheck }

// Now is this node's clock, to the millisecond; leases are judged by the
// database's.
func (s *Store) Now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

// Broken never fires: every change is the database's, and one that failed
// was not made, or is answered as in doubt.
func (s *Store) Broken() <-chan error { return nil }
