package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/locker-ci/locker/internal/txn"
)

// Following the primary through a failover. Every connection a node
// makes is checked before it is used (followPrimary, the pool's
// AfterConnect): a server in recovery (a standby) takes no changes, so a
// connection to one is refused, and the pool tries again, on the next
// host of a multi-host URL or on what the address points to next. And a
// primary the table has not seen before (another timeline: a standby
// promoted; another system: a restored copy) may lack the last commits
// of the old one, if replication was asynchronous: the tokens, waiter
// IDs and event IDs those commits took could be handed out again. So the
// first connection to a new primary moves each of their sequences
// forward by newPrimaryJump, before any is used: every token handed out
// after a failover is above every token handed out before it, whatever
// the standby received.

// newPrimaryJump is how far the sequences move at a new primary: more
// than a standby can ever have missed (2^40: 35 years of 1,000 grants a
// second), and small enough that 8,192 failovers keep tokens below 2^53,
// which every JSON reader (JavaScript's numbers) reads exactly.
const newPrimaryJump = 1 << 40

// Primary is which primary a node's connections reach: the database
// system's identifier and its timeline.
type Primary struct {
	System   string
	Timeline int64
}

// String says p for a log line.
func (p Primary) String() string { return fmt.Sprintf("system %s, timeline %d", p.System, p.Timeline) }

// followPrimary checks a new connection: to a primary, and, if to one
// the table has not seen, moves the sequences past what the old one may
// have handed out (onNew is told).
func followPrimary(ctx context.Context, conn *pgx.Conn, onNew func(old, now Primary)) error {
	var standby, migrated bool
	var wal string
	var now Primary
	err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_walfile_name(pg_current_wal_lsn()) END,
		coalesce((SELECT system_identifier::text FROM pg_control_system()), ''),
		to_regclass('locker_primary') IS NOT NULL`).Scan(&standby, &wal, &now.System, &migrated)
	switch {
	case err != nil:
		return err
	case standby:
		return fmt.Errorf("%w (%s:%d)", txn.ErrStandby, conn.Config().Host, conn.Config().Port)
	case !migrated:
		return nil // migrate makes the table; the next connections look
	}
	// A WAL file's name begins with its timeline, in hex.
	if len(wal) < 8 {
		return fmt.Errorf("reading the database's timeline: WAL file name %q", wal)
	}
	if now.Timeline, err = strconv.ParseInt(wal[:8], 16, 64); err != nil {
		return fmt.Errorf("reading the database's timeline from %q: %w", wal, err)
	}
	var seen Primary
	err = conn.QueryRow(ctx, "SELECT system, timeline FROM locker_primary").Scan(&seen.System, &seen.Timeline)
	if err == nil && seen == now {
		return nil // the primary the table knows: the common case, one read
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// One connection moves the sequences; the others wait for its row
		// lock, and find the primary known.
		err := tx.QueryRow(ctx, "SELECT system, timeline FROM locker_primary FOR UPDATE").Scan(&seen.System, &seen.Timeline)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// The first look since the table was made: nothing was handed
			// out on another primary that this one could lack.
			_, err = tx.Exec(ctx, "INSERT INTO locker_primary (system, timeline) VALUES ($1, $2)", now.System, now.Timeline)
			return err
		case err != nil:
			return err
		case seen == now:
			return nil
		}
		if _, err := tx.Exec(ctx, `SELECT setval(s, coalesce(pg_sequence_last_value(s), 1) + $1)
			FROM (VALUES ('locker_tokens'::regclass), (pg_get_serial_sequence('locker_queue', 'id')::regclass),
				(pg_get_serial_sequence('locker_events', 'id')::regclass)) AS seqs (s)`, newPrimaryJump); err != nil {
			return fmt.Errorf("moving the sequences past the old primary's: %w", err)
		}
		if _, err := tx.Exec(ctx, "UPDATE locker_primary SET system = $1, timeline = $2", now.System, now.Timeline); err != nil {
			return err
		}
		if onNew != nil {
			onNew(seen, now)
		}
		return nil
	})
}

// leadLock is the advisory lock of the node that leads: the one that does
// what one node of several should (looking up the builds of build-bound
// holds).
const leadLock = migrationLock + 1

// Leads reports whether this node leads: it holds the lead's advisory
// lock on a connection of its own, taking it when no node has it. A node
// whose connection breaks (or that stops) lets it go, and another takes
// it within one of its looks.
func (s *Store) Leads(ctx context.Context) bool {
	s.leadMu.Lock()
	defer s.leadMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if s.lead != nil {
		if _, err := s.lead.Exec(ctx, "SELECT 1"); err == nil {
			return true
		}
		s.lead.Hijack().Close(context.Background()) // the lock goes with the session
		s.lead = nil
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return false
	}
	var took bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", leadLock).Scan(&took); err != nil || !took {
		conn.Release()
		return false
	}
	s.lead = conn
	return true
}

// Unreachable reports whether err, from Open, says the database could not
// be reached, or is not taking connections yet (starting up, shutting
// down, or full): worth trying again, unlike a wrong password or a
// database that does not exist.
func Unreachable(err error) bool {
	if errors.Is(err, txn.ErrStandby) {
		return true // being promoted, perhaps: a failover at start
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P03", "57P01", "53300": // cannot_connect_now, admin_shutdown, too_many_connections
			return true
		}
		return false
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	// A connection that timed out or was cut while the node opened (a
	// database failing over, a proxy's outage) is the database away too:
	// a node that started then exited at once.
	return errors.As(err, &connErr) || pgconn.Timeout(err) || errors.As(err, &netErr) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// Ready reports whether the database answers, and takes changes. A
// connection that broke while idle (a failover, a proxy that moved) fails
// its ping and is closed; once they are gone, a try makes a new one,
// checked as every new one is (followPrimary), so that a standby is told
// as such.
func (s *Store) Ready(ctx context.Context) error {
	err := s.pool.Ping(ctx)
	for try := 0; err != nil && !errors.Is(err, txn.ErrStandby) && ctx.Err() == nil && try < int(s.pool.Config().MaxConns); try++ {
		err = s.pool.Ping(ctx) // each broken idle connection fails one ping, and is closed
	}
	if err != nil && !errors.Is(err, txn.ErrStandby) && time.Since(time.Unix(0, s.standbyAt.Load())) < 10*time.Second {
		// The attempts of the last seconds reached a standby: this one,
		// cut short by ctx, is likely to, too.
		err = fmt.Errorf("%w (the connections of the last seconds reached one; this try: %w)", txn.ErrStandby, err)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", txn.ErrUnavailable, err)
	}
	return nil
}
