package filestore

import (
	"cmp"
	"context"
	"slices"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
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
		s.byID.add(e)
		cut := max(len(h)-s.keep.Events, 0)
		for cut < len(h)-1 && !s.keep.Keeps(h[cut].At, e.At) {
			cut++ // too old: forgotten now that the lock changes again
		}
		if cut > 0 {
			s.forgotten = max(s.forgotten, h[cut-1].ID)
			h = h[cut:]
			s.byID.dropped(cut, s.history)
		}
		s.history[e.Lock] = h
	}
}

// eventIndex is every kept event's ID and lock, in the order of the IDs,
// so that a stream resuming after an ID finds the events after it
// without looking at the others (Backlog): a table keeps hundreds of
// thousands. It may also hold events since dropped from their history
// (the oldest of a lock with many); those are skipped, and taken out
// once they are as many as the kept ones.
type eventIndex struct {
	refs  []eventRef
	stale int // how many of refs were dropped from their history
}

// eventRef is an event of a lock's history, by ID.
type eventRef struct {
	id   uint64
	lock string
}

// add adds e, whose ID is above every one before it.
func (x *eventIndex) add(e lock.Event) { x.refs = append(x.refs, eventRef{e.ID, e.Lock}) }

// dropped notes that n events were dropped from their history, and
// takes the dropped ones out when they are half of the index.
func (x *eventIndex) dropped(n int, history map[string][]lock.Event) {
	x.stale += n
	if x.stale < 1024 || 2*x.stale < len(x.refs) {
		return
	}
	kept := x.refs[:0]
	for _, r := range x.refs {
		if _, ok := kept1(history, r); ok {
			kept = append(kept, r)
		}
	}
	clear(x.refs[len(kept):]) // let the dropped locks' names go
	x.refs, x.stale = kept, 0
}

// unadd takes back e, the last event added.
func (x *eventIndex) unadd(e lock.Event) {
	if n := len(x.refs); n > 0 && x.refs[n-1].id == e.ID {
		x.refs = x.refs[:n-1]
	}
}

// after returns the index of the first event with an ID above id.
func (x *eventIndex) after(id uint64) int {
	i, _ := slices.BinarySearchFunc(x.refs, id+1, func(r eventRef, id uint64) int { return cmp.Compare(r.id, id) })
	return i
}

// kept1 returns the event r refers to, if its lock's history still
// holds it: a history is a run of its lock's events, cut from the front
// (dropped) and the back (undone).
func kept1(history map[string][]lock.Event, r eventRef) (lock.Event, bool) {
	h := history[r.lock]
	if len(h) == 0 || r.id < h[0].ID || r.id > h[len(h)-1].ID {
		return lock.Event{}, false
	}
	i, found := slices.BinarySearchFunc(h, r.id, func(e lock.Event, id uint64) int { return cmp.Compare(e.ID, id) })
	if !found {
		return lock.Event{}, false
	}
	return h[i], true
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
	if !slices.IsSortedFunc(events, func(a, b lock.Event) int { return cmp.Compare(a.ID, b.ID) }) {
		slices.SortStableFunc(events, func(a, b lock.Event) int { return cmp.Compare(a.ID, b.ID) })
	}
	s.byID.refs = make([]eventRef, len(events))
	for i, e := range events {
		s.byID.refs[i] = eventRef{e.ID, e.Lock}
	}
	groupByLock(events)
	cut := 0
	defer func() { s.byID.dropped(cut, s.history) }()
	for i := 0; i < len(events); {
		j := i + 1
		for j < len(events) && events[j].Lock == events[i].Lock {
			j++
		}
		h := events[i:j:j]
		drop, latest := max(len(h)-s.keep.Events, 0), h[len(h)-1].At
		for drop < len(h)-1 && !s.keep.Keeps(h[drop].At, latest) {
			drop++
		}
		if drop > 0 {
			s.forgotten = max(s.forgotten, h[drop-1].ID)
			cut += drop
		}
		s.history[h[0].Lock] = h[drop:]
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
		s.byID.unadd(e)
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
// (every lock, for "") with IDs below before (0: any), newest first, once
// they are durable.
func (s *Store) History(_ context.Context, name string, before uint64, limit int) ([]lock.Event, error) {
	s.mu.Lock()
	if name == "" {
		events, seq := s.everyLocks(before, limit)
		s.mu.Unlock()
		return events, s.durable(seq)
	}
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

// everyLocks returns up to limit of the events of every lock with IDs
// below before (0: any), newest first, by the index of their IDs, and
// the change they reach. Callers hold s.mu.
func (s *Store) everyLocks(before uint64, limit int) ([]lock.Event, uint64) {
	now, refs := s.now(), s.byID.refs
	end := len(refs)
	if before > 0 {
		end = s.byID.after(before - 1)
	}
	var events []lock.Event
	for i := end - 1; i >= 0 && len(events) < limit; i-- {
		if e, ok := kept1(s.history, refs[i]); ok && s.keep.Keeps(e.At, now) {
			events = append(events, e)
		}
	}
	return events, s.seq
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

// Backlog returns a page of up to limit of the durable events kept
// after from, in the order of their IDs, and the highest ID of an event
// no longer kept: a client that saw events up to from.After and asks for
// the rest has missed some if it is above that. Events are durable in
// the order of their IDs here, so from.Running is not needed. It looks at
// the events after from.After, by ID, until it has limit of them: the
// store's mutex is held for as long as a page takes, whatever the
// history holds.
func (s *Store) Backlog(ctx context.Context, from txn.Mark, limit int) (txn.Backlog, error) {
	if err := ctx.Err(); err != nil {
		return txn.Backlog{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	page := txn.Backlog{Events: make([]lock.Event, 0, min(limit, 1024)), Next: from, Forgotten: s.forgotten}
	for _, r := range s.byID.refs[s.byID.after(from.After):] {
		if r.id > s.sent {
			break // the rest are not durable yet: a follower hears of them
		}
		if len(page.Events) == limit {
			page.More = true
			break
		}
		page.Next.After = r.id
		e, ok := kept1(s.history, r)
		switch {
		case !ok: // dropped since: s.forgotten counts it
		case !s.keep.Keeps(e.At, now):
			page.Forgotten = max(page.Forgotten, e.ID)
		default:
			page.Events = append(page.Events, e)
		}
	}
	return page, nil
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
