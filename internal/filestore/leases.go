package filestore

import (
	"container/heap"
	"context"
	"slices"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

// lease is one holder's expiry time. The heap may hold leases that were
// renewed or released since: settling their lock finds nothing to end.
type lease struct {
	at              time.Time
	name, requestor string
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
// with another expiry) to the heap. Callers hold s.mu.
func (s *Store) scheduleLeases(name string, old, next lock.Lock) {
	added := false
	for _, h := range next.Holders {
		was, _ := old.Holder(h.Name)
		if h.ExpiresAt.IsZero() || h.ExpiresAt.Equal(was.ExpiresAt) {
			continue
		}
		s.leases.push(lease{at: h.ExpiresAt, name: name, requestor: h.Name})
		added = true
	}
	if added {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// nextExpiry returns when the earliest lease in the heap runs out.
func (s *Store) nextExpiry() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.leases) == 0 {
		return time.Time{}, false
	}
	return s.leases[0].at, true
}

// due takes the leases that ran out by now off the heap, and returns
// them.
func (s *Store) due(now time.Time) []lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	var due []lease
	for {
		l, ok := s.leases.popDue(now)
		if !ok {
			return due
		}
		due = append(due, l)
	}
}

// expireLoop has settle end the leases that ran out, when they run out,
// until ctx is done: a lease ends when it runs out, not when a request
// next comes for its lock (every request settles its locks too).
func (s *Store) expireLoop(ctx context.Context, settle func(ctx context.Context, names []string) error) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := time.Hour
		if at, ok := s.nextExpiry(); ok {
			wait = max(at.Sub(s.now()), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
			continue
		case <-timer.C:
		}
		due := s.due(s.now())
		var names []string
		for _, l := range due {
			if !slices.Contains(names, l.name) {
				names = append(names, l.name)
			}
		}
		if len(names) == 0 {
			continue
		}
		if err := settle(ctx, names); err != nil {
			s.log.Error("releasing expired leases", "err", err)
			s.mu.Lock()
			for _, l := range due {
				s.leases.push(l) // to try again
			}
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(expireRetry):
			}
		}
	}
}
