package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// ErrNotEmpty: Import's target holds locks or waiters already.
var ErrNotEmpty = errors.New("the database's lock table is not empty")

// Export returns every held lock, every pool and the last fencing token
// handed out, as one consistent snapshot.
func (s *Store) Export(ctx context.Context) (txn.Contents, error) {
	locks, pools := map[string]lock.Lock{}, map[string]lock.Pool{}
	var lastToken uint64
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
		return nil
	})
	return txn.Contents{Locks: locks, Pools: pools, LastToken: lastToken}, err
}

// Import puts c's locks into an empty table, and its pools (in place of
// pools of the same names), and moves the token sequence past c's last
// token and every lock's token, so that no token is handed out twice.
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
