// Package stream hands the events of locks' histories, as changes commit,
// to the clients that follow them (GET /events): each subscriber has a
// buffer of its own, and one that falls behind by a whole buffer is cut
// off, never waited for. Publishing never blocks and never grows memory
// past the subscribers' buffers.
package stream

import (
	"sync"

	"github.com/locker-ci/locker/internal/lock"
)

// Hub is where a store's committed events are published, in commit order,
// to every subscriber whose filter takes them.
type Hub struct {
	mu   sync.Mutex
	subs map[*Sub]struct{}
}

// NewHub returns a hub with no subscribers.
func NewHub() *Hub { return &Hub{subs: map[*Sub]struct{}{}} }

// Sub is one subscriber: its events come on C, in the order published,
// until it is closed or cut off (Cut is then closed, and C no longer
// receives).
type Sub struct {
	C   <-chan lock.Event
	Cut <-chan struct{}

	h     *Hub
	c     chan lock.Event
	cut   chan struct{}
	match func(lock.Event) bool
}

// Subscribe returns a subscriber to the events match takes (nil: every
// one), with room for buffer events not yet read.
func (h *Hub) Subscribe(match func(lock.Event) bool, buffer int) *Sub {
	s := &Sub{h: h, c: make(chan lock.Event, buffer), cut: make(chan struct{}), match: match}
	s.C, s.Cut = s.c, s.cut
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s
}

// Close stops s's events.
func (s *Sub) Close() {
	s.h.mu.Lock()
	delete(s.h.subs, s)
	s.h.mu.Unlock()
}

// Publish hands events, in order, to each subscriber that takes them. A
// subscriber whose buffer is full is cut off: it misses this event and
// every later one, and is told so through Cut.
func (h *Hub) Publish(events []lock.Event) {
	if len(events) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		for _, e := range events {
			if s.match != nil && !s.match(e) {
				continue
			}
			select {
			case s.c <- e:
			default:
				delete(h.subs, s)
				close(s.cut)
			}
			if _, ok := h.subs[s]; !ok {
				break
			}
		}
	}
}

// Len returns the number of subscribers.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}
