package engine

import (
	"context"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Store keeps the lock table: a state file with its journal
// (internal/filestore), or a PostgreSQL database that several nodes share
// (internal/pgstore). A store implements transactions over several locks
// (internal/txn) and nothing of the rules: the engine runs
// every request's steps over them, the same for both.
type Store interface {
	// Update runs apply in one transaction over the locks named (in any
	// order; the store takes them in its own). When apply returns nil the
	// transaction commits, and Update returns once it is durable; when
	// apply returns an error nothing is changed and Update returns it.
	// An error of the store's own is one of txn's: ErrNotSaved,
	// ErrUnavailable and ErrClosed say nothing changed, ErrUncertain that
	// it may have.
	Update(ctx context.Context, names []string, opts txn.Options, apply func(txn.Tx) error) error
	// History returns up to limit of the events of the lock called name
	// (every lock, for "") with IDs below before (0: any), newest first.
	History(ctx context.Context, name string, before uint64, limit int) ([]lock.Event, error)
	// Recent returns the last n events of each lock in names, newest
	// first.
	Recent(ctx context.Context, names []string, n int) (map[string][]lock.Event, error)
	// Backlog returns a page of up to limit of the events kept after
	// from, in the order of their IDs. Events reach the function given at
	// open as they commit.
	Backlog(ctx context.Context, from txn.Mark, limit int) (txn.Backlog, error)
	// View runs fn over the locks named as they are, changing nothing.
	View(ctx context.Context, names []string, fn func(txn.Reader) error) error
	// Scan reads into t (Reset first) a copy of a page of the locks held
	// or queued for, at one moment: the first page.Limit of them in name
	// order after page.After. It holds up changes for no longer than
	// reading that page takes.
	Scan(ctx context.Context, page txn.Page, t *txn.Tables) error
	// Credentials returns every credential kept, by name.
	Credentials(ctx context.Context) (map[string]access.Credential, error)
	// UpdateCredential changes the credential called name as change
	// says, in a change of its own, and returns once it is durable.
	UpdateCredential(ctx context.Context, name string, change txn.ChangeCredential) error
	// Pools returns every pool, by name.
	Pools(ctx context.Context) (map[string]lock.Pool, error)
	// Watch returns a channel that is signalled when the waiter with id
	// is granted, and a function that stops the watch. A watch may begin
	// inside the transaction that queues the waiter.
	Watch(id int64) (woken <-chan struct{}, stop func())
	// Waiter returns the waiter with id in each queue of names it is in
	// (every queue, for nil names), as it is, changing nothing and
	// holding up no change: an operator's lookup, and a waiter's
	// look at its own rows, every Recheck, before it takes the locks to
	// look at the rest.
	Waiter(ctx context.Context, id int64, names []string) (map[string]txn.Waiter, error)
	// Recheck is how often a waiter looks at its lock without being told
	// (notifications between nodes can be lost), or 0 when every grant is
	// told.
	Recheck() time.Duration
	// Run does the store's own work until ctx is done, and calls settle
	// on the locks whose leases it finds run out, or that must be looked
	// at again (a dead node's waiters were dropped).
	Run(ctx context.Context, settle func(ctx context.Context, names []string) error)
	// Now is the clock the server shows times by, to the millisecond.
	Now() time.Time
	// Ready returns why a change cannot be made durable now, or nil.
	Ready(ctx context.Context) error
	// Broken delivers the failure after which nothing more is durable:
	// the server must stop and start again from what the store kept.
	Broken() <-chan error
	// Close closes the store: clean, it saves everything first.
	Close(clean bool) error
}
