package filestore

import (
	"cmp"
	"context"
	"slices"

	"github.com/locker-ci/locker/internal/lock"
)

// Each lock's history is a slice of its events, oldest first, kept apart
// from the lock (a free lock keeps its history). Slices are only
// appended to, or cut from either end by reslicing, never changed in
// place: a checkpoint's copy shares them.

// record adds events, in the order of their IDs, to their locks'
// histories, keeping at most s.keep.Events a lock. Callers hold s.mu, or
// own s.
func (s *Store) record(events []lock.Event) {
	if s.keep.Events <= 0 {
		return
	}
	for _, e := range events {
		h := append(s.history[e.Lock], e)
		if len(h) > s.keep.Events {
			h = h[len(h)-s.keep.Events:]
		}
		s.history[e.Lock] = h
	}
}

// unrecord takes back events that record added last (a change undone).
// An event that record dropped to make room for them does not come back.
// Callers hold s.mu.
func (s *Store) unrecord(events []lock.Event) {
	for _, e := range slices.Backward(events) {
		h := s.history[e.Lock]
		if n := len(h); n > 0 && h[n-1].ID == e.ID {
			h = h[:n-1]
		}
		if len(h) == 0 {
			delete(s.history, e.Lock)
		} else {
			s.history[e.Lock] = h
		}
	}
}

// kept returns every event still kept, in the order of their IDs, and
// forgets the ones too old to keep. Callers hold s.mu.
func (s *Store) kept() []lock.Event {
	now := s.now()
	var all []lock.Event
	for name, h := range s.history {
		i := 0
		for i < len(h) && !s.keep.Keeps(h[i].At, now) {
			i++
		}
		if i == len(h) {
			delete(s.history, name)
			continue
		}
		s.history[name] = h[i:]
		all = append(all, h[i:]...)
	}
	slices.SortFunc(all, func(a, b lock.Event) int { return cmp.Compare(a.ID, b.ID) })
	return all
}

// History returns up to limit of the events of the lock called name
// with IDs below before (0: any), newest first, once they are durable.
func (s *Store) History(_ context.Context, name string, before uint64, limit int) ([]lock.Event, error) {
	s.mu.Lock()
	h, now, seq := s.history[name], s.now(), s.seq
	var events []lock.Event
	for _, e := range slices.Backward(h) {
		if len(events) == limit || !s.keep.Keeps(e.At, now) {
			break
		}
		if before == 0 || e.ID < before {
			events = append(events, e)
		}
	}
	s.mu.Unlock()
	return events, s.durable(seq)
}
