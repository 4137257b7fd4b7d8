package lock

import (
	"encoding/json"
	"fmt"
	"time"
)

// Event is one change to a lock that matters to a person: a holder took
// it, gave it back, lost it when its lease ran out, or had it freed by
// someone else. Renewals are not events: a job that renews every minute
// would push everything else out of a lock's history.
type Event struct {
	// ID orders every event of a store: higher is later. The store hands
	// it out when the change commits.
	ID     uint64    `json:"id" yaml:"id"`
	Lock   string    `json:"lock" yaml:"lock"`
	At     time.Time `json:"at" yaml:"at"`
	Kind   Kind      `json:"event" yaml:"event"`
	Holder string    `json:"holder" yaml:"holder"`
	Key    string    `json:"key" yaml:"key"`
	Token  uint64    `json:"token,omitzero" yaml:"token,omitempty"`
	Counts int       `json:"counts" yaml:"counts"`                 // the counts taken or given back
	Note   string    `json:"note,omitempty" yaml:"note,omitempty"` // the holder's note, when it took the lock
	// Waited is how long a holder that took the lock waited in its queue;
	// Held, how long a holder that gave it back held it.
	Waited Duration `json:"waited,omitzero" yaml:"waited,omitempty"`
	Held   Duration `json:"held,omitzero" yaml:"held,omitempty"`
	// By says who freed a lock that was forced free: the request's user
	// and address.
	By string `json:"by,omitempty" yaml:"by,omitempty"`
	// Reason says why, for a lock forced free, when the request said.
	Reason string `json:"reason,omitempty" yaml:"reason,omitempty"`
	// Credential names the credential whose request made the change (for
	// a taking from the queue, the waiting request's); none for a lease
	// that ran out or a dead node's grant given back, and on a server
	// without credentials.
	Credential string `json:"credential,omitempty" yaml:"credential,omitempty"`
}

// Kind is what an event says happened.
type Kind string

// The kinds of event.
const (
	Taken    Kind = "taken"    // a holder took counts of the lock
	Released Kind = "released" // a holder gave counts back
	Expired  Kind = "expired"  // a holder's lease ran out
	Forced   Kind = "forced"   // someone freed the lock whoever held it
	Dropped  Kind = "dropped"  // a grant no request took up: its node was taken for dead
	Ended    Kind = "ended"    // the CI build the hold belonged to ended (Reason says how)
)

// Ending is why the holds a change ends are ended, when it is not their
// holders giving them back or their leases running out.
type Ending struct {
	Kind   Kind   // Released (the default), Forced or Dropped
	By     string // for Forced: who, as Event.By
	Reason string // for Forced: why, as Event.Reason
}

// Events returns the events of a change of the lock called name from old
// to next at now: a taking for each holder with more counts, and an
// ending for each with fewer. A hold whose lease ran out by now ends as
// Expired; others end as ending says. Waited is left for the caller, which
// knows the queue.
func Events(name string, old, next Lock, now time.Time, ending Ending) []Event {
	var events []Event
	// Both locks' holders are in name order: each is looked up in the
	// other by walking both once (a change that gives a lock to 2,000
	// waiters one at a time looked each up by a search, 0.5 s of it).
	afterOf := holderWalk(next.Holders)
	for _, h := range old.Holders {
		after := afterOf(h.Name)
		if after.Count >= h.Count && old.Key == next.Key {
			continue
		}
		e := Event{Lock: name, At: now, Kind: ending.Kind, Holder: h.Name, Key: old.Key, Token: old.Token,
			Counts: h.Count - after.Count, By: ending.By, Reason: ending.Reason}
		if old.Key != next.Key {
			e.Counts = h.Count // freed, then taken again with another key
		}
		if e.Kind == "" {
			e.Kind = Released
		}
		if !h.ExpiresAt.IsZero() && !h.ExpiresAt.After(now) {
			e.Kind, e.At, e.By, e.Reason = Expired, h.ExpiresAt, "", ""
		}
		if !h.Since.IsZero() && e.At.After(h.Since) {
			e.Held = Duration(e.At.Sub(h.Since))
		}
		events = append(events, e)
	}
	beforeOf := holderWalk(old.Holders)
	for _, h := range next.Holders {
		before := beforeOf(h.Name)
		if old.Key != next.Key {
			before = Holder{}
		}
		if h.Count <= before.Count {
			continue
		}
		events = append(events, Event{Lock: name, At: now, Kind: Taken, Holder: h.Name, Key: next.Key, Token: next.Token,
			Counts: h.Count - before.Count, Note: h.Note})
	}
	return events
}

// holderWalk returns a function that finds in holders, which are in name
// order, the holder of each name it is asked for (a zero Holder if none),
// when it is asked in name order: a walk through holders, once.
func holderWalk(holders []Holder) func(name string) Holder {
	i := 0
	return func(name string) Holder {
		for i < len(holders) && holders[i].Name < name {
			i++
		}
		if i < len(holders) && holders[i].Name == name {
			return holders[i]
		}
		return Holder{}
	}
}

// Duration is a time.Duration that JSON shows as Go writes it ("1m30s"),
// as the API takes "ttl" and "wait".
type Duration time.Duration

// MarshalJSON writes d as a string, to the millisecond.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).Round(time.Millisecond).String())
}

// UnmarshalYAML reads a string that time.ParseDuration reads: the state
// file's history, when yaml.v2 reads it.
func (d *Duration) UnmarshalYAML(unmarshal func(any) error) error {
	var s string
	if err := unmarshal(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// UnmarshalJSON reads a string that time.ParseDuration reads.
func (d *Duration) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"1m30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
