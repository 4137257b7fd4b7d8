package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
)

// A change is two round trips to the database: one batch opens the
// transaction, takes the lock's row lock and reads what the rules need;
// the other writes the outcome and commits. Pipelined statements run in
// order, so the queue is read after the row lock is held.

// queued is a waiter in the database.
type queued struct {
	id     int64
	req    lock.Request
	node   string
	since  time.Time
	ticket string // a random name for its row, to find it when the commit that made it is in doubt
}

// tx is one change to one lock, made under its row lock: the lock as it
// is now (leases settled by the database's clock) and its live queue.
type tx struct {
	conn  *pgx.Conn
	ctx   context.Context
	name  string
	now   time.Time
	lock  lock.Lock
	queue []queued
	token int64 // a token fetched ahead for an acquire; 0 once used
	err   error // the first error of next

	// What a request with an Idempotency-Key is answered again: set by
	// the change when it is to be remembered (refusals are not).
	keep     bool
	old      *State
	released int

	before  []byte   // the lock as read, encoded; nil when it was free
	expired []Expiry // holds whose lease ran out, ended by this change
	granted []int64  // queue rows granted by this change
	waited  bool     // the lock had waiters: tell the nodes
	insert  *queued  // a waiter to add to the queue (Acquire)
	id      int64    // its row, once added
}

// nodeTokens is the per-node counter the planted bug PGNodeTokens uses.
var nodeTokens atomic.Uint64

// next returns the next fencing token from the sequence.
func (t *tx) next() uint64 {
	if faults.Planted == faults.PGNodeTokens {
		return nodeTokens.Add(1)
	}
	if t.token != 0 {
		token := t.token
		t.token = 0
		return uint64(token)
	}
	var token int64
	if err := t.conn.QueryRow(t.ctx, "SELECT nextval('locker_tokens')").Scan(&token); err != nil && t.err == nil {
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
// and changes nothing. token fetches a fencing token ahead (an acquire).
func (s *Store) change(ctx context.Context, name string, idem *Idem, token bool, f func(*tx) error) (st State, replay *outcome, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return State{}, nil, err
	}
	defer conn.Release()
	t, replay, err := s.begin(ctx, conn, name, idem, token)
	if err == nil && replay == nil {
		if err = f(t); err == nil {
			if err = t.commit(idem); err != nil {
				err = fmt.Errorf("%w: %w", ErrUncertain, err)
			}
		}
	}
	if err != nil || replay != nil {
		// A connection left in a failed transaction is closed by the pool.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		return State{}, replay, err
	}
	if f := s.expired.Load(); f != nil && len(t.expired) > 0 {
		(*f)(name, t.expired)
	}
	return t.state(), nil, nil
}

// begin opens the transaction and, in one round trip, makes the lock's
// row if missing, takes its row lock, and reads the lock, the clock, the
// queue of live nodes, the outcome remembered for idem and, with token, a
// fencing token.
func (s *Store) begin(ctx context.Context, conn *pgxpool.Conn, name string, idem *Idem, token bool) (*tx, *outcome, error) {
	t := &tx{conn: conn.Conn(), ctx: ctx, name: name}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("INSERT INTO locker_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", name)
	forUpdate := " FOR UPDATE"
	if faults.Planted == faults.PGNoRowLock {
		forUpdate = ""
	}
	b.Queue("SELECT lock, date_trunc('milliseconds', clock_timestamp()) FROM locker_locks WHERE name = $1"+forUpdate, name)
	queueQuery(b, name)
	if idem != nil {
		b.Queue("SELECT fingerprint, outcome, at FROM locker_requests WHERE scope = $1 AND at > clock_timestamp() - $2::interval",
			idem.Scope, Retention.String())
	}
	if token && faults.Planted != faults.PGNodeTokens {
		b.Queue("SELECT nextval('locker_tokens')")
	}
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, nil, err
	}
	if _, err := br.Exec(); err != nil {
		return nil, nil, err
	}
	var raw []byte
	if err := br.QueryRow().Scan(&raw, &t.now); err != nil {
		return nil, nil, err
	}
	if err := t.read(raw, br, true); err != nil {
		return nil, nil, err
	}
	var replay *outcome
	if idem != nil {
		var err error
		if replay, err = recall(br, idem); err != nil {
			return nil, nil, err
		}
	}
	if token && faults.Planted != faults.PGNodeTokens {
		if err := br.QueryRow().Scan(&t.token); err != nil {
			return nil, nil, err
		}
	}
	return t, replay, br.Close()
}

// queueQuery queues the read of the lock's waiters from live nodes.
func queueQuery(b *pgx.Batch, name string) {
	b.Queue(`SELECT id, key, requestor, note, ttl_ms, named, node, since FROM locker_queue
		WHERE name = $1 AND granted IS NULL AND left_at IS NULL
		AND node IN (SELECT node FROM locker_nodes WHERE seen > clock_timestamp() - $2::interval)
		ORDER BY id`, name, deadAfter.String())
}

// read takes the lock from raw, ends the leases that ran out by t.now,
// and reads the queue's rows from br. For a change, it keeps the lock as
// read, encoded as commit encodes it, so that commit writes only a lock
// that changed.
func (t *tx) read(raw []byte, br pgx.BatchResults, forChange bool) error {
	t.now = t.now.UTC()
	if raw != nil {
		if err := json.Unmarshal(raw, &t.lock); err != nil {
			return fmt.Errorf("lock %q in the database: %w", t.name, err)
		}
		if forChange && !t.lock.Free() {
			t.before, _ = json.Marshal(t.lock) // it was just decoded: it encodes
		}
	}
	for _, h := range t.lock.Holders {
		if !h.ExpiresAt.IsZero() && !h.ExpiresAt.After(t.now) {
			t.expired = append(t.expired, Expiry{Key: t.lock.Key, Holder: h.Name, Token: t.lock.Token, At: h.ExpiresAt})
			t.lock, _ = lock.Expire(t.lock, h.Name, h.ExpiresAt)
		}
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	t.queue, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (queued, error) {
		var q queued
		var ttl int64
		err := row.Scan(&q.id, &q.req.Key, &q.req.Requestor, &q.req.Note, &ttl, &q.req.Named, &q.node, &q.since)
		q.req.TTL, q.since = time.Duration(ttl)*time.Millisecond, q.since.UTC()
		return q, err
	})
	t.waited = len(t.queue) > 0
	return err
}

// recall reads the outcome remembered for idem, if it was seen.
func recall(br pgx.BatchResults, idem *Idem) (*outcome, error) {
	var fingerprint string
	var raw []byte
	var at time.Time
	err := br.QueryRow().Scan(&fingerprint, &raw, &at)
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

// grantQueue grants the head of the queue, and the same-key requests right
// behind it, as far as the holders allow.
func (t *tx) grantQueue() error {
	reqs := make([]lock.Request, len(t.queue))
	for i, q := range t.queue {
		reqs[i] = q.req
	}
	var n int
	t.lock, n = lock.GiveQueue(t.lock, reqs, t.now, t.next)
	for _, q := range t.queue[:n] {
		t.granted = append(t.granted, q.id)
	}
	t.queue = t.queue[n:]
	return t.err
}

// commit grants the queue what it can, then, in one round trip, writes the
// lock, the grants, a new waiter, the outcome for idem, tells the nodes,
// and commits. Each statement's answer is read, in order, by Close.
func (t *tx) commit(idem *Idem) error {
	if err := t.grantQueue(); err != nil {
		return err
	}
	var raw []byte
	if !t.lock.Free() {
		var err error
		if raw, err = json.Marshal(t.lock); err != nil {
			return err
		}
	}
	b := &pgx.Batch{}
	// A change that changed nothing (a waiter's re-check, most often)
	// writes nothing.
	if !bytes.Equal(raw, t.before) {
		b.Queue("UPDATE locker_locks SET lock = $2 WHERE name = $1", t.name, raw)
	}
	if len(t.granted) > 0 {
		b.Queue("UPDATE locker_queue SET granted = $1 WHERE id = ANY($2)", raw, t.granted)
	}
	if t.insert != nil {
		t.queueWaiter(b, idem)
	}
	if t.waited {
		b.Queue("SELECT pg_notify($1, $2)", channel, t.name)
	}
	if t.keep && idem != nil {
		o := outcome{State: t.state(), Old: t.old, Released: t.released}
		out, err := json.Marshal(o)
		if err != nil {
			return err
		}
		b.Queue(`INSERT INTO locker_requests (scope, fingerprint, outcome, at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (scope) DO UPDATE SET fingerprint = excluded.fingerprint, outcome = excluded.outcome, at = excluded.at`,
			idem.Scope, idem.Fingerprint, out, t.now)
	}
	b.Queue("COMMIT")
	return t.conn.SendBatch(t.ctx, b).Close()
}

// queueWaiter queues the statement that puts t.insert in the queue and
// reads its row's id into t.id. A request with an Idempotency-Key takes
// the place its earlier round kept, if any, and has waited since then.
func (t *tx) queueWaiter(b *pgx.Batch, idem *Idem) {
	q := t.insert
	var scope *string
	if idem != nil {
		scope = &idem.Scope
	}
	b.Queue(`WITH taken AS (
			UPDATE locker_queue SET node = $2, key = $3, requestor = $4, note = $5, ttl_ms = $6, named = $7, left_at = NULL, ticket = $11
			WHERE id = (SELECT id FROM locker_queue WHERE name = $1 AND idem = $9 AND granted IS NULL
				AND left_at > $8::timestamptz - $10::interval ORDER BY id LIMIT 1)
			RETURNING id),
		added AS (
			INSERT INTO locker_queue (name, node, key, requestor, note, ttl_ms, named, since, idem, ticket)
			SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $11 WHERE NOT EXISTS (SELECT 1 FROM taken)
			RETURNING id)
		SELECT id FROM taken UNION ALL SELECT id FROM added`,
		t.name, q.node, q.req.Key, q.req.Requestor, q.req.Note, q.req.TTL.Milliseconds(), q.req.Named, t.now, scope, PlaceHold.String(), q.ticket).
		QueryRow(func(row pgx.Row) error { return row.Scan(&t.id) })
}

// remember keeps o as the answer to the request idem names, in ptx.
func remember(ctx context.Context, ptx pgx.Tx, idem *Idem, o outcome) error {
	if idem == nil {
		return nil
	}
	raw, err := json.Marshal(o)
	if err != nil {
		return err
	}
	_, err = ptx.Exec(ctx, `INSERT INTO locker_requests (scope, fingerprint, outcome, at) VALUES ($1, $2, $3, clock_timestamp())
		ON CONFLICT (scope) DO UPDATE SET fingerprint = excluded.fingerprint, outcome = excluded.outcome, at = excluded.at`,
		idem.Scope, idem.Fingerprint, raw)
	return err
}
