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
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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
	// changeTimeout bounds a change that must run to its end whatever its
	// client does (the one that queues a waiter).
	changeTimeout = 10 * time.Second
	// channel is the LISTEN/NOTIFY channel; the payload is a lock's name.
	channel = "locker"
	// PlaceHold is how long a waiter with an Idempotency-Key whose wait ran
	// out keeps its place in the queue: a client that waits in rounds (the
	// Concourse resource) asks again at once, and must not go to the back
	// each time. The file store keeps places as long.
	PlaceHold = 30 * time.Second
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
	// ErrUncertain: the connection failed while the change was being
	// committed: it may or may not have been made. Every other error
	// means it was not.
	ErrUncertain = errors.New("the change may or may not have been committed")
)

// State is a lock and its queue as a request sees them.
type State struct {
	Lock    lock.Lock      `json:"lock"`
	Waiting []lock.Waiting `json:"waiting"`
	// Replayed says this is the first answer to a request with the same
	// Idempotency-Key, given again; nothing changed.
	Replayed bool `json:"-"`
}

// Expiry is a hold a lease ended.
type Expiry struct {
	Key, Holder string
	Token       uint64
	At          time.Time // when the lease ran out
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

	// expired, when set, is told of the holds each committed change of
	// this node ended because their lease ran out.
	expired atomic.Pointer[func(name string, holds []Expiry)]

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

// OnExpired has f told, after each change of this node commits, of the
// holds it ended because their lease ran out.
func (s *Store) OnExpired(f func(name string, holds []Expiry)) { s.expired.Store(&f) }

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
			_, _, _ = s.change(ctx, name, nil, false, func(*tx) error { return nil }) // grants whoever is next
		}
		_, _ = s.pool.Exec(ctx, "DELETE FROM locker_requests WHERE at < clock_timestamp() - $1::interval", Retention.String())
		_, _ = s.pool.Exec(ctx, "DELETE FROM locker_queue WHERE left_at < clock_timestamp() - $1::interval", PlaceHold.String())
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
