package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrationLock is the advisory lock nodes take to migrate the schema, so
// that several nodes starting at once migrate it once.
const migrationLock = 0x6c6f636b6572 // "locker"

// migrations are the schema's versions, in order; the schema records the
// last one applied. Never edit one that shipped: add the next.
var migrations = []string{
	// 1: the table, the token sequence, the queue and the nodes.
	`CREATE TABLE locker_locks (
		name text PRIMARY KEY,
		lock jsonb -- the lock as internal/lock.Lock encodes it; NULL when free
	);
	CREATE SEQUENCE locker_tokens;
	CREATE TABLE locker_nodes (
		node text PRIMARY KEY,
		seen timestamptz NOT NULL -- the node's last heartbeat, by the database's clock
	);
	CREATE TABLE locker_queue (
		id bigserial PRIMARY KEY, -- first come, first served across nodes
		name text NOT NULL,
		node text NOT NULL, -- the node whose client waits: only it answers
		key text NOT NULL,
		requestor text NOT NULL,
		note text NOT NULL,
		ttl_ms bigint NOT NULL,
		named boolean NOT NULL,
		since timestamptz NOT NULL,
		granted jsonb -- the lock as granted to it; NULL while it waits
	);
	CREATE INDEX locker_queue_by_name ON locker_queue (name, id);`,

	// 2: outcomes of requests with an Idempotency-Key, to answer a retry
	// with the first answer.
	`CREATE TABLE locker_requests (
		scope text PRIMARY KEY, -- method, lock and key
		fingerprint text NOT NULL, -- of the rest of the request
		outcome jsonb NOT NULL,
		at timestamptz NOT NULL
	);
	CREATE INDEX locker_requests_by_age ON locker_requests (at);`,

	// 3: places kept in the queue for a waiter with an Idempotency-Key
	// whose wait ran out, until it asks again (clients that wait in rounds).
	`ALTER TABLE locker_queue ADD COLUMN idem text, ADD COLUMN left_at timestamptz;
	CREATE INDEX locker_queue_by_idem ON locker_queue (name, idem) WHERE idem IS NOT NULL;`,

	// 4: a random name for each waiter's row, to take it out when the
	// commit that queued it is in doubt.
	`ALTER TABLE locker_queue ADD COLUMN ticket text;
	CREATE INDEX locker_queue_by_ticket ON locker_queue (ticket) WHERE ticket IS NOT NULL;`,

	// 5: outcomes in the one engine's shape, the file store's: the lock
	// with its queue under "lock", what a force release freed under
	// "old". (Waiters are named by their IDs now; tickets are unused.)
	`UPDATE locker_requests SET outcome =
		jsonb_build_object(
			'lock', coalesce(outcome->'state'->'lock', '{}'::jsonb) || jsonb_build_object('Waiting', outcome->'state'->'waiting'),
			'released', coalesce(outcome->'released', '0'::jsonb))
		|| CASE WHEN jsonb_typeof(outcome->'old') = 'object' THEN jsonb_build_object('old', outcome->'old'->'lock') ELSE '{}'::jsonb END
	WHERE outcome ? 'state';`,

	// 6: the round of a waiter: how many later requests with its
	// Idempotency-Key took it over.
	`ALTER TABLE locker_queue ADD COLUMN round int NOT NULL DEFAULT 0;`,

	// 7: the listing's pages, in byte order (as the file store's) whatever
	// the database's collation.
	`CREATE INDEX locker_locks_by_bytes ON locker_locks (name COLLATE "C") WHERE lock IS NOT NULL;
	CREATE INDEX locker_queue_by_bytes ON locker_queue (name COLLATE "C");`,

	// 8: a waiter for several locks: a row in each one's queue, with one
	// ID, and the set it waits for.
	`ALTER TABLE locker_queue DROP CONSTRAINT locker_queue_pkey, ADD PRIMARY KEY (id, name), ADD COLUMN set_of text[];`,

	// 9: pools, and claims on them waiting in their members' queues.
	`CREATE TABLE locker_pools (
		name text PRIMARY KEY,
		pool jsonb NOT NULL -- the pool as internal/lock.Pool encodes it
	);
	ALTER TABLE locker_queue ADD COLUMN claim_count int NOT NULL DEFAULT 0, ADD COLUMN pool text;`,

	// 10: each lock's history, written in the transaction of its change
	// (xid8: PostgreSQL 13 or later).
	// IDs come from the sequence as the row is written, under the lock's
	// row lock: in commit order for each lock.
	`CREATE TABLE locker_events (
		id bigserial PRIMARY KEY,
		name text NOT NULL,
		at timestamptz NOT NULL,
		event jsonb NOT NULL, -- the event as internal/lock.Event encodes it; its id is the row's
		-- the transaction that wrote it, and the oldest one still running
		-- then: a stream that resumes after an event also sends the events
		-- with lower IDs that may have committed after it (see Backlog)
		xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
		running xid8 NOT NULL DEFAULT pg_snapshot_xmin(pg_current_snapshot())
	);
	CREATE INDEX locker_events_by_name ON locker_events (name, id);
	CREATE INDEX locker_events_by_age ON locker_events (at);
	CREATE INDEX locker_events_by_xid ON locker_events (xid);
	-- the highest ID of an event deleted (too many for its lock, or too
	-- old): a stream that resumes after it has missed events
	CREATE TABLE locker_events_forgotten (id bigint NOT NULL);
	INSERT INTO locker_events_forgotten VALUES (0);`,

	// 11: when a lock's first lease runs out, so that the nodes end the
	// leases that ran out (and record their events) without a change to
	// the lock, as the file store does.
	`ALTER TABLE locker_locks ADD COLUMN expires timestamptz;
	UPDATE locker_locks SET expires = (SELECT min((h->>'expires_at')::timestamptz)
		FROM jsonb_array_elements(lock->'holders') h WHERE h ? 'expires_at') WHERE lock IS NOT NULL;
	CREATE INDEX locker_locks_by_expiry ON locker_locks (expires) WHERE expires IS NOT NULL;`,

	// 12: cheaper events to write. An event is only ever read whole, so it
	// is kept as the text it was written as (json, not jsonb); the
	// heartbeats find the events too old to keep by their IDs (see
	// trimHistory), not by an index of their times; and the statement
	// that writes a transaction's events reads its ID and snapshot once,
	// not once a row (the columns' defaults stay for other writers).
	`ALTER TABLE locker_events ALTER COLUMN event TYPE json USING event::json;
	DROP INDEX locker_events_by_age;`,

	// 13: credentials made over the API: each a name, its secret's hash
	// and its grants (internal/access.Credential, as JSON); never a
	// secret. A waiter's credential, for the history of its grant.
	`CREATE TABLE locker_credentials (name text PRIMARY KEY, credential json NOT NULL);
	ALTER TABLE locker_queue ADD COLUMN credential text;`,

	// 14: why a waiter was taken out of its queue (removed by an operator,
	// superseded by a newer request), until its request answers with it.
	`ALTER TABLE locker_queue ADD COLUMN removed text;`,

	// 15: a waiter's priority: the queue is served by priority, then by
	// ID.
	`ALTER TABLE locker_queue ADD COLUMN priority int NOT NULL DEFAULT 0;`,

	// 16: the primary the nodes last reached (primary.go): at another,
	// the sequences move past what the old one may have handed out.
	`CREATE TABLE locker_primary (
		one boolean PRIMARY KEY DEFAULT true CHECK (one),
		system text NOT NULL,
		timeline bigint NOT NULL
	);`,

	// 17: the CI build a waiting request runs in, for its hold.
	`ALTER TABLE locker_queue ADD COLUMN build json;`,
}

// migrate brings the schema to the last version, under the advisory lock.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return fmt.Errorf("taking the migration lock: %w", err)
	}
	defer func() {
		// Within a few seconds: on a connection whose answers are lost,
		// an unlock with no deadline waited for ever, and the node never
		// started. A connection that cannot unlock is closed, which
		// unlocks.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", migrationLock); err != nil {
			_ = conn.Conn().Close(context.Background())
		}
	}()
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS locker_schema (version int NOT NULL)"); err != nil {
		return fmt.Errorf("creating locker_schema: %w", err)
	}
	var version int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM locker_schema").Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("the database's schema is version %d, newer than this locker knows (%d): upgrade this node", version, len(migrations))
	}
	for v := version + 1; v <= len(migrations); v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO locker_schema (version) VALUES ($1)", v)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrating the schema to version %d: %w", v, err)
		}
	}
	return nil
}
