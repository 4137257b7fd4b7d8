package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// How a transaction opens: one pipelined round trip that makes the named
// locks' rows if missing, takes their row locks, and reads the locks, the
// clock, their queues and what the changes asked for ahead.

// begin opens the transaction and, in one round trip, makes the locks'
// rows if missing, takes their row locks in name order, and reads the
// locks, the clock, their queues and what the jobs' options ask for.
func (t *tx) begin(jobs []*job) error {
	var scopes, pools []string
	var tokens, waiters int
	for _, j := range jobs {
		if j.opts.Recall != "" {
			scopes = append(scopes, j.opts.Recall)
		}
		if j.opts.Pool != "" {
			pools = append(pools, j.opts.Pool)
		}
		if j.opts.Token {
			tokens++
		}
		if j.opts.NewWait {
			waiters++
		}
	}
	scopes, pools = sorted(scopes), sorted(pools)
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	if len(t.names) == 1 { // most changes: the plainest statements
		b.Queue("INSERT INTO locker_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", t.names[0])
		b.Queue("SELECT name, lock FROM locker_locks WHERE name = $1 FOR UPDATE", t.names[0])
	} else {
		b.Queue("INSERT INTO locker_locks (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING", t.names)
		b.Queue("SELECT name, lock FROM locker_locks WHERE name = ANY($1) ORDER BY name FOR UPDATE", t.names)
	}
	t.queueReads(b)
	for _, scope := range scopes {
		queueRecall(b, scope)
	}
	queueNextvals(b, "locker_tokens", tokens)
	queueNextvals(b, "locker_queue_id_seq", waiters)
	switch len(pools) {
	case 0:
	case 1:
		b.Queue("SELECT name, pool FROM locker_pools WHERE name = $1 FOR UPDATE", pools[0])
	default:
		b.Queue("SELECT name, pool FROM locker_pools WHERE name = ANY($1) ORDER BY name FOR UPDATE", pools)
	}
	br := t.conn.SendBatch(t.ctx, b)
	defer br.Close()
	for range 2 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	if err := t.read(br, true); err != nil {
		return err
	}
	if t.rows < len(t.names) {
		return errRowGone
	}
	for _, scope := range scopes {
		if err := t.readRecall(br, scope); err != nil {
			return err
		}
	}
	var err error
	if t.tokens, err = readNextvals(br, tokens); err != nil {
		return err
	}
	if t.waiterIDs, err = readNextvals(br, waiters); err != nil {
		return err
	}
	if len(pools) > 0 {
		if err := t.readPools(br, pools); err != nil {
			return err
		}
	}
	return br.Close()
}

// queueNextvals queues the fetch of n values of the sequence seq.
func queueNextvals(b *pgx.Batch, seq string, n int) {
	switch {
	case n == 1:
		b.Queue("SELECT nextval($1::text::regclass)", seq)
	case n > 1:
		b.Queue("SELECT nextval($1::text::regclass) FROM generate_series(1, $2)", seq, n)
	}
}

// readNextvals reads the n values queueNextvals fetched.
func readNextvals(br pgx.BatchResults, n int) ([]int64, error) {
	if n == 0 {
		return nil, nil
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// readPools reads the pools named, locked, into t.pools.
func (t *tx) readPools(br pgx.BatchResults, names []string) error {
	t.pools = make(map[string]poolState, len(names))
	for _, name := range names {
		t.pools[name] = poolState{}
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var raw []byte
		if err := rows.Scan(&name, &raw); err != nil {
			return err
		}
		var p lock.Pool
		if err := json.Unmarshal(raw, &p); err != nil {
			return fmt.Errorf("pool %q in the database: %w", name, err)
		}
		t.pools[name] = poolState{pool: p, there: true}
	}
	return rows.Err()
}

// errRowGone: a named lock's row was deleted (free, with no one waiting:
// see sweep) between the statement that made sure it was there and the
// one that locked it: the transaction must begin again.
var errRowGone = errors.New("a lock's row was deleted as it was locked")

// queueColumns are the columns of a waiter's row that readQueue reads; a
// waiter is abandoned when its node stopped beating (a place kept is not:
// its client may ask again through another node).
const queueColumns = `id, name, node, key, requestor, note, ttl_ms, named, since, idem, left_at, granted, round, set_of, claim_count, pool, coalesce(credential, ''), coalesce(removed, ''), priority, build,
	left_at IS NULL AND node NOT IN (SELECT node FROM locker_nodes WHERE seen > clock_timestamp() - $2::interval)`

// queueReads queues the reads of the clock and the named locks' queues.
func (t *tx) queueReads(b *pgx.Batch) {
	b.Queue("SELECT date_trunc('milliseconds', clock_timestamp())")
	if len(t.names) == 1 {
		b.Queue(`SELECT `+queueColumns+` FROM locker_queue WHERE name = $1 ORDER BY id`, t.names[0], t.s.deadAfter())
		return
	}
	b.Queue(`SELECT `+queueColumns+` FROM locker_queue WHERE name = ANY($1) ORDER BY id`, t.names, t.s.deadAfter())
}

// read reads the locks (unless they were read with the clock, by View),
// the clock and the queues from br. For a change it keeps each lock as
// read, encoded, so that commit writes only the locks that changed.
func (t *tx) read(br pgx.BatchResults, forChange bool) error {
	t.locks, t.before, t.queues = map[string]lock.Lock{}, map[string][]byte{}, map[string][]txn.Waiter{}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	for rows.Next() {
		var name string
		var raw []byte
		if err := rows.Scan(&name, &raw); err != nil {
			return err
		}
		t.rows++
		if raw == nil {
			continue
		}
		var l lock.Lock
		if err := json.Unmarshal(raw, &l); err != nil {
			return fmt.Errorf("lock %q in the database: %w", name, err)
		}
		t.locks[name] = l
		if forChange {
			t.before[name], _ = json.Marshal(l) // it was just decoded: it encodes
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if err := br.QueryRow().Scan(&t.now); err != nil {
		return err
	}
	t.now = t.now.UTC()
	rows, err = br.Query()
	if err != nil {
		return err
	}
	if err := readQueue(rows, t.queues); err != nil {
		return err
	}
	t.s.orphans(t.queues, t.now)
	return nil
}

// readQueue reads queue rows into queues, by lock.
func readQueue(rows pgx.Rows, queues map[string][]txn.Waiter) error {
	defer rows.Close()
	for rows.Next() {
		var (
			w       txn.Waiter
			name    string
			ttl     int64
			idem    *string
			left    *time.Time
			granted []byte
			pool    *string
			build   []byte
		)
		if err := rows.Scan(&w.ID, &name, &w.Owner, &w.Req.Key, &w.Req.Requestor, &w.Req.Note, &ttl, &w.Req.Named,
			&w.Since, &idem, &left, &granted, &w.Round, &w.Set, &w.Count, &pool, &w.Credential, &w.Removed, &w.Priority, &build, &w.Abandoned); err != nil {
			return err
		}
		w.Req.TTL, w.Since = time.Duration(ttl)*time.Millisecond, w.Since.UTC()
		if idem != nil {
			w.Idem = *idem
		}
		if pool != nil {
			w.Pool = *pool
		}
		if left != nil {
			w.Left = left.UTC()
		}
		if build != nil {
			w.Req.Build = new(lock.Build)
			if err := json.Unmarshal(build, w.Req.Build); err != nil {
				return fmt.Errorf("a waiter's build for lock %q in the database: %w", name, err)
			}
		}
		if granted != nil {
			w.Granted = new(lock.Lock)
			if err := json.Unmarshal(granted, w.Granted); err != nil {
				return fmt.Errorf("a grant to lock %q in the database: %w", name, err)
			}
		}
		queues[name] = append(queues[name], w)
	}
	return rows.Err()
}

// queueRecall queues the read of the outcome kept for scope.
func queueRecall(b *pgx.Batch, scope string) {
	b.Queue("SELECT fingerprint, outcome, at FROM locker_requests WHERE scope = $1 AND at > clock_timestamp() - $2::interval",
		scope, idempotency.Retention.String())
}

// readRecall reads the outcome kept for scope, if any.
func (t *tx) readRecall(br pgx.BatchResults, scope string) error {
	if t.recalled == nil {
		t.recalled = map[string]*idempotency.Entry{}
	}
	e := idempotency.Entry{Scope: scope}
	err := br.QueryRow().Scan(&e.Fingerprint, &e.Outcome, &e.At)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		t.recalled[scope] = nil
		return nil
	case err != nil:
		return err
	}
	e.At = e.At.UTC()
	t.recalled[scope] = &e
	return nil
}

// View runs fn over the locks named as they are, without their row
// locks, in one round trip.
func (s *Store) View(ctx context.Context, names []string, fn func(txn.Reader) error) error {
	t := &tx{s: s, ctx: ctx, names: sorted(names)}
	t.jobNames = t.names
	b := &pgx.Batch{}
	b.Queue("SELECT name, lock FROM locker_locks WHERE name = ANY($1)", t.names)
	t.queueReads(b)
	br := s.pool.SendBatch(ctx, b)
	err := t.read(br, false)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return fn(t)
}

// Waiter returns the waiter with id in each queue of names it is in (of
// every lock, for nil names): its
// own rows, by their key, with no row lock and without the rest of the
// queues (2,000 waiters each reading a queue of 2,000 every Recheck held
// up the change that would grant them past its time).
func (s *Store) Waiter(ctx context.Context, id int64, names []string) (map[string]txn.Waiter, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+queueColumns+` FROM locker_queue WHERE id = $3 AND ($1::text[] IS NULL OR name = ANY($1))`, names, s.deadAfter(), id)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	queues := map[string][]txn.Waiter{}
	if err := readQueue(rows, queues); err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	found := make(map[string]txn.Waiter, len(queues))
	for name, q := range queues {
		found[name] = q[0]
	}
	return found, nil
}
