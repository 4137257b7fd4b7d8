// Package idempotency remembers the outcomes of requests by the key their
// clients sent, so that a request sent again (its reply was lost) is
// answered as the first time instead of being applied twice.
//
// It knows keys, fingerprints, times and opaque outcomes, nothing of what
// they mean. Memory is bounded: at most Max entries, each forgotten after
// Retention or when Max newer ones came, oldest first.
package idempotency

import "time"

// Retention is how long an outcome is remembered, at least, when fewer
// than Max newer ones came since.
const Retention = 24 * time.Hour

// Max is how many outcomes are remembered at most. An outcome takes a few
// hundred bytes: Max of them are tens of megabytes.
const Max = 50_000

// Entry is one remembered outcome.
type Entry struct {
	Scope       string    `json:"scope" yaml:"scope"`             // what the key is for: method, path and the client's key
	Fingerprint string    `json:"fingerprint" yaml:"fingerprint"` // of the request, to tell a repeat from a reuse
	At          time.Time `json:"at" yaml:"at"`                   // when the request was answered
	Outcome     string    `json:"outcome" yaml:"outcome"`         // what to answer again
}

// Set is the remembered outcomes, by scope, oldest first. It is not safe
// for concurrent use: its owner guards it.
type Set struct {
	byScope map[string]*Entry
	order   []*Entry // oldest first; forgotten ones are nil
	head    int      // order[head:] is live
}

// Get returns the outcome remembered for scope, if any is still kept at
// now.
func (s *Set) Get(scope string, now time.Time) (Entry, bool) {
	e, ok := s.byScope[scope]
	if !ok || now.Sub(e.At) > Retention {
		return Entry{}, false
	}
	return *e, true
}

// Put remembers e, in place of any outcome for the same scope, and forgets
// what is past Retention at e.At or beyond Max.
func (s *Set) Put(e Entry) {
	if s.byScope == nil {
		s.byScope = make(map[string]*Entry)
	}
	if old, ok := s.byScope[e.Scope]; ok {
		s.drop(old)
	}
	p := &e
	s.byScope[e.Scope] = p
	s.order = append(s.order, p)
	s.Prune(e.At)
}

// Delete forgets the outcome for scope, if it is e exactly (a change that
// was undone takes back what it remembered, and nothing newer).
func (s *Set) Delete(e Entry) {
	if cur, ok := s.byScope[e.Scope]; ok && cur.At.Equal(e.At) && cur.Fingerprint == e.Fingerprint {
		s.drop(cur)
	}
}

// Take forgets the outcome for scope and returns it.
func (s *Set) Take(scope string) (Entry, bool) {
	e, ok := s.byScope[scope]
	if !ok {
		return Entry{}, false
	}
	s.drop(e)
	return *e, true
}

// Prune forgets the outcomes past Retention at now, and the oldest beyond
// Max.
func (s *Set) Prune(now time.Time) {
	for s.head < len(s.order) {
		e := s.order[s.head]
		if e != nil && len(s.byScope) <= Max && now.Sub(e.At) <= Retention {
			break
		}
		if e != nil {
			delete(s.byScope, e.Scope)
		}
		s.order[s.head] = nil
		s.head++
	}
	// Reuse the slice's front once half of it is forgotten.
	if s.head > len(s.order)/2 && s.head > 1024 {
		s.order = append(s.order[:0], s.order[s.head:]...)
		s.head = 0
	}
}

// drop forgets e.
func (s *Set) drop(e *Entry) {
	delete(s.byScope, e.Scope)
	for i := s.head; i < len(s.order); i++ {
		if s.order[i] == e {
			s.order[i] = nil
			return
		}
	}
}

// Len returns how many outcomes are remembered.
func (s *Set) Len() int { return len(s.byScope) }

// All returns the remembered outcomes, oldest first, to be saved.
func (s *Set) All() []Entry {
	out := make([]Entry, 0, len(s.byScope))
	for _, e := range s.order[s.head:] {
		if e != nil {
			out = append(out, *e)
		}
	}
	return out
}
