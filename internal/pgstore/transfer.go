package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// ErrNotEmpty: Import's target holds locks or waiters already.
var ErrNotEmpty = errors.New("the database's lock table is not empty")

// Export returns every held lock, every pool, the last fencing token
// handed out, the events kept and the outcomes remembered, as one
// consistent snapshot.
func (s *Store) Export(ctx context.Context) (txn.Contents, error) {
	locks, pools := map[string]lock.Lock{}, map[string]lock.Pool{}
	var lastToken uint64
	var c txn.Contents
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "SELECT name, lock FROM locker_locks WHERE lock IS NOT NULL")
		if err != nil {
			return err
		}
		for rows.Next() {
			var name string
			var raw []byte
			var l lock.Lock
			if err := rows.Scan(&name, &raw); err != nil {
				return err
			}
			if err := json.Unmarshal(raw, &l); err != nil {
				return fmt.Errorf("lock %q in the database: %w", name, err)
			}
			locks[name] = l
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if pools, err = readPools(ctx, tx); err != nil {
			return err
		}
		var last int64
		var called bool
		if err := tx.QueryRow(ctx, "SELECT last_value, is_called FROM locker_tokens").Scan(&last, &called); err != nil {
			return err
		}
		if called {
			lastToken = uint64(last)
		}
		return exportKept(ctx, tx, &c)
	})
	c.Locks, c.Pools, c.LastToken = locks, pools, lastToken
	return c, err
}

// exportKept reads the events kept and the outcomes remembered into c.
func exportKept(ctx context.Context, tx pgx.Tx, c *txn.Contents) error {
	rows, err := tx.Query(ctx, "SELECT id, event FROM locker_events ORDER BY id")
	if err != nil {
		return err
	}
	if c.History, err = scanEvents(rows); err != nil {
		return err
	}
	var last int64
	var called bool
	if err := tx.QueryRow(ctx, "SELECT last_value, is_called FROM locker_events_id_seq").Scan(&last, &called); err != nil {
		return err
	}
	if called {
		c.LastEvent = uint64(last)
	}
	creds, err := readCredentials(ctx, tx)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(creds)) {
		c.Credentials = append(c.Credentials, creds[name])
	}
	rows, err = tx.Query(ctx, "SELECT scope, fingerprint, at, outcome FROM locker_requests ORDER BY at, scope")
	if err != nil {
		return err
	}
	c.Requests, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (idempotency.Entry, error) {
		var e idempotency.Entry
		err := row.Scan(&e.Scope, &e.Fingerprint, &e.At, &e.Outcome)
		return e, err
	})
	return err
}

// importKept adds c's events to the histories, with IDs above the
// sequence's (renumbered when they are not), moves the sequence past
// them and c's last event, and puts c's outcomes in place of any of the
// same scopes.
func importKept(ctx context.Context, tx pgx.Tx, c txn.Contents) error {
	var last int64
	if err := tx.QueryRow(ctx, `SELECT greatest(coalesce((SELECT max(id) FROM locker_events), 0),
		(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM locker_events_id_seq))`).Scan(&last); err != nil {
		return err
	}
	events := txn.Renumbered(c.History, uint64(last))
	ids, names, ats, raws := make([]int64, len(events)), make([]string, len(events)), make([]time.Time, len(events)), make([][]byte, len(events))
	for i, e := range events {
		raw, err := json.Marshal(e)
		if err != nil {
			return err
		}
		ids[i], names[i], ats[i], raws[i] = int64(e.ID), e.Lock, e.At, raw
	}
	if _, err := tx.Exec(ctx, `INSERT INTO locker_events (id, name, at, event)
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::json[])`, ids, names, ats, raws); err != nil {
		return err
	}
	next := max(uint64(last), c.LastEvent)
	if len(events) > 0 {
		next = max(next, events[len(events)-1].ID)
	}
	if next > 0 {
		if _, err := tx.Exec(ctx, "SELECT setval('locker_events_id_seq', $1::bigint)", int64(next)); err != nil {
			return err
		}
	}
	for _, cred := range c.Credentials {
		raw, err := json.Marshal(cred)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO locker_credentials (name, credential) VALUES ($1, $2)
			ON CONFLICT (name) DO UPDATE SET credential = excluded.credential`, cred.Name, raw); err != nil {
			return err
		}
	}
	for _, e := range c.Requests {
		if _, err := tx.Exec(ctx, `INSERT INTO locker_requests (scope, fingerprint, outcome, at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (scope) DO UPDATE SET fingerprint = excluded.fingerprint, outcome = excluded.outcome, at = excluded.at`,
			e.Scope, e.Fingerprint, e.Outcome, e.At); err != nil {
			return err
		}
	}
	return nil
}

// Import puts c's locks into an empty table, and its pools (in place of
// pools of the same names), its events and its remembered outcomes, and
// moves the token sequence past c's last token and every lock's token,
// so that no token is handed out twice.
func (s *Store) Import(ctx context.Context, c txn.Contents) error {
	lastToken := c.LastToken
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// No other node may change the table meanwhile.
		if _, err := tx.Exec(ctx, "LOCK TABLE locker_locks, locker_queue IN EXCLUSIVE MODE"); err != nil {
			return err
		}
		var held, waiting int
		if err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM locker_locks WHERE lock IS NOT NULL),
			(SELECT count(*) FROM locker_queue)`).Scan(&held, &waiting); err != nil {
			return err
		}
		if held > 0 || waiting > 0 {
			return fmt.Errorf("%w: %d locks held, %d waiting", ErrNotEmpty, held, waiting)
		}
		for name, p := range c.Pools {
			raw, err := json.Marshal(p)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO locker_pools (name, pool) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET pool = excluded.pool", name, raw); err != nil {
				return err
			}
		}
		for name, l := range c.Locks {
			lastToken = max(lastToken, l.Token)
			raw, err := json.Marshal(l)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO locker_locks (name, lock, expires) VALUES ($1, $2, $3)
				ON CONFLICT (name) DO UPDATE SET lock = excluded.lock, expires = excluded.expires`, name, raw, firstLease(l)); err != nil {
				return err
			}
		}
		if err := importKept(ctx, tx, c); err != nil {
			return err
		}
		if lastToken == 0 {
			return nil
		}
		// The sequence never goes back: a target that handed out higher
		// tokens before keeps them.
		_, err := tx.Exec(ctx, `SELECT setval('locker_tokens', greatest($1::bigint,
			(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM locker_tokens)))`, int64(lastToken))
		return err
	})
}

// LiveNodes returns the other nodes that beat within the last few
// seconds: servers still changing the table.
func (s *Store) LiveNodes(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT node FROM locker_nodes WHERE seen > clock_timestamp() - $1::interval AND node <> $2 ORDER BY node",
		deadAfter.String(), s.node)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
