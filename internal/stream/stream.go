// Package stream hands the events of locks' histories, as changes commit,
// to the clients that follow them (GET /events): each subscriber has a
// buffer of its own, and one that falls behind by a whole buffer is cut
// off, never waited for. Publishing never blocks and never grows memory
// past the subscribers' buffers; an event costs a map lookup per lock
// followed, not a look at every subscriber.
package stream

import (
	"sync"

	"github.com/locker-ci/locker/internal/lock"
)

// Hub is where a store's committed events are published, in commit order,
// to every subscriber that follows their lock.
type Hub struct {
	mu     sync.Mutex
	byLock map[string]map[*Sub]struct{} // subscribers that follow some locks, by lock
	all    map[*Sub]struct{}            // subscribers that follow every lock
}

// NewHub returns a hub with no subscribers.
func NewHub() *Hub { return &Hub{byLock: map[string]map[*Sub]struct{}{}, all: map[*Sub]struct{}{}} }

// Sub is one subscriber. Ready is signalled when events wait to be taken
// (Take), in the order published; Cut is closed when it fell behind and
// was cut off (Take still gives what it had).
type Sub struct {
	Ready <-chan struct{}
	Cut   <-chan struct{}

	h     *Hub
	ready chan struct{}
	cut   chan struct{}
	locks []string // the locks it follows; nil for every one
	limit int      // the most events it may fall behind
	// Guarded by h.mu: the events not yet taken (the slice grows as they
	// come: an idle subscriber costs little), and whether it is closed or
	// cut off.
	queue []lock.Event
	gone  bool
}

// Subscribe returns a subscriber to the events of the locks named (nil:
// of every lock), which is cut off if it falls limit events behind.
func (h *Hub) Subscribe(locks []string, limit int) *Sub {
	s := &Sub{h: h, ready: make(chan struct{}, 1), cut: make(chan struct{}), locks: locks, limit: limit}
	s.Ready, s.Cut = s.ready, s.cut
	h.mu.Lock()
	defer h.mu.Unlock()
	if locks == nil {
		h.all[s] = struct{}{}
		return s
	}
	for _, name := range locks {
		if h.byLock[name] == nil {
			h.byLock[name] = map[*Sub]struct{}{}
		}
		h.byLock[name][s] = struct{}{}
	}
	return s
}

// Take returns the events waiting, oldest first, and leaves none.
func (s *Sub) Take() []lock.Event {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	q := s.queue
	s.queue = nil
	return q
}

// Close stops s's events.
func (s *Sub) Close() {
	s.h.mu.Lock()
	s.h.remove(s)
	s.h.mu.Unlock()
}

// remove takes s out of the hub. Callers hold h.mu.
func (h *Hub) remove(s *Sub) {
	s.gone = true
	if s.locks == nil {
		delete(h.all, s)
		return
	}
	for _, name := range s.locks {
		delete(h.byLock[name], s)
		if len(h.byLock[name]) == 0 {
			delete(h.byLock, name)
		}
	}
}

// Publish hands events, in order, to each subscriber that follows their
// lock. A subscriber whose buffer is full is cut off: it misses this
// event and every later one, and is told so through Cut.
func (h *Hub) Publish(events []lock.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range events {
		for s := range h.all {
			h.send(s, e)
		}
		for s := range h.byLock[e.Lock] {
			h.send(s, e)
		}
	}
}

// send hands e to s, or cuts s off. Callers hold h.mu.
func (h *Hub) send(s *Sub, e lock.Event) {
	if s.gone {
		return
	}
	if len(s.queue) == s.limit {
		h.remove(s)
		close(s.cut)
		return
	}
	s.queue = append(s.queue, e)
	select {
	case s.ready <- struct{}{}:
	default: // signalled already
	}
}

// Len returns the number of subscribers.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(h.all)
	seen := map[*Sub]struct{}{}
	for _, subs := range h.byLock {
		for s := range subs {
			seen[s] = struct{}{}
		}
	}
	return n + len(seen)
}
