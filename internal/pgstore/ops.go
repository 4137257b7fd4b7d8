package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/lock"
)

// Refused is the error of a request the lock was not granted to: ErrHeld,
// with the lock as it was.
type Refused struct {
	State
	TimedOut bool // the request waited, and the wait ran out
}

func (r *Refused) Error() string {
	if r.TimedOut {
		return "held: the wait ran out"
	}
	return "held"
}
func (r *Refused) Unwrap() error { return ErrHeld }

// Acquire takes the lock called name for req, waiting for it up to wait
// (0 answers at once). While it waits, its place is a row in the queue;
// when ctx is done first, the row is taken out, and a grant that came at
// that moment is given back: a client that left is never left holding.
func (s *Store) Acquire(ctx context.Context, name string, req lock.Request, wait time.Duration, idem *Idem) (State, error) {
	var refused bool
	var queuedAs *tx
	ticket := newTicket()
	// The change runs to its end even if the client leaves meanwhile: a
	// waiter committed to the queue whose request gave up before hearing
	// so would be granted to no one. A client that left is seen below.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
	defer cancel()
	st, replay, err := s.change(cctx, name, idem, true, func(t *tx) error {
		switch lock.Decide(t.lock, len(t.queue), req, wait > 0) {
		case lock.Grant:
			t.lock, t.keep = lock.Give(t.lock, req, t.now, t.next), true
			return t.err
		case lock.Refuse:
			refused = true
			return nil
		}
		t.insert, queuedAs = &queued{req: req, node: s.node, ticket: ticket}, t
		return nil
	})
	if errors.Is(err, ErrUncertain) && queuedAs != nil {
		// The waiter may be in the queue with no one to answer it.
		s.withdraw(context.WithoutCancel(ctx), name, ticket, req)
	}
	switch {
	case err != nil:
		return State{}, err
	case replay != nil:
		return replay.State, nil
	case refused:
		return State{}, &Refused{State: st}
	case queuedAs == nil:
		return st, nil
	}
	return s.await(ctx, name, queuedAs.id, req, time.Now().Add(wait), idem)
}

// await waits for the queue row id to be granted, until the deadline. A
// database that goes away meanwhile does not end the wait: the waiter
// looks again every second, and only a deadline that passes with the
// database still away is an error.
func (s *Store) await(ctx context.Context, name string, id int64, req lock.Request, deadline time.Time, idem *Idem) (State, error) {
	woken, unsubscribe := s.subscribe(name)
	defer unsubscribe()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	tick := time.NewTicker(recheck)
	defer tick.Stop()
	for {
		// A claim runs to its end whatever the client does, so that a
		// grant it takes is never lost on the way: given back below if
		// the client has left.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeTimeout)
		st, granted, err := s.claim(cctx, name, id, false, idem)
		cancel()
		switch {
		case err == nil && granted && ctx.Err() != nil:
			s.giveBack(context.WithoutCancel(ctx), name, req)
			return State{}, ctx.Err()
		case errors.Is(err, ErrDropped) || err == nil && granted:
			return st, err
		case err != nil && ctx.Err() != nil:
			s.leave(context.WithoutCancel(ctx), name, id, req)
			return State{}, ctx.Err()
		}
		select {
		case <-woken:
		case <-tick.C:
			// Nothing said: end the leases that ran out, grant whoever is
			// next (perhaps this one), and look again.
			_, _, _ = s.change(ctx, name, nil, false, func(*tx) error { return nil })
		case <-timer.C:
			st, granted, err := s.claim(context.WithoutCancel(ctx), name, id, true, idem)
			switch {
			case err == nil && !granted:
				err = &Refused{State: st, TimedOut: true}
			case err != nil && !errors.Is(err, ErrDropped):
				// The database is away as the wait ends: the waiter must
				// not stay queued with no one to answer it once it is back.
				go s.leave(context.WithoutCancel(ctx), name, id, req)
				err = fmt.Errorf("%w: the wait ended while the database could not be reached: %w", ErrUncertain, err)
			}
			return st, err
		case <-ctx.Done():
			s.leave(context.WithoutCancel(ctx), name, id, req)
			return State{}, ctx.Err()
		}
	}
}

// claim looks at queue row id: once granted, it takes the row out and
// returns the lock as granted (remembered for idem). With giveUp, a row
// not yet granted is taken out too, under the lock's row lock, so that no
// grant can come after; for a request with an Idempotency-Key it stays as
// the place kept for its next round (PlaceHold), granted nothing.
func (s *Store) claim(ctx context.Context, name string, id int64, giveUp bool, idem *Idem) (st State, granted bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(ptx pgx.Tx) error {
		if giveUp {
			if _, err := ptx.Exec(ctx, "SELECT 1 FROM locker_locks WHERE name = $1 FOR UPDATE", name); err != nil {
				return err
			}
		}
		var raw []byte
		err := ptx.QueryRow(ctx, "SELECT granted FROM locker_queue WHERE id = $1", id).Scan(&raw)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: the database did not hear from this node for %v", ErrDropped, deadAfter)
		}
		if err != nil {
			return err
		}
		if raw == nil && !giveUp {
			return nil
		}
		if raw == nil && idem != nil {
			_, err := ptx.Exec(ctx, "UPDATE locker_queue SET left_at = clock_timestamp() WHERE id = $1", id)
			return err
		}
		if _, err := ptx.Exec(ctx, "DELETE FROM locker_queue WHERE id = $1", id); err != nil || raw == nil {
			return err
		}
		granted = true
		if err := json.Unmarshal(raw, &st.Lock); err != nil {
			return err
		}
		return remember(ctx, ptx, idem, outcome{State: st})
	})
	if giveUp && !granted && err == nil {
		st, err = s.Get(ctx, name)
	}
	return st, granted, err
}

// leave takes a waiter whose client went away out of the queue; if it was
// granted meanwhile, its count is given back.
func (s *Store) leave(ctx context.Context, name string, id int64, req lock.Request) {
	s.takeOut(ctx, name, "id = $1", id, req)
}

// withdraw takes out of the queue the waiter whose row has ticket, if the
// commit that queued it went through after all, giving back a grant it
// may have had meanwhile.
func (s *Store) withdraw(ctx context.Context, name, ticket string, req lock.Request) {
	s.takeOut(ctx, name, "ticket = $1", ticket, req)
}

// takeOut deletes the queue row of the lock called name that where
// (with arg) picks, and gives back its grant, if it had one. It tries for
// about 8 s: a waiter left in the queue would be granted to no one (until
// its lease, if it has one, runs out), and the database may be away.
func (s *Store) takeOut(ctx context.Context, name, where string, arg any, req lock.Request) {
	for try := range 12 {
		_, _, err := s.change(ctx, name, nil, false, func(t *tx) error {
			var raw []byte
			err := t.conn.QueryRow(t.ctx, "DELETE FROM locker_queue WHERE "+where+" RETURNING granted", arg).Scan(&raw)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				return nil // gone already, or never queued
			case err != nil:
				return err
			case raw != nil:
				t.lock, _, _ = lock.Release(t.lock, req.Key, req.Requestor, false)
			}
			return nil
		})
		if err == nil {
			return
		}
		time.Sleep(time.Duration(try+1) * 100 * time.Millisecond)
	}
}

// newTicket returns a random name for a waiter's row.
func newTicket() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// giveBack returns the count granted to a waiter whose client left as it
// was granted.
func (s *Store) giveBack(ctx context.Context, name string, req lock.Request) {
	_, _, _ = s.change(ctx, name, nil, false, func(t *tx) error {
		t.lock, _, _ = lock.Release(t.lock, req.Key, req.Requestor, false)
		return nil
	})
}

// Release gives back one count of requestor's hold on the lock called
// name (every count with all), and grants the queue what it can. It
// returns ErrHeld when the lock is held with another key.
func (s *Store) Release(ctx context.Context, name, key, requestor string, all bool, idem *Idem) (State, int, error) {
	var released int
	var ok bool
	st, replay, err := s.change(ctx, name, idem, false, func(t *tx) error {
		t.lock, released, ok = lock.Release(t.lock, key, requestor, all)
		t.keep, t.released = ok && released > 0, released
		return nil
	})
	switch {
	case err != nil:
		return State{}, 0, err
	case replay != nil:
		return replay.State, replay.Released, nil
	case !ok:
		return State{}, 0, &Refused{State: st}
	}
	return st, released, nil
}

// Renew moves requestor's lease on the lock called name to ttl from now,
// by the database's clock.
func (s *Store) Renew(ctx context.Context, name, key, requestor string, ttl time.Duration, idem *Idem) (State, error) {
	var ok bool
	st, replay, err := s.change(ctx, name, idem, false, func(t *tx) error {
		t.lock, ok = lock.Renew(t.lock, key, requestor, t.now.Add(ttl))
		t.keep = ok
		return nil
	})
	switch {
	case err != nil:
		return State{}, err
	case replay != nil:
		return replay.State, nil
	case !ok:
		return st, ErrNotHeld
	}
	return st, nil
}

// ForceRelease frees the lock called name, whoever holds it, and returns
// it as it was and as it is now (granted to the queue, perhaps).
func (s *Store) ForceRelease(ctx context.Context, name string, idem *Idem) (old, now State, err error) {
	now, replay, err := s.change(ctx, name, idem, false, func(t *tx) error {
		old = t.state()
		t.lock, t.old, t.keep = lock.Lock{}, &old, !old.Lock.Free()
		return nil
	})
	if replay != nil && replay.Old != nil {
		return *replay.Old, replay.State, nil
	}
	if replay != nil {
		return State{}, replay.State, nil
	}
	return old, now, err
}

// Get returns the lock called name and its queue, its leases judged by the
// database's clock.
func (s *Store) Get(ctx context.Context, name string) (State, error) {
	t, err := s.read(ctx, s.pool, name)
	if err != nil {
		return State{}, err
	}
	return t.state(), nil
}

// querier is a pool or a transaction.
type querier interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// read reads the lock called name without its row lock, in one round
// trip: what a reader sees, with the leases that ran out ended (only in
// what it returns).
func (s *Store) read(ctx context.Context, q querier, name string) (*tx, error) {
	t := &tx{ctx: ctx, name: name}
	b := &pgx.Batch{}
	b.Queue("SELECT (SELECT lock FROM locker_locks WHERE name = $1), date_trunc('milliseconds', clock_timestamp())", name)
	queueQuery(b, name)
	br := q.SendBatch(ctx, b)
	defer br.Close()
	var raw []byte
	if err := br.QueryRow().Scan(&raw, &t.now); err != nil {
		return nil, err
	}
	if err := t.read(raw, br, false); err != nil {
		return nil, err
	}
	return t, br.Close()
}

// List returns every lock that is held or waited for, by name.
func (s *Store) List(ctx context.Context) (map[string]State, error) {
	out := map[string]State{}
	err := pgx.BeginFunc(ctx, s.pool, func(ptx pgx.Tx) error {
		rows, err := ptx.Query(ctx, `SELECT name FROM locker_locks WHERE lock IS NOT NULL
			UNION SELECT DISTINCT name FROM locker_queue WHERE granted IS NULL AND left_at IS NULL`)
		if err != nil {
			return err
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, name := range names {
			t, err := s.read(ctx, ptx, name)
			if err != nil {
				return err
			}
			if st := t.state(); !st.Lock.Free() || len(st.Waiting) > 0 {
				out[name] = st
			}
		}
		return nil
	})
	return out, err
}
