// Package txn defines the transaction over several locks that every store
// of the lock table implements, in the shape of etcd's STM
// (concurrency.NewSTM(c, apply func(STM) error)): a transaction names its
// locks when it begins, sees each one's state and queue, the clock and the
// next fencing token, changes them, and commits or aborts as a whole.
//
// The lock engine writes each request's steps once, as functions over a
// Tx; the stores (memory with a journal, PostgreSQL) implement Tx and
// nothing of the rules. Like internal/lock, this package does no I/O.
package txn

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
)

// Reader sees the locks a transaction named, as they are at its start
// and as it has changed them since. A lock no one holds is free (zero).
type Reader interface {
	// Now is the store's clock, to the millisecond: the one leases are
	// judged by (the database's, when several nodes share one).
	Now() time.Time
	// Lock returns the lock called name, leases not yet settled.
	Lock(name string) lock.Lock
	// Queue returns the lock's queue, first come first: waiters, places
	// kept for a client's next round, and grants not yet taken up. A
	// change to the queue (PutWaiter, RemoveWaiter) may change the slice
	// in place: read it again after one.
	Queue(name string) []Waiter
	// Named reports whether the transaction named the lock called name.
	Named(name string) bool
}

// Tx is one transaction over the locks it named when it began. Its
// changes are seen by its own reads at once, by no one else until it
// commits, and are made all together or not at all. Touching a lock it
// did not name is a bug, and panics.
type Tx interface {
	Reader
	// Set makes l the lock called name; a free l is no lock at all.
	Set(name string, l lock.Lock)
	// NextToken hands out the next fencing token: higher than every one
	// handed out before, on every node, across restarts.
	NextToken() uint64
	// NewWaiterID returns an ID for a new waiter, higher than every
	// waiter's before it: IDs order a queue.
	NewWaiterID() int64
	// PutWaiter adds w to the lock's queue, or replaces the waiter with
	// w's ID in place.
	PutWaiter(name string, w Waiter)
	// RemoveWaiter takes the waiter with id out of the lock's queue.
	RemoveWaiter(name string, id int64)
	// Wake tells the request of the waiter with id, once the transaction
	// commits, to look at its locks again: a waiter for several locks is
	// at the head of one of their queues, and may now have them all.
	Wake(id int64)
	// NamedPool reports whether the transaction named the pool called
	// name (Options.Pool).
	NamedPool(name string) bool
	// Pool returns the pool the transaction named, and whether it is
	// there. Asking for another panics.
	Pool(name string) (lock.Pool, bool)
	// SetPool makes p the pool the transaction named.
	SetPool(name string, p lock.Pool)
	// DeletePool removes the pool the transaction named.
	DeletePool(name string)
	// Recall returns the outcome remembered for scope, if one is kept.
	Recall(scope string) (idempotency.Entry, bool)
	// Remember keeps e, in place of any outcome for its scope.
	Remember(e idempotency.Entry)
	// Forget drops the outcome remembered for scope.
	Forget(scope string)
	// Record adds e to its lock's history with the change: kept if the
	// transaction commits, gone with it if not. The store gives it its
	// ID.
	Record(e lock.Event)
}

// Options tell a store, as a transaction begins, what it will ask for, so
// that a store that reads over a network fetches it in the same round
// trip. A Tx answers without them too, at the cost of another trip.
type Options struct {
	Recall  string // an Idempotency-Key scope the transaction recalls
	Token   bool   // it may hand out a fencing token
	NewWait bool   // it may add a waiter
	Pool    string // a pool the transaction reads and may change; "" for none
}

// Waiter is one request in a lock's queue.
type Waiter struct {
	ID    int64        // orders the queue; unique across the store
	Owner string       // the node whose client waits, which alone takes up its grant; "" for this one
	Req   lock.Request // what it asked for
	Since time.Time    // when it began to wait
	// Idem is the scope of its Idempotency-Key, or "": a waiter with one
	// keeps its place for a while when its wait runs out (Left), for the
	// same request's next round.
	Idem string
	// Left is when its wait ran out, for a place kept: it is granted
	// nothing, and a request with its key that queues takes the place.
	Left time.Time
	// Granted is the lock as granted to it, until its request takes it
	// up and takes it out of the queue.
	Granted *lock.Lock
	// Round counts the later requests with its Idempotency-Key that took
	// it over (a client that sent again): the request of the last round
	// answers for it.
	Round int
	// Abandoned says no request will take it up: its node was taken for
	// dead. The store sets it; the engine takes the waiter out, and gives
	// back what it was granted.
	Abandoned bool
	// Set names every lock the waiter waits for, in name order, when it
	// waits for more than one: it is in each one's queue, with the same
	// ID, and is granted all of them in one change or none.
	Set []string
	// Count, for a claim on a pool (Pool), is how many of Set (the pool's
	// members) it waits for: any Count of them, free, in one change. The
	// members it is not granted it leaves at once.
	Count int
	Pool  string
	// Credential names the credential of the request that queued it, for
	// the history of its grant.
	Credential string
	// Priority orders the queues: a waiter waits ahead of every one of
	// lower priority, behind those of equal or higher priority with lower
	// IDs (one order across all queues: see Ahead).
	Priority int
	// Removed says why it was taken out of its queue (an operator removed
	// it, or a newer request superseded it): it is granted nothing and
	// holds up no one, and its request, told, answers with it and takes
	// it out.
	Removed string
}

// Ahead reports whether w is served before v: a higher priority, or the
// same and an earlier ID. It is one order over every waiter of every
// queue, so waiters for sets and claims cannot wait for each other in a
// circle.
func (w Waiter) Ahead(v Waiter) bool {
	return w.Priority > v.Priority || w.Priority == v.Priority && w.ID < v.ID
}

// Waiting reports whether w waits to be granted: not a kept place, not
// granted already, not abandoned, not removed.
func (w Waiter) Waiting() bool {
	return w.Left.IsZero() && w.Granted == nil && !w.Abandoned && w.Removed == ""
}

// History says how much of each lock's history a store keeps: at most
// Events events a lock, none older than Age.
type History struct {
	Events int
	Age    time.Duration
}

// Keeps reports whether an event at at is still kept at now.
func (h History) Keeps(at, now time.Time) bool { return h.Age <= 0 || now.Sub(at) < h.Age }

// Mark is where a reader of the events (a stream catching up, a node
// following the others) has got to: the highest event ID it has read,
// and, on PostgreSQL, the oldest transaction still running as it read (0
// when not known, as when a client resumes from an event ID alone) and
// the transaction of the event a client resumed from, whose events it
// had. Its next read starts there.
type Mark struct {
	After   uint64
	Running uint64
	Had     uint64
}

// Backlog is a page of the events kept after a Mark.
type Backlog struct {
	Events    []lock.Event // in the order of their IDs
	Next      Mark         // where the next page starts
	More      bool         // the page was full: there may be more after Next
	Forgotten uint64       // the highest ID of an event no longer kept
}

// Errors of stores, which the server answers each in its own way.
var (
	// ErrClosed: the store is shutting down; nothing was changed.
	ErrClosed = errors.New("locker is shutting down; send the request again in a moment")
	// ErrNotSaved: the change could not be made durable, and was not made.
	ErrNotSaved = errors.New("could not save the lock state")
	// ErrUnavailable: the database cannot be reached; nothing was changed.
	ErrUnavailable = errors.New("the database cannot be reached")
	// ErrUncertain: the connection failed while the change was committed:
	// it may or may not have been made.
	ErrUncertain = errors.New("the change may or may not have been committed")
	// ErrDropped: a waiter is no longer in its queue (its node was taken
	// for dead).
	ErrDropped = errors.New("dropped from the queue")
	// ErrStandby: the database server reached is a standby, in recovery,
	// which takes no changes; nothing was changed. It comes with
	// ErrUnavailable.
	ErrStandby = errors.New("the database server is a standby (in recovery), which takes no changes: " +
		"point LOCKER_DATABASE_URL at the primary, or name every server and add target_session_attrs=read-write " +
		"(postgres://a:5432,b:5432/locker?target_session_attrs=read-write); see docs/nodes.md")
)

// NoRoomError: the disk is full, and the next change needs Need bytes
// free on it.
type NoRoomError struct{ Need int64 }

func (e *NoRoomError) Error() string {
	return fmt.Sprintf("the disk is full: the next change needs %d bytes free", e.Need)
}

// Page says which part of the table a Scan reads: the locks held or
// waited for whose names start with Prefix and sort after After (by
// bytes), in that order, at most Limit of them (0: every one).
type Page struct {
	Prefix string
	After  string
	Limit  int
}

// Has reports whether name is in the part of the table p reads, Limit
// aside.
func (p Page) Has(name string) bool {
	return name > p.After && strings.HasPrefix(name, p.Prefix)
}

// Tables is a copy of a page of the table at one moment: a listing reads
// one page after another into the same Tables, reusing its room.
type Tables struct {
	At     time.Time
	Names  []string // the locks held or with a queue, in name order
	Locks  map[string]lock.Lock
	Queues map[string][]Waiter
}

// Reset empties t for the next page, keeping its room.
func (t *Tables) Reset() {
	t.At, t.Names = time.Time{}, t.Names[:0]
	if t.Locks == nil {
		t.Locks, t.Queues = map[string]lock.Lock{}, map[string][]Waiter{}
	}
	clear(t.Locks)
	clear(t.Queues)
}

// Now returns when the copy was made.
func (t *Tables) Now() time.Time { return t.At }

// Lock returns the lock called name.
func (t *Tables) Lock(name string) lock.Lock { return t.Locks[name] }

// Queue returns the queue of the lock called name.
func (t *Tables) Queue(name string) []Waiter { return t.Queues[name] }

// Named reports whether name is one of the page's locks.
func (t *Tables) Named(name string) bool {
	_, ok := slices.BinarySearch(t.Names, name)
	return ok
}

// Contents is what a store holds at rest, as locker migrate copies it
// from one store to another: the held locks, the pools, the last
// fencing token handed out, each lock's history, the outcomes
// remembered by Idempotency-Key, and the credentials (their secrets'
// hashes: a secret is kept nowhere).
type Contents struct {
	Locks     map[string]lock.Lock
	Pools     map[string]lock.Pool
	LastToken uint64
	// History is the events kept, in the order of their IDs; LastEvent
	// the highest event ID handed out.
	History     []lock.Event
	LastEvent   uint64
	Requests    []idempotency.Entry // oldest first
	Credentials []access.Credential // by name
}

// Renumbered returns events (in the order of their IDs) with IDs above
// last, shifted up together when the first is not: a store that takes
// in another's history keeps its own IDs, and the events' order.
func Renumbered(events []lock.Event, last uint64) []lock.Event {
	if len(events) == 0 || events[0].ID > last {
		return events
	}
	shift := last - events[0].ID + 1
	out := slices.Clone(events)
	for i := range out {
		out[i].ID += shift
	}
	return out
}

// ChangeCredential says what becomes of a credential, found (ok) as c or
// not there: the credential to keep (nil: none), or why nothing changes.
type ChangeCredential func(c access.Credential, ok bool) (*access.Credential, error)
