package engine

import (
	"slices"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// A lock's queue: its head is granted whatever it can have (grantQueue,
// a step of every change); a waiter for several locks is granted all of
// them or none (grantSet), a claim any Count of its pool's members
// (grantClaim).

// grantQueue grants the head of the lock's queue, and the waiters right
// behind it for as long as each is compatible with the holders
// (lock.Compatible): a batch of same-key waiters goes in together. A
// grant waits in the queue until its request takes it up (claim). A
// waiter for several locks is granted them all or none (grantSet), and
// keeps its place meanwhile: no one behind it is granted before it.
func grantQueue(tx txn.Tx, name string) {
	// In the order they are served (priority, then arrival), by ID,
	// reading the queue and the lock again each time: grantSet grants in
	// other queues, and they may grant in this one, or take a claim out
	// of it. Nothing joins the queue meanwhile.
	queue := tx.Queue(name)
	if len(queue) == 0 {
		return
	}
	at := make(map[int64]int, len(queue)) // where each was: it stays there unless one before it left
	for i, w := range queue {
		at[w.ID] = i
	}
	for _, id := range inOrder(queue) {
		queue = tx.Queue(name)
		var w txn.Waiter
		if i := at[id]; i < len(queue) && queue[i].ID == id {
			w = queue[i]
		} else if w, _ = find(queue, id); w.ID == 0 {
			continue // a claim granted elsewhere, or taken out
		}
		if !w.Waiting() {
			continue // a kept place, or a grant not yet taken up
		}
		l := tx.Lock(name)
		if !lock.Compatible(l, w.Req) {
			return
		}
		if len(w.Set) > 0 {
			if !grantSet(tx, w) {
				return
			}
			continue
		}
		l = lock.Give(l, w.Req, tx.Now(), tx.NextToken)
		tx.Set(name, l)
		g := l.Only(w.Req.Requestor)
		w.Granted = &g
		tx.PutWaiter(name, w)
	}
}

// grantSet grants w, a waiter for several locks, every one of them, when
// it is at the head of each one's queue (no one waiting before it) and
// compatible with each one's holders; it reports whether it did. A
// transaction that did not name them all cannot tell: it wakes w, whose
// own request looks, naming them all.
func grantSet(tx txn.Tx, w txn.Waiter) bool {
	for _, name := range w.Set {
		if !tx.Named(name) {
			tx.Wake(w.ID)
			return false
		}
	}
	if w.Count > 0 {
		return grantClaim(tx, w)
	}
	for _, name := range w.Set {
		if !lock.Compatible(tx.Lock(name), w.Req) {
			return false
		}
		if !atHead(tx.Queue(name), w.ID) {
			return false
		}
	}
	for _, name := range w.Set {
		l := lock.Give(tx.Lock(name), w.Req, tx.Now(), tx.NextToken)
		tx.Set(name, l)
		q, _ := find(tx.Queue(name), w.ID)
		g := l.Only(w.Req.Requestor)
		q.Granted = &g
		tx.PutWaiter(name, q)
	}
	for _, name := range w.Set {
		grantQueue(tx, name) // same-key waiters behind it, in its other queues
	}
	return true
}

// grantClaim grants w, a claim on a pool, w.Count of the pool's members
// (w.Set) that are free and where it is at the head of the queue, the
// ones claimed least recently (lock.Pool.Pick), and takes it out of the
// other members' queues. A transaction that did not name the pool wakes
// w instead. It reports whether w was granted.
func grantClaim(tx txn.Tx, w txn.Waiter) bool {
	if !tx.NamedPool(w.Pool) {
		tx.Wake(w.ID)
		return false
	}
	p, ok := tx.Pool(w.Pool)
	if !ok {
		tx.Wake(w.ID) // the pool is gone: its request says so
		return false
	}
	var free []string
	for _, name := range w.Set {
		if tx.Lock(name).Free() && atHead(tx.Queue(name), w.ID) {
			free = append(free, name)
		}
	}
	chosen := p.Pick(free, w.Count)
	if chosen == nil {
		return false
	}
	// Every change to w first, then the queues it left: granting there
	// may come back to w, which must be seen granted by then.
	for _, name := range w.Set {
		if !slices.Contains(chosen, name) {
			tx.RemoveWaiter(name, w.ID)
			continue
		}
		l := lock.Give(tx.Lock(name), w.Req, tx.Now(), tx.NextToken)
		tx.Set(name, l)
		q, _ := find(tx.Queue(name), w.ID)
		g := l.Only(w.Req.Requestor)
		q.Granted = &g
		tx.PutWaiter(name, q)
	}
	tx.SetPool(w.Pool, p.Claim(chosen, tx.Now()))
	for _, name := range w.Set {
		if !slices.Contains(chosen, name) {
			grantQueue(tx, name) // whoever waited behind it there
		}
	}
	return true
}

// atHead reports whether no one waits before waiter id in queue.
func atHead(queue []txn.Waiter, id int64) bool {
	w, ok := find(queue, id)
	if !ok {
		return false
	}
	for _, q := range queue {
		if q.ID != id && q.Waiting() && q.Ahead(w) {
			return false
		}
	}
	return true
}

// waitingAhead counts the waiters of queue that wait to be granted and
// would be served before a new request of priority (of equal or higher
// priority: they came first).
func waitingAhead(queue []txn.Waiter, priority int) int {
	n := 0
	for _, w := range queue {
		if w.Waiting() && w.Priority >= priority {
			n++
		}
	}
	return n
}

// inOrder returns the IDs of queue's waiters in the order they are served
// (Waiter.Ahead).
func inOrder(queue []txn.Waiter) []int64 {
	sorted := slices.Clone(queue)
	slices.SortStableFunc(sorted, func(a, b txn.Waiter) int {
		if a.Ahead(b) {
			return -1
		}
		if b.Ahead(a) {
			return 1
		}
		return 0
	})
	ids := make([]int64, len(sorted))
	for i, w := range sorted {
		ids[i] = w.ID
	}
	return ids
}

// enqueue puts req at the back of the queue of each lock in names, as one
// waiter, and returns it: a request for several locks waits in each
// one's queue with one ID, a claim on pool in every member's, for any
// req.Count of them.
func enqueue(tx txn.Tx, names []string, pool string, req Request, credential string) txn.Waiter {
	w := txn.Waiter{ID: tx.NewWaiterID(), Req: req.Request, Since: tx.Now(), Idem: req.Idem.scopeOrNone(), Credential: credential, Priority: req.Priority}
	if len(names) > 1 || pool != "" {
		w.Set = names
	}
	if pool != "" {
		w.Count, w.Pool = req.Count, pool
	}
	for _, name := range names {
		tx.PutWaiter(name, w)
	}
	return w
}

// find returns the waiter with id in queue.
func find(queue []txn.Waiter, id int64) (txn.Waiter, bool) {
	for _, w := range queue {
		if w.ID == id {
			return w, true
		}
	}
	return txn.Waiter{}, false
}

// decide is lock.Decide over a set: granted if every lock can be had now,
// refused if one cannot be and req does not wait, else queued.
func decide(tx txn.Tx, names []string, req Request) lock.Verdict {
	verdict := lock.Grant
	for _, name := range names {
		switch lock.Decide(tx.Lock(name), waitingAhead(tx.Queue(name), req.Priority), req.Request, req.Wait > 0) {
		case lock.Refuse:
			return lock.Refuse
		case lock.Queue:
			verdict = lock.Queue
		}
	}
	return verdict
}
