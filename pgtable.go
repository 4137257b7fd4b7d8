package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/pgstore"
)

// changeTimeout bounds a change that does not wait for a lock, when the
// database is slow or away: the client hears 503 instead of hanging.
const changeTimeout = 10 * time.Second

// pgTable is the lock table in PostgreSQL that several nodes share
// (internal/pgstore), as the API uses it: the same requests, answers and
// errors as the table in this process.
type pgTable struct {
	store   *pgstore.Store
	log     *slog.Logger
	metrics *metrics.Metrics
}

// openPGTable joins the table in the database at url as a node named
// after this host.
func openPGTable(ctx context.Context, url string, log *slog.Logger, m *metrics.Metrics) (*pgTable, error) {
	host, _ := os.Hostname()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	store, err := pgstore.Open(ctx, url, host)
	if err != nil {
		return nil, fmt.Errorf("LOCKER_DATABASE_URL: %w", err)
	}
	log.Info("joined the lock table in PostgreSQL", "node", store.Node())
	store.OnExpired(func(name string, holds []pgstore.Expiry) {
		m.Expired(len(holds))
		for _, h := range holds {
			log.Info("lease expired; hold released", "lock", name, "key", h.Key, "holder", h.Holder, "token", h.Token, "expired_at", h.At)
		}
	})
	return &pgTable{store: store, log: log, metrics: m}, nil
}

// snapshot is a store's state as the API shows it.
func snapshot(st pgstore.State) Snapshot {
	return Snapshot{Lock: st.Lock, Waiting: st.Waiting, Replayed: st.Replayed}
}

func (p *pgTable) idem(i *idemRequest) *pgstore.Idem {
	if i == nil {
		return nil
	}
	return &pgstore.Idem{Scope: i.scope, Fingerprint: i.fingerprint}
}

// fail turns a store's error into the API's: a refusal says who holds the
// lock; a database that cannot be reached is a 503, its details logged.
func (p *pgTable) fail(ctx context.Context, name, key string, wait time.Duration, err error) error {
	var refused *pgstore.Refused
	switch {
	case errors.As(err, &refused) && refused.TimedOut:
		p.metrics.WaitTimedOut()
		return fmt.Errorf("%w: timed out after %v waiting: %s", errLockHeld, wait, refusal(name, snapshot(refused.State), key))
	case errors.As(err, &refused):
		p.metrics.Refused()
		msg := refusal(name, snapshot(refused.State), key)
		if wait == 0 {
			msg += "; send ?wait=5m to wait for it"
		}
		return fmt.Errorf("%w: %s", errLockHeld, msg)
	case errors.Is(err, pgstore.ErrKeyReused):
		return fmt.Errorf("%w%s", errKeyReused, err.Error()[len(pgstore.ErrKeyReused.Error()):])
	case ctx.Err() != nil && errors.Is(context.Cause(ctx), errShuttingDown):
		return errShuttingDown
	case ctx.Err() != nil && wait > 0:
		return errClientGone
	}
	p.log.Error("database request failed", "lock", name, "err", err)
	if errors.Is(err, pgstore.ErrUncertain) {
		return fmt.Errorf("%w: the connection failed as the change was committed, so it may or may not have been made; check GET /lock/%s, or send the request again with its Idempotency-Key", errDatabase, name)
	}
	if errors.Is(err, pgstore.ErrDropped) {
		return fmt.Errorf("%w: this node lost its place in the queue while it could not reach the database; ask again", errDatabase)
	}
	return fmt.Errorf("%w: the change was not made; try again in a moment", errDatabase)
}

// Acquire takes the lock, waiting for it up to req.Wait.
func (p *pgTable) Acquire(ctx context.Context, name string, req acquireRequest) (Snapshot, error) {
	start := time.Now()
	if req.Wait == 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, changeTimeout)
		defer cancel()
	}
	st, err := p.store.Acquire(ctx, name, req.Request, req.Wait, p.idem(req.Idem))
	if err != nil {
		return Snapshot{}, p.fail(ctx, name, req.Key, req.Wait, err)
	}
	if !st.Replayed {
		waited := time.Since(start)
		p.metrics.Acquired(waited, req.Wait > 0 && waited > 10*time.Millisecond)
		p.log.Info("lock granted", "lock", name, "key", req.Key, "holder", req.Requestor, "token", st.Lock.Token)
	}
	return snapshot(st), nil
}

// Release gives back the requestor's count (every count with all).
func (p *pgTable) Release(name, key, requestor string, all bool, idem *idemRequest) (Snapshot, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	st, n, err := p.store.Release(ctx, name, key, requestor, all, p.idem(idem))
	if err != nil {
		var refused *pgstore.Refused
		if errors.As(err, &refused) {
			return Snapshot{}, 0, fmt.Errorf("%w: %q is held with key %q by %s; a release must send the key the lock was taken with",
				errLockHeld, name, refused.Lock.Key, refused.Lock.HoldersString())
		}
		return Snapshot{}, 0, p.fail(ctx, name, key, 0, err)
	}
	if n > 0 && !st.Replayed {
		p.metrics.Released(n)
		p.log.Info("lock released", "lock", name, "key", key, "holder", requestor, "counts", n, "now_free", st.Lock.Free())
	}
	return snapshot(st), n, nil
}

// Renew moves the requestor's lease to ttl from now, by the database's clock.
func (p *pgTable) Renew(name, key, requestor string, ttl time.Duration, idem *idemRequest) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	st, err := p.store.Renew(ctx, name, key, requestor, ttl, p.idem(idem))
	if errors.Is(err, pgstore.ErrNotHeld) {
		return Snapshot{}, fmt.Errorf("%w: %s holds nothing on %q with key %q, so there is no lease to renew; take the lock with PUT",
			errLockHeld, requestor, name, key)
	}
	if err != nil {
		return Snapshot{}, p.fail(ctx, name, key, 0, err)
	}
	return snapshot(st), nil
}

// ForceRelease frees the lock, whoever holds it.
func (p *pgTable) ForceRelease(name string, idem *idemRequest) (Lock, Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	old, now, err := p.store.ForceRelease(ctx, name, p.idem(idem))
	if err != nil {
		return Lock{}, Snapshot{}, p.fail(ctx, name, "", 0, err)
	}
	if !old.Lock.Free() && !now.Replayed {
		p.metrics.Forced()
	}
	return old.Lock, snapshot(now), nil
}

// Get returns the lock and its queue.
func (p *pgTable) Get(name string) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	st, err := p.store.Get(ctx, name)
	if err != nil {
		return Snapshot{}, p.fail(ctx, name, "", 0, err)
	}
	return snapshot(st), nil
}

// List returns every lock held or waited for.
func (p *pgTable) List() (map[string]Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	states, err := p.store.List(ctx)
	if err != nil {
		return nil, p.fail(ctx, "", "", 0, err)
	}
	out := make(map[string]Snapshot, len(states))
	for name, st := range states {
		out[name] = snapshot(st)
	}
	return out, nil
}

// Ready reports whether the database answers.
func (p *pgTable) Ready() error {
	if err := p.store.Ready(context.Background()); err != nil {
		return fmt.Errorf("%w: %v", errDatabase, err)
	}
	return nil
}

// Now is this node's clock; the leases are judged by the database's.
func (p *pgTable) Now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

// Len returns the number of held locks (0 when the database is away).
func (p *pgTable) Len() int {
	locks, _ := p.List()
	n := 0
	for _, l := range locks {
		if !l.Free() {
			n++
		}
	}
	return n
}

// stats returns the gauges' figures, from one listing.
func (p *pgTable) stats() metrics.TableStats {
	locks, _ := p.List()
	var st metrics.TableStats
	now := p.Now()
	for _, l := range locks {
		if !l.Free() {
			st.Locks++
		}
		st.Holders += len(l.Holders)
		st.Waiters += len(l.Waiting)
		if !l.AcquiredAt.IsZero() && !l.Free() {
			st.OldestAge = max(st.OldestAge, now.Sub(l.AcquiredAt))
		}
	}
	return st
}

// background has nothing to run: the store beats and listens by itself.
func (p *pgTable) background(ctx context.Context) { <-ctx.Done() }

// broken never fires: every change is the database's, and a failed one
// was not made.
func (p *pgTable) broken() <-chan error { return nil }

// shutdown leaves the table: this node's heartbeat stops.
func (p *pgTable) shutdown(bool) error {
	p.store.Close()
	return nil
}

var _ backend = (*pgTable)(nil)
var _ backend = (*table)(nil)
