package client

import (
	"encoding/json"
	"fmt"
	"time"
)

// Lock is a lock as the server shows it: who holds it, with which key,
// and who waits for it. Key and LockedBy have the shape the original
// locker's clients read.
type Lock struct {
	Name string `json:"name"` // the lock's name, as in its path: /lock/<name>
	// Key is the key its holders share; "" when it is free.
	Key string `json:"key"`
	// LockedBy is each holder's count: how many times it took the lock
	// and has not given it back.
	LockedBy map[string]int `json:"locked_by"`
	// Token is the fencing token of the current holding: it grows each
	// time the lock changes hands, so that whatever the holder guards can
	// refuse a holder whose time has passed.
	Token uint64 `json:"token"`
	// Limit is the most holds it may have at once (each count is one); 0 for no cap.
	Limit int `json:"limit,omitzero"`
	// AcquiredAt is when the current holding began.
	AcquiredAt time.Time `json:"acquired_at,omitzero"`
	// Holders is what each holder has, by requestor.
	Holders map[string]Hold `json:"holders"`
	// Waiting is the queue, first in line first.
	Waiting []Waiter `json:"waiting"`
}

// Build is a CI build: the one a request runs in, and that a hold
// belongs to.
type Build struct {
	ID       int64  `json:"id"` // the CI system's ID (Concourse: BUILD_ID)
	Name     string `json:"name,omitempty"`
	Job      string `json:"job,omitempty"`
	Pipeline string `json:"pipeline,omitempty"`
	Team     string `json:"team,omitempty"`
	URL      string `json:"url,omitempty"`
	// EndWith are the outcomes that end the hold (shown by the server;
	// a request says them in Request.EndWithBuild).
	EndWith []string `json:"end_with,omitempty"`
}

// Hold is what one holder of a lock has.
type Hold struct {
	Count int `json:"count"` // as in LockedBy
	// Since is when it took its first count.
	Since time.Time `json:"since,omitzero"`
	// ExpiresAt is when its lease runs out; zero when it has none.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Note is what the holder said about itself, e.g. a build's URL.
	Note string `json:"note,omitempty"`
	// Build is the CI build the hold belongs to, when its request said.
	Build *Build `json:"build,omitempty"`
}

// Waiter is a request in a lock's queue.
type Waiter struct {
	ID        int64     `json:"id"`        // names it to RemoveWaiter; unique across locks
	Key       string    `json:"key"`       // the key it asks for
	Requestor string    `json:"requestor"` // who asks
	Since     time.Time `json:"since"`     // when it joined the queue
	Priority  int       `json:"priority"`  // served before those of lower priority
}

// Reply is the server's answer about one lock: the lock as it is after
// the request and, for a change, what happened.
type Reply struct {
	Lock
	// Released is how many counts an unlock gave back; nil from a server
	// that does not say (the original locker).
	Released *int `json:"released,omitempty"`
	// Response is the server's sentence about the change, e.g. "prod is
	// now locked by deploy-job with key deploy-v1.4".
	Response string `json:"response,omitempty"`
	// Raw is the JSON as the server sent it.
	Raw []byte `json:"-"`
}

// PoolInfo is a pool as the server shows it: each member's lock, the
// free members, and the claims waiting.
type PoolInfo struct {
	Name    string          `json:"name"`    // the pool's name
	Members map[string]Lock `json:"members"` // each member's lock, by name
	Free    []string        `json:"free"`    // the members no one holds, in name order
	Waiting []PoolWaiter    `json:"waiting"` // the claims waiting, first in line first
	// Raw is the JSON as the server sent it.
	Raw []byte `json:"-"`
}

// PoolWaiter is a claim waiting for a pool's members.
type PoolWaiter struct {
	Waiter
	Count int `json:"count"` // how many members it claims
}

// Event is one change to a lock that matters to a person: a holder took
// it or gave it back, a lease ran out, or someone forced it free.
// Renewals are not events.
type Event struct {
	// ID orders the events of a server (or of the nodes sharing one
	// database): higher is later.
	ID   uint64
	Lock string // the lock's name
	At   time.Time
	Kind EventKind
	// Holder and Key are who took or held the lock, and with which key;
	// Token, the holding's fencing token.
	Holder string
	Key    string
	Token  uint64
	Counts int    // how many counts were taken or given back
	Note   string // the holder's note, when it took the lock
	// Waited is how long a holder that took the lock waited in its
	// queue; Held, how long a holder that gave it back had held it.
	Waited time.Duration
	Held   time.Duration
	// By says who forced the lock free: the user and address of the
	// request.
	By string
	// Reason says why, for a lock forced free, when its request said.
	Reason string
	// Credential names the credential whose request made the change
	// (none for a lease that ran out, and on a server without
	// credentials).
	Credential string
	// Raw is the event's JSON as the server sent it.
	Raw []byte
}

// EventKind is what an event says happened. A later server may send
// kinds not listed here: treat an unknown kind as a change to the lock.
type EventKind string

// The kinds of event.
const (
	Taken    EventKind = "taken"    // a holder took counts of the lock
	Released EventKind = "released" // a holder gave counts back
	Expired  EventKind = "expired"  // a holder's lease ran out
	Forced   EventKind = "forced"   // someone freed the lock, whoever held it
	Dropped  EventKind = "dropped"  // a node taken for dead had granted it, and no request took the grant up
)

// UnmarshalJSON reads an event as the server sends it, and keeps the
// JSON in Raw.
func (e *Event) UnmarshalJSON(data []byte) error {
	var wire struct {
		ID     uint64    `json:"id"`
		Lock   string    `json:"lock"`
		At     time.Time `json:"at"`
		Kind   EventKind `json:"event"`
		Holder string    `json:"holder"`
		Key    string    `json:"key"`
		Token  uint64    `json:"token"`
		Counts int       `json:"counts"`
		Note   string    `json:"note"`
		Waited string    `json:"waited"`
		Held   string    `json:"held"`
		By     string    `json:"by"`
		Reason string    `json:"reason"`
		Cred   string    `json:"credential"`
	}
	if err := json.Unmarshal(data, &wire); err != nil {
		return err
	}
	waited, err := parseDuration("waited", wire.Waited)
	if err != nil {
		return err
	}
	held, err := parseDuration("held", wire.Held)
	if err != nil {
		return err
	}
	*e = Event{ID: wire.ID, Lock: wire.Lock, At: wire.At, Kind: wire.Kind, Holder: wire.Holder, Key: wire.Key,
		Token: wire.Token, Counts: wire.Counts, Note: wire.Note, Waited: waited, Held: held, By: wire.By, Reason: wire.Reason, Credential: wire.Cred,
		Raw: append([]byte(nil), data...)}
	return nil
}

// parseDuration reads the duration the server wrote as Go does ("1m30s"),
// or none.
func parseDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("an event's %s is not a duration: %w", field, err)
	}
	return d, nil
}

// fields are the fields of a Request besides the key and the requestor
// that a kind of change sends: one Request serves to take a lock, renew
// it and give it back, though each takes only some of them.
type fields uint8

const (
	sendTTL fields = 1 << iota
	sendNote
	sendLimit
	sendAll
	sendSupersede
	sendPriority
	sendBuild

	takeFields  = sendTTL | sendNote | sendLimit | sendSupersede | sendPriority | sendBuild
	claimFields = sendTTL | sendNote | sendSupersede | sendPriority | sendBuild
)

// body returns the JSON body of a change that sends r's key, requestor
// and, of send, the fields that are set.
func (r Request) body(send fields) map[string]any {
	body := map[string]any{"key": r.Key}
	if r.Requestor != "" {
		body["lock_by"] = r.Requestor
	}
	if send&sendTTL != 0 && r.TTL != "" {
		body["ttl"] = r.TTL
	}
	if send&sendNote != 0 && r.Note != "" {
		body["note"] = r.Note
	}
	if send&sendLimit != 0 && r.Limit > 0 {
		body["limit"] = r.Limit
	}
	if send&sendAll != 0 && r.All {
		body["all"] = true
	}
	if send&sendSupersede != 0 && r.Supersede {
		body["supersede"] = true
	}
	if send&sendPriority != 0 && r.Priority != 0 {
		body["priority"] = r.Priority
	}
	if send&sendBuild != 0 && r.Build != nil {
		body["build"] = r.Build
		if len(r.EndWithBuild) > 0 {
			body["end_with_build"] = r.EndWithBuild
		}
	}
	return body
}
