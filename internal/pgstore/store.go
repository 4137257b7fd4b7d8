// Package pgstore keeps the lock table in PostgreSQL, so that several
// locker nodes share one table. Every change runs the rules of
// internal/lock inside a transaction, under the lock's row lock, with the
// database's clock; fencing tokens come from one sequence. Waiters queue
// in the database, first come first served across nodes; a node is woken
// by LISTEN/NOTIFY when a lock it waits for may be granted, and re-checks
// every second in case a notification was lost.
package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
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
	// channel is the LISTEN/NOTIFY channel; the payload is a lock's name.
	channel = "locker"
)

// Errors of the store; the server maps them to its own.
var (
	// ErrHeld: the lock is held with another key, or others queue first,
	// or the wait ran out.
	ErrHeld = errors.New("held")
	// ErrNotHeld: a renewal by a requestor that holds nothing.
	ErrNotHeld = errors.New("not held")
	// ErrDropped: the node lost its place in the queue (the database did
	// not hear its heartbeat in time).
	ErrDropped = errors.New("dropped from the queue")
	// ErrKeyReused: an Idempotency-Key came again with another request.
	ErrKeyReused = errors.New("Idempotency-Key reused")
)

// State is a lock and its queue as a request sees them.
type State struct {
	Lock    lock.Lock      `json:"lock"`
	Waiting []lock.Waiting `json:"waiting"`
	// Replayed says this is the first answer to a request with the same
	// Idempotency-Key, given again; nothing changed.
	Replayed bool `json:"-"`
}

// Idem is a request's Idempotency-Key: Scope names the method, the lock
// and the key; Fingerprint the rest of the request.
type Idem struct{ Scope, Fingerprint string }

// outcome is what a request with an Idempotency-Key is answered again.
type outcome struct {
	State    State  `json:"state"`
	Old      *State `json:"old,omitempty"`
	Released int    `json:"released"`
}

// Retention is how long an outcome is kept for a retry.
const Retention = 24 * time.Hour

// Store is one node's view of the shared table.
type Store struct {
	pool *pgxpool.Pool
	node string // unique per process: its waiters are its own

	mu     sync.Mutex               // guards wakeup
	wakeup map[string][]chan string // the local waiters of each lock

	stop context.CancelFunc
	done sync.WaitGroup
}

// Open connects to the database at url, migrates its schema, and joins
// the table as a node called name (made unique with a random suffix).
func Open(ctx context.Context, url, name string) (*Store, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("LOCKER_DATABASE_URL: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	s := &Store{pool: pool, node: name + "-" + hex.EncodeToString(suffix), wakeup: map[string][]chan string{}}
	if err := s.beat(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	bg, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.done.Go(func() { s.heartbeats(bg) })
	s.done.Go(func() { s.listen(bg) })
	return s, nil
}

// Node is this node's name in the database.
func (s *Store) Node() string { return s.node }

// Close stops the node's heartbeat and listener and closes the pool. Its
// waiters, if any are left, are dropped by the other nodes.
func (s *Store) Close() {
	s.stop()
	s.done.Wait()
	s.pool.Close()
}

// Ready reports whether the database answers.
func (s *Store) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return s.pool.Ping(ctx)
}

// beat records that this node is alive.
func (s *Store) beat(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO locker_nodes (node, seen) VALUES ($1, clock_timestamp())
		ON CONFLICT (node) DO UPDATE SET seen = excluded.seen`, s.node)
	return err
}

// heartbeats beats until ctx is done, and drops the waiters of nodes that
// stopped beating, granting whoever is next.
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
			continue // the database is away; the next beat tries again
		}
		rows, err := s.pool.Query(ctx, `DELETE FROM locker_queue WHERE granted IS NULL AND node NOT IN
			(SELECT node FROM locker_nodes WHERE seen > clock_timestamp() - $1::interval) RETURNING name`, deadAfter.String())
		if err != nil {
			continue
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			continue
		}
		for _, name := range names {
			_, _, _ = s.change(ctx, name, nil, func(*tx) error { return nil }) // grants whoever is next
		}
		_, _ = s.pool.Exec(ctx, "DELETE FROM locker_requests WHERE at < clock_timestamp() - $1::interval", Retention.String())
	}
}

// listen wakes this node's waiters when a lock they wait for changes,
// reconnecting when the connection is lost.
func (s *Store) listen(ctx context.Context) {
	for ctx.Err() == nil {
		conn, err := s.pool.Acquire(ctx)
		if err == nil {
			if _, err = conn.Exec(ctx, "LISTEN "+channel); err == nil {
				for {
					n, err := conn.Conn().WaitForNotification(ctx)
					if err != nil {
						break
					}
					s.wake(n.Payload)
				}
			}
			conn.Hijack().Close(context.Background()) // a connection that listened is not given back
		}
		select {
		case <-ctx.Done():
		case <-time.After(recheck): // the waiters re-check meanwhile
		}
	}
}

// wake tells the local waiters of the lock called name to look again.
func (s *Store) wake(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.wakeup[name] {
		select {
		case ch <- name:
		default: // it is already told
		}
	}
}

// subscribe returns a channel that wake signals for name, and its cancel.
func (s *Store) subscribe(name string) (<-chan string, func()) {
	ch := make(chan string, 1)
	s.mu.Lock()
	s.wakeup[name] = append(s.wakeup[name], ch)
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		list := s.wakeup[name]
		for i, c := range list {
			if c == ch {
				s.wakeup[name] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(s.wakeup[name]) == 0 {
			delete(s.wakeup, name)
		}
	}
}

// queued is a waiter in the database.
type queued struct {
	id    int64
	req   lock.Request
	node  string
	since time.Time
}

// tx is one change to one lock, made under its row lock: the lock as it
// is now (leases settled by the database's clock) and its live queue.
type tx struct {
	pgx.Tx
	ctx   context.Context
	name  string
	now   time.Time
	lock  lock.Lock
	queue []queued
	err   error // the first error of next

	// What a request with an Idempotency-Key is answered again: set by
	// the change when it is to be remembered (refusals are not).
	keep     bool
	old      *State
	released int
}

// nodeTokens is the per-node counter the planted bug PGNodeTokens uses.
var nodeTokens atomic.Uint64

// next returns the next fencing token from the sequence.
func (t *tx) next() uint64 {
	if faults.Planted == faults.PGNodeTokens {
		return nodeTokens.Add(1)
	}
	var token int64
	if err := t.QueryRow(t.ctx, "SELECT nextval('locker_tokens')").Scan(&token); err != nil && t.err == nil {
		t.err = err
	}
	return uint64(token)
}

// state returns the lock and its queue as the API shows them.
func (t *tx) state() State {
	st := State{Lock: t.lock.Clone()}
	for _, q := range t.queue {
		st.Waiting = append(st.Waiting, lock.Waiting{Key: q.req.Key, Requestor: q.req.Requestor, Since: q.since})
	}
	return st
}

// change runs f on the lock called name in a transaction, under the row
// lock: the leases that ran out by the database's clock are ended first,
// and after f the head of the queue is granted whatever it can be. The
// waiters of the lock, on every node, are told when it commits. A request
// seen before, by its Idempotency-Key, gets its first outcome (replay)
// and changes nothing.
func (s *Store) change(ctx context.Context, name string, idem *Idem, f func(*tx) error) (st State, replay *outcome, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(ptx pgx.Tx) error {
		t, err := s.begin(ctx, ptx, name, true)
		if err != nil {
			return err
		}
		if replay, err = t.recall(idem); err != nil || replay != nil {
			return err
		}
		if err := f(t); err != nil {
			return err
		}
		if err := t.grantQueue(); err != nil {
			return err
		}
		if err := t.save(); err != nil {
			return err
		}
		st = t.state()
		if t.keep {
			return t.remember(idem, outcome{State: st, Old: t.old, Released: t.released})
		}
		return nil
	})
	return st, replay, err
}

// recall returns the outcome of the request idem names, if it was seen.
func (t *tx) recall(idem *Idem) (*outcome, error) {
	if idem == nil {
		return nil, nil
	}
	var fingerprint string
	var raw []byte
	var at time.Time
	err := t.QueryRow(t.ctx, "SELECT fingerprint, outcome, at FROM locker_requests WHERE scope = $1 AND at > $2",
		idem.Scope, t.now.Add(-Retention)).Scan(&fingerprint, &raw, &at)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, err
	case fingerprint != idem.Fingerprint:
		return nil, fmt.Errorf("%w: it came at %s with another request; send a new key with a new request", ErrKeyReused, at.UTC().Format(time.RFC3339))
	}
	var o outcome
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, fmt.Errorf("reading a remembered outcome: %w", err)
	}
	o.State.Replayed = true
	return &o, nil
}

// remember keeps o as the answer to the request idem names.
func (t *tx) remember(idem *Idem, o outcome) error {
	if idem == nil {
		return nil
	}
	raw, err := json.Marshal(o)
	if err != nil {
		return err
	}
	_, err = t.Exec(t.ctx, `INSERT INTO locker_requests (scope, fingerprint, outcome, at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (scope) DO UPDATE SET fingerprint = excluded.fingerprint, outcome = excluded.outcome, at = excluded.at`,
		idem.Scope, idem.Fingerprint, raw, t.now)
	return err
}

// begin locks the row of the lock called name (made if missing) and
// reads the lock, the clock and the queue of live nodes. Without
// forUpdate it only reads: what a reader sees.
func (s *Store) begin(ctx context.Context, ptx pgx.Tx, name string, forUpdate bool) (*tx, error) {
	t := &tx{Tx: ptx, ctx: ctx, name: name}
	query := "SELECT lock FROM locker_locks WHERE name = $1"
	if forUpdate {
		if _, err := ptx.Exec(ctx, "INSERT INTO locker_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", name); err != nil {
			return nil, err
		}
		if faults.Planted != faults.PGNoRowLock {
			query += " FOR UPDATE"
		}
	}
	var raw []byte
	if err := ptx.QueryRow(ctx, query, name).Scan(&raw); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	if err := ptx.QueryRow(ctx, "SELECT date_trunc('milliseconds', clock_timestamp())").Scan(&t.now); err != nil {
		return nil, err
	}
	t.now = t.now.UTC()
	if raw != nil {
		if err := json.Unmarshal(raw, &t.lock); err != nil {
			return nil, fmt.Errorf("lock %q in the database: %w", name, err)
		}
	}
	for _, h := range t.lock.Holders {
		if !h.ExpiresAt.IsZero() && !h.ExpiresAt.After(t.now) {
			t.lock, _ = lock.Expire(t.lock, h.Name, h.ExpiresAt)
		}
	}
	rows, err := ptx.Query(ctx, `SELECT id, key, requestor, note, ttl_ms, named, node, since FROM locker_queue
		WHERE name = $1 AND granted IS NULL
		AND node IN (SELECT node FROM locker_nodes WHERE seen > $2::timestamptz - $3::interval)
		ORDER BY id`, name, t.now, deadAfter.String())
	if err != nil {
		return nil, err
	}
	t.queue, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (queued, error) {
		var q queued
		var ttl int64
		err := row.Scan(&q.id, &q.req.Key, &q.req.Requestor, &q.req.Note, &ttl, &q.req.Named, &q.node, &q.since)
		q.req.TTL, q.since = time.Duration(ttl)*time.Millisecond, q.since.UTC()
		return q, err
	})
	return t, err
}

// grantQueue grants the head of the queue, and the same-key requests right
// behind it, as far as the holders allow.
func (t *tx) grantQueue() error {
	reqs := make([]lock.Request, len(t.queue))
	for i, q := range t.queue {
		reqs[i] = q.req
	}
	var n int
	t.lock, n = lock.GiveQueue(t.lock, reqs, t.now, t.next)
	if t.err != nil {
		return t.err
	}
	if n == 0 {
		return nil
	}
	granted, err := json.Marshal(t.lock)
	if err != nil {
		return err
	}
	ids := make([]int64, n)
	for i := range n {
		ids[i] = t.queue[i].id
	}
	if _, err := t.Exec(t.ctx, "UPDATE locker_queue SET granted = $1 WHERE id = ANY($2)", granted, ids); err != nil {
		return err
	}
	t.queue = t.queue[n:]
	return nil
}

// save writes the lock back and tells every node's waiters.
func (t *tx) save() error {
	var raw []byte
	if !t.lock.Free() {
		var err error
		if raw, err = json.Marshal(t.lock); err != nil {
			return err
		}
	}
	if _, err := t.Exec(t.ctx, "UPDATE locker_locks SET lock = $2 WHERE name = $1", t.name, raw); err != nil {
		return err
	}
	_, err := t.Exec(t.ctx, "SELECT pg_notify($1, $2)", channel, t.name)
	return err
}
