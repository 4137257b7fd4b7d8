package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Scan reads a page of the locks held or waited for into t, in one
// transaction: the page's names first, in byte order (COLLATE "C", so
// that pages follow on whatever the database's collation), then their
// locks and queues.
func (s *Store) Scan(ctx context.Context, page txn.Page, t *txn.Tables) error {
	t.Reset()
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(ptx pgx.Tx) error {
		names, err := pageNames(ctx, ptx, page)
		if err != nil {
			return err
		}
		x := &tx{s: s, ctx: ctx, names: names, jobNames: names}
		b := &pgx.Batch{}
		b.Queue("SELECT name, lock FROM locker_locks WHERE lock IS NOT NULL AND name = ANY($1)", names)
		x.queueReads(b)
		br := ptx.SendBatch(ctx, b)
		defer br.Close()
		if err := x.read(br, false); err != nil {
			return err
		}
		t.At, t.Names, t.Locks, t.Queues = x.now, names, x.locks, x.queues
		return br.Close()
	})
	if err != nil {
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return nil
}

// pageNames returns the names of the page's locks, held or with a queue,
// in byte order. Each of the two tables is read through its index in
// byte order, from the page's start to its end or its limit.
func pageNames(ctx context.Context, ptx pgx.Tx, page txn.Page) ([]string, error) {
	var where []string
	args := []any{page.After}
	where = append(where, `name COLLATE "C" > $1`)
	if page.Prefix != "" {
		args = append(args, page.Prefix)
		where = append(where, fmt.Sprintf(`name COLLATE "C" >= $%d AND left(name, length($%[1]d)) = $%[1]d`, len(args)))
		if end, ok := prefixEnd(page.Prefix); ok {
			args = append(args, end)
			where = append(where, fmt.Sprintf(`name COLLATE "C" < $%d`, len(args)))
		}
	}
	cond := strings.Join(where, " AND ")
	limit := ""
	if page.Limit > 0 {
		args = append(args, page.Limit)
		limit = fmt.Sprintf(" LIMIT $%d", len(args))
	}
	rows, err := ptx.Query(ctx, `SELECT name FROM (
			(SELECT name FROM locker_locks WHERE lock IS NOT NULL AND `+cond+` ORDER BY name COLLATE "C"`+limit+`)
			UNION
			(SELECT DISTINCT name COLLATE "C" FROM locker_queue WHERE `+cond+` ORDER BY 1`+limit+`)
		) page ORDER BY name COLLATE "C"`+limit, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// prefixEnd returns the least string above every string that starts
// with prefix, in byte order: prefix with its last character raised by
// one (UTF-8's byte order is its characters' order). It reports false
// when there is none (every character is the highest).
func prefixEnd(prefix string) (string, bool) {
	for prefix != "" {
		r, size := utf8.DecodeLastRuneInString(prefix)
		prefix = prefix[:len(prefix)-size]
		switch {
		case r == utf8.MaxRune:
			continue
		case r == 0xD7FF: // the surrogates are not characters
			r = 0xE000
		default:
			r++
		}
		return prefix + string(r), true
	}
	return "", false
}

// Pools returns every pool, by name.
func (s *Store) Pools(ctx context.Context) (map[string]lock.Pool, error) {
	pools, err := readPools(ctx, s.pool)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return pools, nil
}

// readPools reads every pool through q.
func readPools(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (map[string]lock.Pool, error) {
	rows, err := q.Query(ctx, "SELECT name, pool FROM locker_pools")
	if err != nil {
		return nil, err
	}
	pools := map[string]lock.Pool{}
	for rows.Next() {
		var name string
		var raw []byte
		if err := rows.Scan(&name, &raw); err != nil {
			return nil, err
		}
		var p lock.Pool
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("pool %q in the database: %w", name, err)
		}
		pools[name] = p
	}
	return pools, rows.Err()
}
