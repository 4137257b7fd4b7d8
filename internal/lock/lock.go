// Package lock defines a lock's shape, once, and its rules as functions
// over one lock's state, with no I/O and no mutex: every store runs the
// same rules, whether it keeps the table in memory under a mutex or in a
// database row under a row lock.
//
// The JSON tags are the journal's and the API's format, the YAML tags the
// state file's: every encoding of a lock derives from the types here.
package lock

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Lock is one named lock: the key its holders share and who they are. A
// free lock has no holders and is not kept. Lock values are never changed
// in place, only replaced, so copies of a table can share them; the rules
// below return new values.
type Lock struct {
	Key        string    `json:"key"`
	Token      uint64    `json:"token,omitzero"`       // fencing token: set each time the lock goes from free to held
	AcquiredAt time.Time `json:"acquired_at,omitzero"` // when it last went from free to held
	Limit      int       `json:"limit,omitzero"`       // the most holds it may have at once; 0 for no cap
	// Holders is sorted by name. A slice, not a map: most locks have one
	// holder, and a map costs 750 bytes for one entry.
	Holders []Holder `json:"holders"`
}

// Holder is one requestor's hold on a lock.
type Holder struct {
	Name string `json:"name"` // the requestor
	Hold
}

// Hold is what a holder has, without its name: the value of the API's
// and the state file's holders maps. The state file keeps Count apart, in
// locked_by, where the original locker kept it.
type Hold struct {
	Count     int       `json:"count" yaml:"-"`                                  // how many grants it has not yet given back
	Since     time.Time `json:"since,omitzero" yaml:"since,omitempty"`           // when it took its first count
	ExpiresAt time.Time `json:"expires_at,omitzero" yaml:"expires_at,omitempty"` // when its lease runs out; zero when it has none
	Note      string    `json:"note,omitempty" yaml:"note,omitempty"`            // what the requestor said about itself, e.g. a build URL
	Build     *Build    `json:"build,omitempty" yaml:"build,omitempty"`          // the CI build the hold belongs to, if it said
}

// Waiting is one request in a lock's queue, as the API shows it.
type Waiting struct {
	// ID names the waiter (unique across locks; one waiter for a set or
	// a claim is in each of its locks' queues): DELETE /waiters/<id>.
	ID        int64     `json:"id"`
	Key       string    `json:"key"`
	Requestor string    `json:"requestor"`
	Since     time.Time `json:"since"`
	Priority  int       `json:"priority,omitzero"` // served before those of lower priority
}

// View is a lock and its queue as the API shows them. Key and LockedBy
// keep the shape the original locker's clients read with jq.
type View struct {
	Name       string          `json:"name"`
	Key        string          `json:"key"`
	LockedBy   map[string]int  `json:"locked_by"`
	Token      uint64          `json:"token"`
	Limit      int             `json:"limit,omitzero"`
	AcquiredAt time.Time       `json:"acquired_at,omitzero"`
	Holders    map[string]Hold `json:"holders"`
	Waiting    []Waiting       `json:"waiting"`
}

// Entry is a lock in the state file. Key and LockedBy have the shape the
// original locker wrote as JSON, so that its files load unchanged; the
// other fields are this server's own.
type Entry struct {
	Key        string          `yaml:"key" json:"key"`
	LockedBy   map[string]int  `yaml:"locked_by" json:"locked_by"`
	Token      uint64          `yaml:"token,omitempty" json:"-"`
	AcquiredAt time.Time       `yaml:"acquired_at,omitempty" json:"-"`
	Limit      int             `yaml:"limit,omitempty" json:"-"`
	Holders    map[string]Hold `yaml:"holders,omitempty" json:"-"`
}

// FirstLease returns when the first lease on l runs out; zero when no
// holder has one.
func (l Lock) FirstLease() time.Time {
	var first time.Time
	for _, h := range l.Holders {
		if !h.ExpiresAt.IsZero() && (first.IsZero() || h.ExpiresAt.Before(first)) {
			first = h.ExpiresAt
		}
	}
	return first
}

// Free reports whether no one holds l.
func (l Lock) Free() bool { return len(l.Holders) == 0 }

// Clone returns a copy of l that shares no slice with it.
func (l Lock) Clone() Lock {
	l.Holders = slices.Clone(l.Holders)
	return l
}

// Only returns l with the hold of the holder called name alone: what a
// queue keeps of a grant until its request takes it up. (The whole lock
// each time would make n same-key waiters granted together cost n copies
// of a lock of up to n holders.)
func (l Lock) Only(name string) Lock {
	h, _ := l.Holder(name)
	l.Holders = []Holder{h}
	return l
}

// Holder returns the holder called name.
func (l Lock) Holder(name string) (Holder, bool) {
	i, ok := slices.BinarySearchFunc(l.Holders, name, byName)
	if !ok {
		return Holder{}, false
	}
	return l.Holders[i], true
}

// SetHolder puts h in l, in place of the holder of the same name. Callers
// own l's slice (a Clone).
func (l *Lock) SetHolder(h Holder) {
	if i, ok := slices.BinarySearchFunc(l.Holders, h.Name, byName); ok {
		l.Holders[i] = h
	} else {
		l.Holders = slices.Insert(l.Holders, i, h)
	}
}

// RemoveHolder takes the holder called name out of l. Callers own l's
// slice (a Clone).
func (l *Lock) RemoveHolder(name string) {
	if i, ok := slices.BinarySearchFunc(l.Holders, name, byName); ok {
		l.Holders = slices.Delete(l.Holders, i, i+1)
	}
}

func byName(h Holder, name string) int { return strings.Compare(h.Name, name) }

// LockedBy returns each holder's count, the shape the original API had.
func (l Lock) LockedBy() map[string]int {
	m := make(map[string]int, len(l.Holders))
	for _, h := range l.Holders {
		m[h.Name] = h.Count
	}
	return m
}

// HoldersString lists l's holders for messages: "node-a (2), node-b (1)".
func (l Lock) HoldersString() string {
	parts := make([]string, len(l.Holders))
	for i, h := range l.Holders {
		parts[i] = fmt.Sprintf("%s (%d)", h.Name, h.Count)
	}
	return strings.Join(parts, ", ")
}

// View returns l, called name, with its queue as the API shows it.
func (l Lock) View(name string, queue []Waiting) View {
	v := View{
		Name:       name,
		Key:        l.Key,
		LockedBy:   l.LockedBy(),
		Token:      l.Token,
		Limit:      l.Limit,
		AcquiredAt: l.AcquiredAt,
		Holders:    make(map[string]Hold, len(l.Holders)),
		Waiting:    queue,
	}
	for _, h := range l.Holders {
		v.Holders[h.Name] = h.Hold
	}
	if v.Waiting == nil {
		v.Waiting = []Waiting{}
	}
	return v
}

// Entry returns l as the state file keeps it.
func (l Lock) Entry() Entry {
	e := Entry{Key: l.Key, LockedBy: l.LockedBy(), Token: l.Token, AcquiredAt: l.AcquiredAt, Limit: l.Limit}
	for _, h := range l.Holders {
		if d := h.Hold; d != (Hold{Count: d.Count}) {
			if e.Holders == nil {
				e.Holders = map[string]Hold{}
			}
			d.Count = 0
			e.Holders[h.Name] = d
		}
	}
	return e
}
