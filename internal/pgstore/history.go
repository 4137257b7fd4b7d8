package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// History returns up to limit of the events of the lock called name with
// IDs below before (0: any), newest first, none older than the store
// keeps: the heartbeats delete the events past the number kept and the
// old ones a while after, and this reads as if they had.
func (s *Store) History(ctx context.Context, name string, before uint64, limit int) ([]lock.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, event FROM locker_events
		WHERE name = $1 AND ($2::bigint = 0 OR id < $2) AND ($3::bigint = 0 OR at > clock_timestamp() - $3 * interval '1 millisecond')
			AND id >= coalesce((SELECT id FROM locker_events WHERE name = $1 ORDER BY id DESC OFFSET $5 - 1 LIMIT 1), 0)
		ORDER BY id DESC LIMIT $4`, name, int64(before), s.keep.Age.Milliseconds(), limit, max(s.keep.Events, 1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	events, err := scanEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return events, nil
}

// eventsChannel is the LISTEN/NOTIFY channel of the events: the payload
// is "MIN-MAX", the range of the IDs a transaction's events were given.
const eventsChannel = "locker_events"

// sentIDs is how many of the latest events a node remembers having
// handed on, so that each goes out once: a range fetched for one
// notification may hold events of another transaction that committed
// before it, whose own notification comes later.
const sentIDs = 1 << 14

// sent remembers the IDs of the events handed to onEvents, the latest
// sentIDs of them.
type sent struct {
	ids   map[uint64]struct{}
	order []uint64 // oldest first
	max   uint64   // the highest ID handed on
}

// add reports whether id is new, and remembers it.
func (m *sent) add(id uint64) bool {
	if _, ok := m.ids[id]; ok {
		return false
	}
	if m.ids == nil {
		m.ids = map[uint64]struct{}{}
	}
	m.ids[id] = struct{}{}
	m.order = append(m.order, id)
	if len(m.order) > sentIDs {
		delete(m.ids, m.order[0])
		m.order = m.order[1:]
	}
	m.max = max(m.max, id)
	return true
}

// follow fetches the events a notification on eventsChannel names, over
// conn, and hands the new ones to onEvents in the order of their IDs.
func (s *Store) follow(ctx context.Context, conn *pgx.Conn, payload string) error {
	lo, hi, ok := strings.Cut(payload, "-")
	from, err1 := strconv.ParseUint(lo, 10, 64)
	to, err2 := strconv.ParseUint(hi, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("a notification of events that names no range of IDs: %q", payload)
	}
	return s.sendRange(ctx, conn, "id BETWEEN $1 AND $2", int64(from), int64(to))
}

// catchUp hands on the events committed while this node did not listen:
// those above the oldest ID it remembers (or the highest, when it
// remembers none).
func (s *Store) catchUp(ctx context.Context, conn *pgx.Conn) error {
	var after uint64
	if len(s.sent.order) > 0 {
		after = s.sent.order[0]
	} else if err := conn.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM locker_events").Scan(&after); err != nil {
		return err
	}
	return s.sendRange(ctx, conn, "id > $1 AND $2 = 0", int64(after), 0)
}

// sendRange hands on the events where holds, in the order of their IDs,
// that were not handed on before.
func (s *Store) sendRange(ctx context.Context, conn *pgx.Conn, where string, args ...any) error {
	rows, err := conn.Query(ctx, "SELECT id, event FROM locker_events WHERE "+where+" ORDER BY id", args...)
	if err != nil {
		return err
	}
	events, err := scanEvents(rows)
	if err != nil {
		return err
	}
	fresh := events[:0]
	for _, e := range events {
		if s.sent.add(e.ID) {
			fresh = append(fresh, e)
		}
	}
	if len(fresh) > 0 && s.onEvents != nil {
		s.onEvents(fresh)
	}
	return nil
}

// scanEvents reads rows of (id, event).
func scanEvents(rows pgx.Rows) ([]lock.Event, error) {
	defer rows.Close()
	var events []lock.Event
	for rows.Next() {
		var (
			id  int64
			raw []byte
			e   lock.Event
		)
		if err := rows.Scan(&id, &raw); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("event %d: %w", id, err)
		}
		e.ID = uint64(id)
		events = append(events, e)
	}
	return events, rows.Err()
}

// Backlog returns up to limit of the events kept with IDs above after, in
// the order of their IDs, and the highest ID of an event no longer kept.
//
// A transaction's IDs come from a sequence as its rows are written, before
// its COMMIT, so transactions of different nodes over different locks may
// commit out of the order of their IDs (never two over the same lock: its
// row lock orders them). A client that saw event after may not have seen
// one with a lower ID that committed later: such an event was written by a
// transaction running when event after was written. So the events with
// lower IDs written by transactions no older than the oldest one running
// then come too, first; the caller sends each ID once, and a client may
// be sent again one it had.
func (s *Store) Backlog(ctx context.Context, after uint64, limit int) ([]lock.Event, uint64, error) {
	b := &pgx.Batch{}
	b.Queue(`(SELECT id, event FROM locker_events
			WHERE xid >= (SELECT running FROM locker_events WHERE id = $1) AND id < $1)
		UNION ALL
		(SELECT id, event FROM locker_events WHERE id > $1 ORDER BY id LIMIT $2)
		ORDER BY id`, int64(after), limit)
	b.Queue("SELECT id FROM locker_events_forgotten")
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	rows, err := br.Query()
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	events, err := scanEvents(rows)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	var forgotten int64
	if err := br.QueryRow().Scan(&forgotten); err != nil {
		return nil, 0, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return events, uint64(forgotten), nil
}

// trimHistory deletes the events past the number kept of the locks that
// had events since the last trim, and those older than kept, and notes
// the highest ID it deleted.
func (s *Store) trimHistory(ctx context.Context) {
	if s.keep.Events <= 0 {
		return
	}
	var trimmed int64
	err := s.pool.QueryRow(ctx, `WITH touched AS (SELECT DISTINCT name FROM locker_events WHERE id > $1),
		d AS (DELETE FROM locker_events WHERE id IN (
			SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY id DESC) AS n
				FROM locker_events WHERE name IN (SELECT name FROM touched)) e WHERE n > $2)
			OR ($3::bigint > 0 AND at < clock_timestamp() - $3 * interval '1 millisecond')
			RETURNING id),
		f AS (UPDATE locker_events_forgotten SET id = greatest(id, (SELECT max(id) FROM d)) WHERE EXISTS (SELECT 1 FROM d))
		SELECT coalesce((SELECT max(id) FROM locker_events), $1)`,
		s.trimmedTo, s.keep.Events, s.keep.Age.Milliseconds()).Scan(&trimmed)
	if err == nil {
		s.trimmedTo = trimmed
	}
}

// Recent returns the last n events kept of each lock in names, newest
// first.
func (s *Store) Recent(ctx context.Context, names []string, n int) (map[string][]lock.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT e.id, e.event FROM unnest($1::text[]) AS l(name)
		CROSS JOIN LATERAL (SELECT id, event FROM locker_events WHERE name = l.name
			AND ($3::bigint = 0 OR at > clock_timestamp() - $3 * interval '1 millisecond')
			ORDER BY id DESC LIMIT $2) e
		ORDER BY e.id DESC`, names, min(n, max(s.keep.Events, 1)), s.keep.Age.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	events, err := scanEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	recent := make(map[string][]lock.Event, len(names))
	for _, e := range events {
		recent[e.Lock] = append(recent[e.Lock], e)
	}
	return recent, nil
}
