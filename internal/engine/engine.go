// Package engine is the lock engine: each request's steps (end the leases
// that ran out, recall an Idempotency-Key, take over a retry, decide by
// internal/lock's rules, grant or queue, take a grant up, remember the
// outcome), written once as functions over a transaction of a Store,
// whichever store it is: a state file with its journal
// (internal/filestore) or a PostgreSQL database that several nodes share
// (internal/pgstore). A lock, a set of locks and a claim on a pool go
// through the same steps (acquire.go); the steps inside a transaction are
// in steps.go and queue.go, the waiting for a grant in wait.go.
//
// It knows no HTTP: its errors are its own values (ErrHeld, ErrKeyReused,
// ...), which the API maps to statuses, and its messages say what to do
// in the API's words only through internal/advice.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// The engine's errors; the API maps each one to an HTTP status.
var (
	// ErrHeld: the lock is held by others, or others wait first.
	ErrHeld = errors.New("locked")
	// ErrInvalid: the request cannot be made as asked, whatever the
	// locks' state (a claim for more members than its pool has).
	ErrInvalid    = errors.New("bad request")
	ErrClientGone = errors.New("the client went away while waiting")
	ErrKeyReused  = errors.New("Idempotency-Key reused")
	// ErrKeyBusy and ErrGrantEnded are about an Idempotency-Key whose
	// first request is still being answered, or whose grant has ended.
	ErrKeyBusy    = errors.New("Idempotency-Key in use")
	ErrGrantEnded = errors.New("grant ended")
	// ErrLimitDiffers: a request names a limit other than the one the
	// lock is held under.
	ErrLimitDiffers = errors.New("limit differs")
	ErrNoPool       = errors.New("no such pool")
	// ErrPoolChanged: the pool's members changed again and again while a
	// request read them.
	ErrPoolChanged = errors.New("the pool changed during the request")
	// ErrPoolTooSmall: a waiting claim's pool now has fewer members
	// than it claims.
	ErrPoolTooSmall = errors.New("the pool is too small for the claim")
	// ErrRemoved: a waiting request was taken out of its queue, by an
	// operator (RemoveWaiter) or by a newer request that superseded it;
	// its error says which, and why.
	ErrRemoved = errors.New("removed from the queue")
	// ErrNoWaiter: no request waits with the ID given.
	ErrNoWaiter = errors.New("no such waiter")
	// ErrClosed: the engine's store is shutting down; nothing changed.
	// A server that stops gives it as its requests' contexts' cause, so
	// that waits end with it.
	ErrClosed = txn.ErrClosed
	// ErrNotSaved: the change could not be made durable, and was not made.
	ErrNotSaved = txn.ErrNotSaved
	// ErrUnavailable: the database cannot be reached (or was lost as a
	// change committed: ErrInDoubt too).
	ErrUnavailable = txn.ErrUnavailable
	// ErrInDoubt: the connection failed as the change was committed, so
	// it may or may not have been made.
	ErrInDoubt = errors.New("the connection failed as the change was committed, so it may or may not have been made")
	// ErrDiskUncertain marks a failure after which the server cannot know
	// what the disk holds (a failed fsync): changes may or may not
	// survive a crash, and the server stops.
	ErrDiskUncertain = atomicfile.ErrUncertain
)

// Tuned numbers.
const (
	// placeHold is how long a waiter whose wait ran out keeps its place in
	// the queue for a request with its Idempotency-Key: a client that
	// waits in rounds (the Concourse resource) asks again at once, and
	// must not go to the back each time.
	placeHold = 30 * time.Second
	// changeTimeout bounds a change that does not wait for a lock when the
	// store is slow or away: the client hears 503 instead of hanging.
	changeTimeout = 10 * time.Second
	// takeOutTries is how often a waiter that must leave the queue tries
	// to, about 8 s in all: the database may be away for a while.
	takeOutTries = 12
)

// Engine is the lock table, over a store.
type Engine struct {
	store   Store
	log     *slog.Logger
	metrics Counter
	// backlogs is room for the one backlog page read at a time: streams
	// catching up share a core, and leave the other to the changes.
	backlogs chan struct{}
}

// Options are an engine's settings beyond its store.
type Options struct {
	Log     *slog.Logger // nil logs nothing
	Metrics Counter      // nil counts nothing
}

// Counter counts what the engine does, for its metrics
// (internal/metrics.Metrics).
type Counter interface {
	Acquired(waited time.Duration, queued bool)
	Refused()
	Released(counts int)
	Forced()
	Expired(holds int)
	WaitTimedOut()
}

// New returns the engine over store.
func New(store Store, opts Options) *Engine {
	e := &Engine{store: store, log: opts.Log, metrics: opts.Metrics, backlogs: make(chan struct{}, 1)}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.metrics == nil {
		e.metrics = noCounts{}
	}
	return e
}

// noCounts counts nothing.
type noCounts struct{}

func (noCounts) Acquired(time.Duration, bool) {}
func (noCounts) Refused()                     {}
func (noCounts) Released(int)                 {}
func (noCounts) Forced()                      {}
func (noCounts) Expired(int)                  {}
func (noCounts) WaitTimedOut()                {}

// Request is a request to take locks: a lock, a set of them, or members
// of a pool.
type Request struct {
	lock.Request
	Wait time.Duration   // how long to queue for the locks; 0 answers at once
	Idem *IdempotencyKey // its Idempotency-Key, if it sent one
	// Count is a claim's: how many of its pool's members; 0 for a request
	// by name.
	Count int
	// Priority, for a request that waits: it is served before every
	// waiter of lower priority, after those of equal or higher priority
	// that came first (default 0; negative is lower).
	Priority int
	// Supersede, on a request that waits, takes out of the queue every
	// earlier waiting request of the same requestor for the same lock,
	// set or pool, each answered ErrRemoved: the newest build deploys.
	Supersede bool
}

// IdempotencyKey is a request's Idempotency-Key, scoped to its method and
// locks, and a fingerprint of the request, to tell a repeat from a reuse.
type IdempotencyKey struct {
	Scope, Fingerprint string
}

// Snapshot is a lock and its queue at one moment.
type Snapshot struct {
	lock.Lock
	Waiting []lock.Waiting
	// Replayed says the request was answered before, by its
	// Idempotency-Key: this is the first answer again, and nothing changed.
	Replayed bool `json:"-"`
}

// fail turns a store's error into the engine's: what the client may do
// about it. The details go to the log.
func (e *Engine) fail(what string, err error) error {
	switch {
	case errors.Is(err, txn.ErrUncertain):
		e.log.Error("database request failed", "lock", what, "err", err)
		return fmt.Errorf("%w: %w; look at it again, or send the request again with its Idempotency-Key", ErrUnavailable, ErrInDoubt)
	case errors.Is(err, txn.ErrDropped):
		return fmt.Errorf("%w: this node lost its place in the queue while it could not reach the database; ask again", ErrUnavailable)
	case errors.Is(err, txn.ErrStandby):
		e.log.Error("database request failed", "lock", what, "err", err)
		return fmt.Errorf("%w: the change was not made, and the client may try again in a moment: %w", ErrUnavailable, txn.ErrStandby)
	case errors.Is(err, txn.ErrUnavailable):
		level := slog.LevelError
		if errors.Is(err, context.Canceled) {
			level = slog.LevelDebug // its caller went away (a client, or the server stopping): the database did not fail
		}
		e.log.Log(context.Background(), level, "database request failed", "lock", what, "err", err)
		return fmt.Errorf("%w: the change was not made; try again in a moment", ErrUnavailable)
	}
	return err
}

// Ready reports whether the store can make a change durable.
func (e *Engine) Ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return e.store.Ready(ctx)
}

// Now is the store's clock, to the millisecond, for the status page.
func (e *Engine) Now() time.Time { return e.store.Now() }

// Run does the store's own work until ctx is done: the locks it points
// at (leases run out, a dead node's waiters) are settled, as every change
// settles them first.
func (e *Engine) Run(ctx context.Context) {
	e.store.Run(ctx, func(ctx context.Context, names []string) error {
		return e.update(ctx, names, txn.Options{}, func(txn.Tx) error { return nil })
	})
}
