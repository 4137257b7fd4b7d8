package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// A transaction is two round trips to the database: one batch opens it,
// takes the named locks' row locks in name order (two transactions over
// the same locks cannot deadlock) and reads what the engine will ask for;
// the other writes what changed and commits. Pipelined statements run in
// order, so everything is read after the row locks are held.
//
// One database transaction serves every change that came to the node
// while the last one committed (group commit, see batch.go): it names
// all their locks and pools, runs their rules one after another, each
// seeing what the ones before it changed, and commits once. A change its
// rules refuse is undone alone.

// tx is one database transaction over the locks its changes named.
type tx struct {
	s     *Store
	conn  *pgx.Conn
	ctx   context.Context
	names []string // sorted: every change's locks, their row locks held
	now   time.Time

	// What the change running now named: it may touch only those.
	jobNames []string // sorted
	jobPool  string

	locks  map[string]lock.Lock
	before map[string][]byte // each lock as read, encoded; nil when free
	queues map[string][]txn.Waiter
	// owned names the queues copied since the last mark, which may be
	// changed in place: a mark keeps the ones before (a release that
	// grants 2,000 waiters copied the queue 2,000 times).
	owned map[string]bool
	put   map[queueKey]queueRow // waiters to write
	gone  []queueKey            // waiters to delete

	recalled  map[string]*idempotency.Entry // by scope: what was read (nil: nothing kept)
	memo      map[string]*idempotency.Entry // by scope: remembered (nil: forgotten) since
	tokens    []int64                       // fencing tokens fetched ahead
	waiterIDs []int64                       // waiter IDs fetched ahead
	told      []int64                       // waiters to wake: granted, or taken over
	rows      int                           // the locks' rows read (locked, for a change)
	err       error                         // the first error of a query made on demand

	pools map[string]poolState // the pools named, their rows locked: as read, or as changed since

	events      []lock.Event // to add to the history
	tellsOthers bool         // the commit tells the other nodes of events
}

// poolState is a pool a transaction named.
type poolState struct {
	pool    lock.Pool
	there   bool
	changed bool
}

// queueKey names a waiter's row: a waiter for several locks has one in
// each one's queue.
type queueKey struct {
	id   int64
	name string
}

// queueRow is a waiter and its lock's name, to write.
type queueRow struct {
	name string
	w    txn.Waiter
}

// sorted returns names in order, once each.
func sorted(names []string) []string {
	names = slices.Clone(names)
	slices.Sort(names)
	return slices.Compact(names)
}

// check panics when the change running did not name the lock called
// name: it is not the change's to touch.
func (t *tx) check(name string) {
	if !t.Named(name) {
		panic(fmt.Sprintf("pgstore: lock %q is not one the change named (%q)", name, t.jobNames))
	}
}

func (t *tx) Now() time.Time { return t.now }

func (t *tx) Named(name string) bool {
	_, ok := slices.BinarySearch(t.jobNames, name)
	return ok
}

func (t *tx) Wake(id int64) { t.told = append(t.told, id) }

func (t *tx) NamedPool(name string) bool { return name != "" && name == t.jobPool }

// checkPool panics when the change running did not name the pool called
// name.
func (t *tx) checkPool(name string) {
	if !t.NamedPool(name) {
		panic(fmt.Sprintf("pgstore: pool %q is not the one the change named (%q)", name, t.jobPool))
	}
}

func (t *tx) Pool(name string) (lock.Pool, bool) {
	t.checkPool(name)
	p := t.pools[name]
	return p.pool, p.there
}

func (t *tx) SetPool(name string, p lock.Pool) {
	t.checkPool(name)
	t.setPool(name, poolState{pool: p, there: true, changed: true})
}

func (t *tx) DeletePool(name string) {
	t.checkPool(name)
	t.setPool(name, poolState{changed: true})
}

// setPool stages p; the map is replaced, not changed, for mark.
func (t *tx) setPool(name string, p poolState) {
	t.pools = maps.Clone(t.pools)
	t.pools[name] = p
}

func (t *tx) Lock(name string) lock.Lock {
	t.check(name)
	return t.locks[name]
}

func (t *tx) Queue(name string) []txn.Waiter {
	t.check(name)
	return t.queues[name]
}

func (t *tx) Set(name string, l lock.Lock) {
	t.check(name)
	t.locks[name] = l
}

// NextToken returns a token fetched ahead, or the sequence's next.
func (t *tx) NextToken() uint64 {
	if len(t.tokens) > 0 {
		token := t.tokens[0]
		t.tokens = t.tokens[1:]
		return uint64(token)
	}
	return uint64(t.nextval("locker_tokens"))
}

// NewWaiterID returns an ID fetched ahead, or the queue's next.
func (t *tx) NewWaiterID() int64 {
	if len(t.waiterIDs) > 0 {
		id := t.waiterIDs[0]
		t.waiterIDs = t.waiterIDs[1:]
		return id
	}
	return t.nextval("locker_queue_id_seq")
}

// nextval returns the sequence's next value, in a round trip of its own.
func (t *tx) nextval(seq string) int64 {
	var v int64
	if err := t.conn.QueryRow(t.ctx, "SELECT nextval($1::text::regclass)", seq).Scan(&v); err != nil && t.err == nil {
		t.err = err
	}
	return v
}

func (t *tx) PutWaiter(name string, w txn.Waiter) {
	t.check(name)
	queue := t.ownQueue(name)
	i, found := slices.BinarySearchFunc(queue, w.ID, func(q txn.Waiter, id int64) int { return int(min(max(q.ID-id, -1), 1)) })
	if found {
		if queue[i].Granted == nil && w.Granted != nil || queue[i].Round != w.Round {
			t.told = append(t.told, w.ID) // granted, or taken over by a later round
		}
		queue[i] = w
	} else {
		queue = slices.Insert(queue, i, w)
	}
	t.queues[name] = queue
	if t.put == nil {
		t.put = map[queueKey]queueRow{}
	}
	t.put[queueKey{w.ID, name}] = queueRow{name: name, w: w}
}

func (t *tx) RemoveWaiter(name string, id int64) {
	t.check(name)
	t.queues[name] = slices.DeleteFunc(t.ownQueue(name), func(w txn.Waiter) bool { return w.ID == id })
	delete(t.put, queueKey{id, name})
	t.gone = append(t.gone, queueKey{id, name})
}

// ownQueue returns the queue of the lock called name, copied once since
// the last mark, to be changed in place.
func (t *tx) ownQueue(name string) []txn.Waiter {
	if !t.owned[name] {
		t.queues[name] = slices.Clone(t.queues[name])
		if t.owned == nil {
			t.owned = map[string]bool{}
		}
		t.owned[name] = true
	}
	return t.queues[name]
}

// Recall returns the outcome kept for scope: as a change before it in
// the transaction left it, or read ahead, or read now.
func (t *tx) Recall(scope string) (idempotency.Entry, bool) {
	if e, ok := t.memo[scope]; ok {
		if e == nil {
			return idempotency.Entry{}, false
		}
		return *e, true
	}
	if _, read := t.recalled[scope]; !read {
		b := &pgx.Batch{}
		queueRecall(b, scope)
		br := t.conn.SendBatch(t.ctx, b)
		if err := t.readRecall(br, scope); err != nil && t.err == nil {
			t.err = err
		}
		if err := br.Close(); err != nil && t.err == nil {
			t.err = err
		}
	}
	if e := t.recalled[scope]; e != nil {
		return *e, true
	}
	return idempotency.Entry{}, false
}

func (t *tx) Record(e lock.Event)          { t.events = append(t.events, e) }
func (t *tx) Remember(e idempotency.Entry) { t.setMemo(e.Scope, &e) }
func (t *tx) Forget(scope string)          { t.setMemo(scope, nil) }

// setMemo stages what scope now keeps; the map is replaced, not changed,
// for mark.
func (t *tx) setMemo(scope string, e *idempotency.Entry) {
	t.memo = maps.Clone(t.memo)
	if t.memo == nil {
		t.memo = map[string]*idempotency.Entry{}
	}
	t.memo[scope] = e
}

// commit writes, in one round trip, the locks that changed, the queue's
// changes and the outcomes, tells the nodes of the grants, and commits.
// Each statement's answer is read, in order, by Close. A transaction that
// changed nothing (a waiter's look, most often) only commits.
func (t *tx) commit() error {
	if t.err != nil {
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, t.err)
	}
	b := &pgx.Batch{}
	for _, name := range t.names {
		var raw []byte
		l := t.locks[name]
		if !l.Free() {
			var err error
			if raw, err = json.Marshal(l); err != nil {
				return err
			}
		}
		if !bytes.Equal(raw, t.before[name]) {
			b.Queue("UPDATE locker_locks SET lock = $2, expires = $3 WHERE name = $1", name, raw, firstLease(l))
		}
	}
	if len(t.gone) > 0 {
		ids, names := make([]int64, len(t.gone)), make([]string, len(t.gone))
		for i, k := range t.gone {
			ids[i], names[i] = k.id, k.name
		}
		b.Queue("DELETE FROM locker_queue WHERE (id, name) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))", ids, names)
	}
	for _, row := range t.put {
		if err := queueWaiter(b, row, t.s.node); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(t.pools)) {
		switch p := t.pools[name]; {
		case !p.changed:
		case !p.there:
			b.Queue("DELETE FROM locker_pools WHERE name = $1", name)
		default:
			raw, err := json.Marshal(p.pool)
			if err != nil {
				return err
			}
			b.Queue("INSERT INTO locker_pools (name, pool) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET pool = excluded.pool", name, raw)
		}
	}
	var forgets []string
	for _, scope := range slices.Sorted(maps.Keys(t.memo)) {
		e := t.memo[scope]
		if e == nil {
			forgets = append(forgets, scope)
			continue
		}
		b.Queue(`INSERT INTO locker_requests (scope, fingerprint, outcome, at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (scope) DO UPDATE SET fingerprint = excluded.fingerprint, outcome = excluded.outcome, at = excluded.at`,
			e.Scope, e.Fingerprint, e.Outcome, e.At)
	}
	if len(forgets) > 0 {
		b.Queue("DELETE FROM locker_requests WHERE scope = ANY($1)", forgets)
	}
	if err := t.queueEvents(b); err != nil {
		return err
	}
	if len(t.told) > 0 {
		b.Queue("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload", channel, payloads(t.told))
	}
	b.Queue("COMMIT")
	if err := t.conn.SendBatch(t.ctx, b).Close(); err != nil {
		if t.tellsOthers {
			t.s.toldAt.Store(0) // the next commit tells them
		}
		// Uncertain even when pgx failed as it prepared the batch's
		// statements (pgx.ErrPreprocessingBatch), before any ran: "may
		// or may not" is never wrong, and a retry with the request's
		// Idempotency-Key settles it. (TestFailover loses such answers
		// through a proxy that sees the COMMIT as it is prepared.)
		return fmt.Errorf("%w: %w", txn.ErrUncertain, err)
	}
	return nil
}

// firstLease is when the first lease on l runs out, or nil.
func firstLease(l lock.Lock) *time.Time {
	if t := l.FirstLease(); !t.IsZero() {
		return &t
	}
	return nil
}

// queueEvents queues the statement that adds the transaction's events to
// their locks' histories, in order, and, unless this node told the others
// of events less than eventsQuiet ago, the notification that tells them
// to look (see pollEvents). Those past the number kept are dropped by the
// heartbeats (trimHistory).
func (t *tx) queueEvents(b *pgx.Batch) error {
	if len(t.events) == 0 || t.s.keep.Events <= 0 {
		return nil
	}
	names, ats, raws := make([]string, len(t.events)), make([]time.Time, len(t.events)), make([][]byte, len(t.events))
	for i, e := range t.events {
		raw, err := json.Marshal(e)
		if err != nil {
			return err
		}
		names[i], ats[i], raws[i] = e.Lock, e.At, raw
	}
	b.Queue(`WITH x AS MATERIALIZED (SELECT pg_current_xact_id() AS xid, pg_snapshot_xmin(pg_current_snapshot()) AS running)
		INSERT INTO locker_events (name, at, event, xid, running)
		SELECT e.name, e.at, e.event, x.xid, x.running
		FROM x, unnest($1::text[], $2::timestamptz[], $3::json[]) WITH ORDINALITY AS e(name, at, event, n) ORDER BY e.n`,
		names, ats, raws)
	if t.s.tellOthers() {
		b.Queue("SELECT pg_notify($1, '')", eventsChannel)
		t.tellsOthers = true
	}
	return nil
}

// queueWaiter queues the statement that writes a waiter's row, new or
// changed. A new waiter's node is this one.
func queueWaiter(b *pgx.Batch, row queueRow, node string) error {
	w := row.w
	if w.Owner == "" {
		w.Owner = node
	}
	var idem *string
	if w.Idem != "" {
		idem = &w.Idem
	}
	var left *time.Time
	if !w.Left.IsZero() {
		left = &w.Left
	}
	var granted []byte
	if w.Granted != nil {
		var err error
		if granted, err = json.Marshal(w.Granted); err != nil {
			return err
		}
	}
	var pool *string
	if w.Pool != "" {
		pool = &w.Pool
	}
	var build []byte
	if w.Req.Build != nil {
		build, _ = json.Marshal(w.Req.Build) // strings and numbers: it encodes
	}
	b.Queue(`INSERT INTO locker_queue (id, name, node, key, requestor, note, ttl_ms, named, since, idem, left_at, granted, round, set_of, claim_count, pool, credential, removed, priority, build)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, nullif($17, ''), nullif($18, ''), $19, $20)
		ON CONFLICT (id, name) DO UPDATE SET node = excluded.node, key = excluded.key, requestor = excluded.requestor,
			note = excluded.note, ttl_ms = excluded.ttl_ms, named = excluded.named, since = excluded.since,
			idem = excluded.idem, left_at = excluded.left_at, granted = excluded.granted, round = excluded.round,
			set_of = excluded.set_of, removed = excluded.removed`,
		w.ID, row.name, w.Owner, w.Req.Key, w.Req.Requestor, w.Req.Note, w.Req.TTL.Milliseconds(), w.Req.Named,
		w.Since, idem, left, granted, w.Round, w.Set, w.Count, pool, w.Credential, w.Removed, w.Priority, build)
	return nil
}

// maxPayload is the most bytes a notification's payload carries:
// PostgreSQL refuses a NOTIFY of 8,000 bytes or more, and with it the
// transaction.
const maxPayload = 7900

// payloads returns the IDs of ids as the payloads of as few
// notifications as carry them all, each under maxPayload bytes: IDs
// separated by commas.
func payloads(ids []int64) []string {
	var out []string
	var b []byte
	for _, id := range ids {
		if len(b)+21 > maxPayload { // room for a comma and the longest int64
			out = append(out, string(b))
			b = b[:0]
		}
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return append(out, string(b))
}
