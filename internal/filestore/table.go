package filestore

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// The table in memory: a transaction is made in place under the store's
// mutex, remembering what it replaced; at commit its durable part (the
// locks it set, the token counter, the outcomes it remembers and forgets)
// becomes one journal record, and the caller hears of it once that record
// is on disk. A record that cannot be written undoes its transaction, and
// every later one (rollback).

// tx is one transaction over the locks it names. Callers hold s.mu from
// begin to commit or abort.
type tx struct {
	s     *Store
	names []string
	now   time.Time

	oldLocks  map[string]lock.Lock    // what Set replaced, the first time
	queueOps  []queueOp               // the queue changes, to undo in reverse
	lastToken uint64                  // the counter at begin
	granted   []grant                 // waiters it granted, to tell at commit
	tookOver  []grant                 // waiters a later round took over, to tell at commit
	woken     []grant                 // waiters to wake at commit
	remembers []idempotency.Entry     // outcomes to remember
	forgets   []string                // scopes whose outcome to forget
	events    []lock.Event            // the events to add to the history
	pool      slot[lock.Pool]         // the pool it named
	cred      slot[access.Credential] // the credential it named
}

// queueOp is one change to a queue, made in place: the waiter at index
// was replaced (old set), added (old nil) or removed (removed set).
type queueOp struct {
	name    string
	index   int
	old     *txn.Waiter
	removed bool
}

// grant names a waiter that a transaction granted.
type grant struct {
	name string
	id   int64
}

// undo is what one committed transaction replaced, to put back if its
// record cannot be written.
type undo struct {
	seq        uint64
	oldLocks   map[string]lock.Lock // free (zero) for locks that were not held
	lastToken  uint64
	granted    []grant
	remembered []idempotency.Entry
	forgotten  []idempotency.Entry
	lastEvent  uint64       // the event counter before it
	events     []lock.Event // the events it added
	pool       slot[lock.Pool]
	cred       slot[access.Credential]
}

func (s *Store) begin(names []string, pool, credential string) *tx {
	return &tx{s: s, names: names, now: s.now(), lastToken: s.lastToken,
		pool: slot[lock.Pool]{kind: "pool", name: pool}, cred: slot[access.Credential]{kind: "credential", name: credential}}
}

// check panics when x did not name the lock called name: the engine must
// name every lock up front, as a database store needs it to.
func (x *tx) check(name string) {
	if !slices.Contains(x.names, name) {
		panic(fmt.Sprintf("filestore: lock %q is not one the transaction named (%q)", name, x.names))
	}
}

func (x *tx) Now() time.Time { return x.now }

func (x *tx) Named(name string) bool { return slices.Contains(x.names, name) }

func (x *tx) Wake(id int64) { x.woken = append(x.woken, grant{id: id}) }

func (x *tx) NamedPool(name string) bool { return x.pool.named(name) }

func (x *tx) Pool(name string) (lock.Pool, bool) { return x.pool.get(x.s.pools, name) }

func (x *tx) SetPool(name string, p lock.Pool) { x.pool.set(x.s.pools, name, p) }

func (x *tx) DeletePool(name string) { x.pool.remove(x.s.pools, name) }

func (x *tx) Lock(name string) lock.Lock {
	x.check(name)
	return x.s.locks[name]
}

func (x *tx) Queue(name string) []txn.Waiter {
	x.check(name)
	return x.s.queues[name]
}

func (x *tx) Set(name string, l lock.Lock) {
	x.check(name)
	if x.oldLocks == nil {
		x.oldLocks = map[string]lock.Lock{}
	}
	if _, ok := x.oldLocks[name]; !ok {
		x.oldLocks[name] = x.s.locks[name]
	}
	x.s.put(name, l)
}

func (x *tx) NextToken() uint64 {
	x.s.lastToken++
	return x.s.lastToken
}

func (x *tx) NewWaiterID() int64 {
	x.s.lastWaiter++
	return x.s.lastWaiter
}

// Queues are changed in place, under s.mu: a reader copies what it keeps
// (Scan), and a transaction keeps each change to undo it.

func (x *tx) PutWaiter(name string, w txn.Waiter) {
	x.check(name)
	queue := x.s.queues[name]
	i, found := slices.BinarySearchFunc(queue, w.ID, byID)
	if found {
		old := queue[i]
		if old.Granted == nil && w.Granted != nil {
			x.granted = append(x.granted, grant{name, w.ID})
		}
		if old.Round != w.Round {
			x.tookOver = append(x.tookOver, grant{name, w.ID}) // its earlier request stands down
		}
		x.queueOps = append(x.queueOps, queueOp{name: name, index: i, old: &old})
		queue[i] = w
		return
	}
	x.queueOps = append(x.queueOps, queueOp{name: name, index: i})
	x.s.setQueue(name, slices.Insert(queue, i, w))
}

func (x *tx) RemoveWaiter(name string, id int64) {
	x.check(name)
	queue := x.s.queues[name]
	i, found := slices.BinarySearchFunc(queue, id, byID)
	if !found {
		return
	}
	old := queue[i]
	x.queueOps = append(x.queueOps, queueOp{name: name, index: i, old: &old, removed: true})
	if i == 0 {
		queue = queue[1:] // the head leaves most often: no copy
	} else {
		queue = slices.Delete(queue, i, i+1)
	}
	x.s.setQueue(name, queue)
}

func byID(w txn.Waiter, id int64) int { return cmp.Compare(w.ID, id) }

func (x *tx) Recall(scope string) (idempotency.Entry, bool) { return x.s.requests.Get(scope, x.now) }
func (x *tx) Remember(e idempotency.Entry)                  { x.remembers = append(x.remembers, e) }
func (x *tx) Forget(scope string)                           { x.forgets = append(x.forgets, scope) }
func (x *tx) Record(e lock.Event)                           { x.events = append(x.events, e) }

// put stores l under name, or deletes name when l is free, so that
// released locks do not accumulate. Callers hold s.mu.
func (s *Store) put(name string, l lock.Lock) {
	if l.Free() {
		delete(s.locks, name)
	} else {
		s.locks[name] = l
	}
	s.index(name)
}

// setQueue replaces the queue of the lock called name. Callers hold s.mu.
func (s *Store) setQueue(name string, queue []txn.Waiter) {
	if len(queue) == 0 {
		delete(s.queues, name)
	} else {
		s.queues[name] = queue
	}
	s.index(name)
}

// index puts name in s.names if it is held or has a queue, and takes it
// out if not. Callers hold s.mu.
func (s *Store) index(name string) {
	_, held := s.locks[name]
	if held || len(s.queues[name]) > 0 {
		s.names.ReplaceOrInsert(name)
	} else {
		s.names.Delete(name)
	}
}

// abort puts back everything x changed.
func (x *tx) abort() {
	for name, l := range x.oldLocks {
		x.s.restore(name, l)
	}
	for _, op := range slices.Backward(x.queueOps) {
		queue := x.s.queues[op.name]
		switch {
		case op.removed:
			queue = slices.Insert(queue, op.index, *op.old)
		case op.old != nil:
			queue[op.index] = *op.old
		default:
			queue = slices.Delete(queue, op.index, op.index+1)
		}
		x.s.setQueue(op.name, queue)
	}
	x.s.lastToken = x.lastToken
	x.pool.putBack(x.s.pools)
	x.cred.putBack(x.s.credentials)
}

// commit hands x's durable part to the journal under a new seq, which the
// table now shows, and tells the waiters x granted. A transaction that
// changed no lock and no outcome (a waiter's queue, a look) writes
// nothing. If the journal cannot take the record, x is undone at once.
func (x *tx) commit() error {
	s := x.s
	if len(x.oldLocks) == 0 && len(x.remembers) == 0 && len(x.forgets) == 0 && !x.pool.changed() && !x.cred.changed() {
		s.tell(x.granted)
		s.tell(x.tookOver)
		s.tell(x.woken)
		return nil
	}
	c := Change{Seq: s.lastSeq + 1, Prev: s.seq, LastToken: s.lastToken, Locks: make(map[string]*lock.Lock, len(x.oldLocks)),
		Remember: x.remembers, Forget: x.forgets, Pools: x.pool.record(s.pools), Credentials: x.cred.record(s.credentials)}
	lastEvent := s.lastEvent
	if len(x.events) > 0 && s.keep.Events > 0 {
		for i := range x.events {
			x.events[i].ID = lastEvent + uint64(i) + 1
		}
		c.Events, c.LastEvent = x.events, lastEvent+uint64(len(x.events))
	} else {
		x.events = nil
	}
	for name := range x.oldLocks {
		if l, ok := s.locks[name]; ok {
			c.Locks[name] = &l
		} else {
			c.Locks[name] = nil
		}
	}
	if err := s.append(c); err != nil {
		if !errors.Is(err, txn.ErrClosed) && !errors.Is(err, txn.ErrNotSaved) {
			err = fmt.Errorf("%w: %w", txn.ErrNotSaved, err)
		}
		x.abort()
		return err
	}
	s.lastSeq++
	s.seq = s.lastSeq
	s.lastEvent = max(s.lastEvent, c.LastEvent)
	s.record(x.events)
	if len(x.events) > 0 && s.onEvents != nil {
		s.unsent = append(s.unsent, unsent{seq: s.seq, events: x.events})
	}
	var forgotten []idempotency.Entry
	for _, scope := range x.forgets {
		if e, ok := s.requests.Take(scope); ok {
			forgotten = append(forgotten, e)
		}
	}
	for _, e := range x.remembers {
		s.requests.Put(e)
	}
	durable := s.durableSeq.Load()
	for len(s.undo) > 0 && s.undo[0].seq <= durable {
		s.undo = s.undo[1:]
	}
	s.undo = append(s.undo, undo{seq: s.seq, oldLocks: x.oldLocks, lastToken: x.lastToken, granted: x.granted,
		remembered: x.remembers, forgotten: forgotten, pool: x.pool, cred: x.cred, lastEvent: lastEvent, events: x.events})
	for name, old := range x.oldLocks {
		s.scheduleLeases(name, old, s.locks[name])
	}
	s.tell(x.granted)
	s.tell(x.tookOver)
	s.tell(x.woken)
	return nil
}

// restore puts back l, which a change replaced, with its leases: the
// expiry loop may have dropped them from the heap meanwhile. Callers hold
// s.mu.
func (s *Store) restore(name string, l lock.Lock) {
	s.put(name, l)
	s.scheduleLeases(name, lock.Lock{}, l)
}

// rollback undoes every change from seq from on: the journal could not
// save them, and no client has heard of them. A waiter whose grant is
// undone waits again. It returns the last seq it undid. The journal calls
// it.
func (s *Store) rollback(from uint64, err error) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.undo) > 0 && s.undo[len(s.undo)-1].seq >= from {
		u := s.undo[len(s.undo)-1]
		for name, l := range u.oldLocks {
			s.restore(name, l)
		}
		for _, g := range u.granted {
			s.ungrant(g)
		}
		for _, e := range u.remembered {
			s.requests.Delete(e)
		}
		for _, e := range u.forgotten {
			s.requests.Put(e)
		}
		s.lastToken, s.lastEvent = u.lastToken, u.lastEvent
		s.unrecord(u.events)
		if n := len(s.unsent); n > 0 && s.unsent[n-1].seq == u.seq {
			s.unsent = s.unsent[:n-1]
		}
		u.pool.putBack(s.pools)
		u.cred.putBack(s.credentials)
		s.undo = s.undo[:len(s.undo)-1]
	}
	// The table now shows the last change that was saved: the latest one
	// still in s.undo (the journal writes in order, and earlier failures
	// were undone already), or else the latest one known to be durable.
	s.seq = s.durableSeq.Load()
	if n := len(s.undo); n > 0 {
		s.seq = s.undo[n-1].seq
	}
	s.log.Error("changes could not be saved and were undone", "from_seq", from, "to_seq", s.lastSeq, "err", err)
	return s.lastSeq
}

// ungrant puts a granted waiter back to waiting, if it has not taken its
// grant up (a request that did waits for the failed change, and fails).
// Callers hold s.mu.
func (s *Store) ungrant(g grant) {
	queue := s.queues[g.name]
	i := slices.IndexFunc(queue, func(w txn.Waiter) bool { return w.ID == g.id })
	if i < 0 || queue[i].Granted == nil {
		return
	}
	queue[i].Granted = nil
}

// tables copies a page of the table into t: the locks are shared (a Lock
// is never changed in place), the queues copied. Callers hold s.mu.
func (s *Store) tables(page txn.Page, t *txn.Tables) {
	t.At = s.now()
	s.names.AscendGreaterOrEqual(max(page.After, page.Prefix), func(name string) bool {
		if name == page.After {
			return true
		}
		if !strings.HasPrefix(name, page.Prefix) || page.Limit > 0 && len(t.Names) == page.Limit {
			return false
		}
		t.Names = append(t.Names, name)
		if l, ok := s.locks[name]; ok {
			t.Locks[name] = l
		}
		if q := s.queues[name]; len(q) > 0 {
			t.Queues[name] = slices.Clone(q)
		}
		return true
	})
}
