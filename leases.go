package main

import (
	"cmp"
	"container/heap"
	"context"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

// lease is one holder's expiry time. The heap may hold leases that were
// renewed or released since; the table skips those when they come due.
type lease struct {
	at              time.Time
	name, requestor string

	// Set when the lease ends, for the log: the lock's key and token.
	key   string
	token uint64
}

// leaseHeap orders leases by expiry, earliest first.
type leaseHeap []lease

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h leaseHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *leaseHeap) Push(x any)        { *h = append(*h, x.(lease)) }
func (h *leaseHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	*h = old[:len(old)-1]
	return l
}

// push adds l.
func (h *leaseHeap) push(l lease) { heap.Push(h, l) }

// popDue removes and returns the earliest lease if it is due by now.
func (h *leaseHeap) popDue(now time.Time) (lease, bool) {
	if len(*h) == 0 || (*h)[0].at.After(now) {
		return lease{}, false
	}
	return heap.Pop(h).(lease), true
}

// expireRetry is how long the expiry loop waits after failing to save an
// expiry, so that a broken disk is not hammered.
const expireRetry = time.Second

// scheduleLeases adds the leases that next has and old did not (or had
// with another expiry) to the heap. Callers hold t.mu.
func (t *table) scheduleLeases(name string, old, next Lock) {
	added := false
	for _, h := range next.Holders {
		was, _ := old.Holder(h.Name)
		if h.ExpiresAt.IsZero() || h.ExpiresAt.Equal(was.ExpiresAt) {
			continue
		}
		t.leases.push(lease{at: h.ExpiresAt, name: name, requestor: h.Name})
		added = true
	}
	if added {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// nextExpiry returns when the earliest lease in the heap runs out.
func (t *table) nextExpiry() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.leases) == 0 {
		return time.Time{}, false
	}
	return t.leases[0].at, true
}

// expireDue releases, in x, every count of each holder whose lease ran out
// by now, as lock.Expire rules, and grants the waiters that this lets in.
// It returns the leases it ended, to log once x is committed. Callers hold
// t.mu. Every operation calls it first, so that a lease is judged when a
// request comes, not when the expiry loop next wakes.
func (t *table) expireDue(x *tx, now time.Time) []lease {
	var due []lease
	for {
		e, ok := t.leases.popDue(now)
		if !ok {
			break
		}
		before := t.locks[e.name]
		l, ok := lock.Expire(before, e.requestor, e.at)
		if !ok {
			continue // released or renewed since
		}
		e.key, e.token = before.Key, before.Token
		due = append(due, e)
		x.set(e.name, l)
	}
	for _, e := range due {
		x.giveQueue(e.name)
	}
	return due
}

// logExpired logs the leases a committed change ended.
func (t *table) logExpired(due []lease) {
	t.metrics.Expired(len(due))
	for _, e := range due {
		t.log.Info("lease expired; hold released", "lock", e.name, "key", e.key, "holder", e.requestor, "token", e.token, "expired_at", e.at)
	}
}

// expire releases every hold whose lease ran out by now.
func (t *table) expire(now time.Time) error {
	t.mu.Lock()
	x := t.begin()
	due := t.expireDue(x, now)
	err := x.commit()
	seq := t.seq
	t.mu.Unlock()
	if err := cmp.Or(err, t.durable(seq)); err != nil {
		return err // the change was undone, and its leases are back in the heap
	}
	t.logExpired(due)
	return nil
}

// expireLoop runs expire whenever the earliest lease runs out, until ctx
// is done.
func (t *table) expireLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := time.Hour
		if at, ok := t.nextExpiry(); ok {
			wait = max(at.Sub(t.now()), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		case <-timer.C:
			if err := t.expire(t.now()); err != nil {
				t.log.Error("releasing expired leases", "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(expireRetry):
				}
			}
		}
	}
}
