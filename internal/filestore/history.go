package filestore

import (
	"cmp"
	"context"
	"slices"

	"github.com/locker-ci/locker/internal/lock"
)

// Each lock's history is a slice of its events, oldest first, kept apart
// from the lock (a free lock keeps its history). An event in a slice is
// never changed in place: slices are appended to, or cut from the front by
// reslicing, and one cut from the back (a change undone) loses its room,
// so that the next append copies it. A checkpoint's copy of the map shares
// the slices, and reads them without the mutex.

// record adds events, in the order of their IDs, to their locks'
// histories, keeping at most s.keep.Events a lock. Callers hold s.mu, or
// own s.
func (s *Store) record(events []lock.Event) {
	if s.keep.Events <= 0 {
		return
	}
	for _, e := range events {
		h := append(s.history[e.Lock], e)
		cut := max(len(h)-s.keep.Events, 0)
		for cut < len(h)-1 && !s.keep.Keeps(h[cut].At, e.At) {
			cut++ // too old: forgotten now that the lock changes again
		}
		if cut > 0 {
			s.forgotten = max(s.forgotten, h[cut-1].ID)
			h = h[cut:]
		}
		s.history[e.Lock] = h
	}
}

// intern makes the events read from the files share one copy of each
// lock name, holder, key and kind, with each other and with the locks
// read with them: a history repeats them, and a string read from a file
// is a copy of its own (an event costs about a third less memory).
func intern(events []lock.Event, locks map[string]lock.Lock) []lock.Event {
	seen := map[string]string{}
	one := func(s string) string {
		if t, ok := seen[s]; ok {
			return t
		}
		seen[s] = s
		return s
	}
	for name, l := range locks {
		one(name)
		one(l.Key)
		for _, h := range l.Holders {
			one(h.Name)
		}
	}
	for i := range events {
		e := &events[i]
		e.Lock, e.Holder, e.Key, e.By = one(e.Lock), one(e.Holder), one(e.Key), one(e.By)
		e.Kind = lock.Kind(one(string(e.Kind)))
	}
	return events
}

// load puts the events read from the files, in the order of their IDs,
// into their locks' histories, keeping what record would have kept. It
// moves them in place so that each lock's are together, and each history
// is a slice of events of its own length (record's next append copies
// it): a history of millions of events is held once, not twice.
func (s *Store) load(events []lock.Event) {
	if s.keep.Events <= 0 {
		return
	}
	groupByLock(events)
	for i := 0; i < len(events); {
		j := i + 1
		for j < len(events) && events[j].Lock == events[i].Lock {
			j++
		}
		h := events[i:j:j]
		cut, latest := max(len(h)-s.keep.Events, 0), h[len(h)-1].At
		for cut < len(h)-1 && !s.keep.Keeps(h[cut].At, latest) {
			cut++
		}
		if cut > 0 {
			s.forgotten = max(s.forgotten, h[cut-1].ID)
		}
		s.history[h[0].Lock] = h[cut:]
		i = j
	}
}

// groupByLock reorders events in place so that each lock's are together,
// the locks in the order of their first event, each lock's in the order
// they had.
func groupByLock(events []lock.Event) {
	type group struct{ next, end int }
	groups := map[string]*group{}
	var order []*group
	for _, e := range events {
		g := groups[e.Lock]
		if g == nil {
			g = &group{}
			groups[e.Lock] = g
			order = append(order, g)
		}
		g.end++ // for now, the count
	}
	at := 0
	for _, g := range order {
		g.next, at = at, at+g.end
		g.end = at
	}
	// Where each event goes; then each cycle of the permutation is walked
	// once, swapping events into place.
	to := make([]int, len(events))
	for i, e := range events {
		g := groups[e.Lock]
		to[i] = g.next
		g.next++
	}
	for i := range events {
		for to[i] != i {
			j := to[i]
			events[i], events[j] = events[j], events[i]
			to[i], to[j] = to[j], to[i]
		}
	}
}

// unrecord takes back events that record added last (a change undone).
// An event that record dropped to make room for them does not come back.
// Callers hold s.mu.
func (s *Store) unrecord(events []lock.Event) {
	for _, e := range slices.Backward(events) {
		h := s.history[e.Lock]
		if n := len(h); n > 0 && h[n-1].ID == e.ID {
			h = slices.Clip(h[:n-1])
		}
		if len(h) == 0 {
			delete(s.history, e.Lock)
		} else {
			s.history[e.Lock] = h
		}
	}
}

// kept returns the events of history (a copy of s.history) still kept,
// in the order of their IDs, without s.mu, and notes the highest ID of
// those too old.
func (s *Store) kept(history map[string][]lock.Event) []lock.Event {
	now := s.now()
	var all []lock.Event
	var old uint64
	for _, h := range history {
		for _, e := range h {
			if s.keep.Keeps(e.At, now) {
				all = append(all, e)
			} else {
				old = max(old, e.ID)
			}
		}
	}
	slices.SortFunc(all, func(a, b lock.Event) int { return cmp.Compare(a.ID, b.ID) })
	s.mu.Lock()
	s.forgotten = max(s.forgotten, old)
	s.mu.Unlock()
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

// unsent is the events of a change not yet known to be durable.
type unsent struct {
	seq    uint64
	events []lock.Event
}

// send hands the events of the changes up to seq, now durable, to
// onEvents, in order. The journal's committer calls it after each sync,
// and nothing else does: one call at a time, in the order of the seqs.
func (s *Store) send(seq uint64) {
	if s.onEvents == nil {
		return
	}
	s.mu.Lock()
	i := 0
	for i < len(s.unsent) && s.unsent[i].seq <= seq {
		i++
	}
	ready := s.unsent[:i]
	s.unsent = s.unsent[i:]
	if i > 0 {
		last := ready[i-1].events
		s.sent = last[len(last)-1].ID
	}
	s.mu.Unlock()
	for _, u := range ready {
		s.onEvents(u.events)
	}
}

// Backlog returns up to limit of the durable events kept with IDs above
// after, in the order of their IDs, and the highest ID of an event no
// longer kept: a client that saw events up to after and asks for the
// rest has missed some if it is above after.
func (s *Store) Backlog(_ context.Context, after uint64, limit int) ([]lock.Event, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now, forgotten := s.now(), s.forgotten
	var events []lock.Event
	for _, h := range s.history {
		if len(h) == 0 || h[len(h)-1].ID <= after {
			continue
		}
		i, _ := slices.BinarySearchFunc(h, after+1, func(e lock.Event, id uint64) int { return cmp.Compare(e.ID, id) })
		for _, e := range h[i:] {
			switch {
			case !s.keep.Keeps(e.At, now):
				forgotten = max(forgotten, e.ID)
			case e.ID <= s.sent:
				events = append(events, e)
			}
		}
	}
	slices.SortFunc(events, func(a, b lock.Event) int { return cmp.Compare(a.ID, b.ID) })
	return events[:min(len(events), limit)], forgotten, nil
}

// Recent returns the last n events kept of each lock in names, newest
// first, once they are durable.
func (s *Store) Recent(_ context.Context, names []string, n int) (map[string][]lock.Event, error) {
	s.mu.Lock()
	now, seq := s.now(), s.seq
	recent := make(map[string][]lock.Event, len(names))
	for _, name := range names {
		for _, e := range slices.Backward(s.history[name]) {
			if len(recent[name]) == n || !s.keep.Keeps(e.At, now) {
				break
			}
			recent[name] = append(recent[name], e)
		}
	}
	s.mu.Unlock()
	return recent, s.durable(seq)
}
