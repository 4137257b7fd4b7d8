package pgstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// History returns up to limit of the events of the lock called name with
// IDs below before (0: any), newest first, none older than the store
// keeps (the heartbeats delete those a while after).
func (s *Store) History(ctx context.Context, name string, before uint64, limit int) ([]lock.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, event FROM locker_events
		WHERE name = $1 AND ($2::bigint = 0 OR id < $2) AND ($3::bigint = 0 OR at > clock_timestamp() - $3 * interval '1 millisecond')
		ORDER BY id DESC LIMIT $4`, name, int64(before), s.keep.Age.Milliseconds(), limit)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	defer rows.Close()
	var events []lock.Event
	for rows.Next() {
		var (
			id  int64
			raw []byte
			e   lock.Event
		)
		if err := rows.Scan(&id, &raw); err != nil {
			return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("event %d of %q: %w", id, name, err)
		}
		e.ID = uint64(id)
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return events, nil
}
