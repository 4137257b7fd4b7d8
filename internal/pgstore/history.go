package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// History returns up to limit of the events of the lock called name
// (every lock, for "") with IDs below before (0: any), newest first, none older than the store
// keeps: the heartbeats delete the events past the number kept and the
// old ones a while after, and this reads as if they had.
func (s *Store) History(ctx context.Context, name string, before uint64, limit int) ([]lock.Event, error) {
	if name == "" {
		return s.everyLocks(ctx, before, limit)
	}
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

// everyLocks returns up to limit of the events of every lock with IDs
// below before (0: any), newest first: those past the number a lock keeps
// wait for the heartbeats' trim.
func (s *Store) everyLocks(ctx context.Context, before uint64, limit int) ([]lock.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, event FROM locker_events
		WHERE ($1::bigint = 0 OR id < $1) AND ($2::bigint = 0 OR at > clock_timestamp() - $2 * interval '1 millisecond')
		ORDER BY id DESC LIMIT $3`, int64(before), s.keep.Age.Milliseconds(), limit)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	events, err := scanEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return events, nil
}

// eventsChannel is the LISTEN/NOTIFY channel on which a node tells the
// others it committed events, with no payload: they look for them (see
// pollEvents). Telling at every commit would cost more than the events
// themselves: PostgreSQL commits the transactions that notify one at a
// time, and wakes every listening session for each.
const eventsChannel = "locker_events"

// eventsQuiet is how long a node goes without telling the others of its
// events, and how often a node that was told looks again.
const eventsQuiet = 50 * time.Millisecond

// eventsPage is how many events a node reads at a time.
const eventsPage = 1000

// tellOthers reports whether this node's next commit of events is to
// tell the others: the first one after eventsQuiet without. The others
// look every eventsQuiet for twice that after they were told, so they
// find the commits in between too.
func (s *Store) tellOthers() bool {
	now, last := time.Now().UnixNano(), s.toldAt.Load()
	return now-last >= int64(eventsQuiet) && s.toldAt.CompareAndSwap(last, now)
}

// pollEvents hands on the events every node commits, from those after the
// last one committed when the node opened, in the order of their IDs (commit
// order for each lock: see Backlog). It looks when a node tells of events,
// then every eventsQuiet for as long as it finds any and for twice that
// after it was told, and every heartbeat whatever it hears (a telling
// commit that failed, a notification lost with its connection).
func (s *Store) pollEvents(ctx context.Context) {
	var busyUntil time.Time
	wait := time.NewTimer(heartbeat)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.eventsTold:
			busyUntil = time.Now().Add(2 * eventsQuiet)
		case <-wait.C:
		}
		next := heartbeat
		if found, err := s.fetchEvents(ctx); err == nil && (found || time.Now().Before(busyUntil)) {
			next = eventsQuiet
		}
		wait.Reset(next)
	}
}

// fetchEvents hands on the events committed since it last looked, and
// reports whether there were any.
func (s *Store) fetchEvents(ctx context.Context) (bool, error) {
	found := false
	for {
		page, err := s.Backlog(ctx, s.read, eventsPage)
		if err != nil {
			return found, err
		}
		found = s.send(page.Events) || found
		s.read = page.Next
		if !page.More {
			return found, nil
		}
	}
}

// send hands on those of events, in the order of their IDs, that were not
// handed on before, and reports whether there were any.
func (s *Store) send(events []lock.Event) bool {
	fresh := events[:0]
	for _, e := range events {
		if s.sent.Add(e.ID) {
			fresh = append(fresh, e)
		}
	}
	if len(fresh) > 0 && s.onEvents != nil {
		s.onEvents(fresh)
	}
	return len(fresh) > 0
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

// Backlog returns a page of up to limit of the events kept after from, in
// the order of their IDs, and the highest ID of an event no longer kept.
//
// A transaction's IDs come from a sequence as its rows are written, before
// its COMMIT, so transactions of different nodes over different locks may
// commit out of the order of their IDs (never two over the same lock: its
// row lock orders them). A reader that has read up to from.After may not
// have seen an event with a lower ID that committed later: one written by
// a transaction still running as it read (the statement that writes
// events takes its transaction's ID before its events' IDs, so such a
// transaction's ID is at least the oldest then running). So those come
// too, first: the events with lower IDs written by transactions no older
// than from.Running, the oldest one running when the page before was
// read, which is recent, and so is the part of the index read. A client
// that resumes from an event ID alone brings no such mark: then it is the
// oldest transaction running when that event was written, and that
// event's own transaction is left out (the client saw its events
// together), on every page after too (Mark.Had): a later page may look
// back further than the first, when a transaction older than the
// client's event was still running as the first page was read. The
// caller sends each ID once; a client may be sent again one it had.
func (s *Store) Backlog(ctx context.Context, from txn.Mark, limit int) (txn.Backlog, error) {
	b := &pgx.Batch{}
	// Taken before the page's own snapshot: not younger than its oldest
	// running transaction, so the next page looks back at least as far.
	b.Queue(`SELECT pg_snapshot_xmin(pg_current_snapshot())::text,
		coalesce(nullif($2, '0'), (SELECT xid::text FROM locker_events WHERE id = $1 AND $3 = '0'), '0')`,
		int64(from.After), strconv.FormatUint(from.Had, 10), strconv.FormatUint(from.Running, 10))
	b.Queue(`(SELECT id, event FROM locker_events
			WHERE xid >= coalesce(nullif($3, '0')::xid8, (SELECT running FROM locker_events WHERE id = $1)) AND id < $1
				AND xid <> coalesce(nullif($4, '0')::xid8, (SELECT xid FROM locker_events WHERE id = $1 AND $3 = '0'), '0'::xid8))
		UNION ALL
		(SELECT id, event FROM locker_events WHERE id > $1 ORDER BY id LIMIT $2)
		ORDER BY id`, int64(from.After), limit, strconv.FormatUint(from.Running, 10), strconv.FormatUint(from.Had, 10))
	b.Queue("SELECT id FROM locker_events_forgotten")
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	var running, had string
	if err := br.QueryRow().Scan(&running, &had); err != nil {
		return txn.Backlog{}, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	page := txn.Backlog{Next: from}
	var err error
	if page.Next.Running, err = strconv.ParseUint(running, 10, 64); err != nil {
		return txn.Backlog{}, fmt.Errorf("the oldest running transaction %q: %w", running, err)
	}
	if page.Next.Had, err = strconv.ParseUint(had, 10, 64); err != nil {
		return txn.Backlog{}, fmt.Errorf("the transaction of event %d %q: %w", from.After, had, err)
	}
	rows, err := br.Query()
	if err != nil {
		return txn.Backlog{}, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	if page.Events, err = scanEvents(rows); err != nil {
		return txn.Backlog{}, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	after := 0
	for _, e := range page.Events {
		if e.ID > from.After {
			after++
			page.Next.After = e.ID
		}
	}
	page.More = after == limit
	var forgotten int64
	if err := br.QueryRow().Scan(&forgotten); err != nil {
		return txn.Backlog{}, fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	page.Forgotten = uint64(forgotten)
	return page, nil
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
		many AS (DELETE FROM locker_events WHERE id IN (
			SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY id DESC) AS n
				FROM locker_events WHERE name IN (SELECT name FROM touched)) e WHERE n > $2)
			RETURNING id),
		-- those below the first event young enough to keep: all too old
		-- (events' times only roughly follow their IDs, so some older
		-- ones may wait; History does not read them meanwhile)
		old AS (DELETE FROM locker_events WHERE $3::bigint > 0 AND id < coalesce(
				(SELECT id FROM locker_events WHERE at >= clock_timestamp() - $3 * interval '1 millisecond' ORDER BY id LIMIT 1),
				(SELECT max(id) + 1 FROM locker_events))
			RETURNING id),
		d AS (SELECT id FROM many UNION ALL SELECT id FROM old),
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
