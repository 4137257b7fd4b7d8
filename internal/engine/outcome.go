package engine

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Outcomes remembered by Idempotency-Key: what a request that changed
// something is answered again, kept with its change.

// outcome is what a request with an Idempotency-Key is answered again.
type outcome struct {
	Lock     Snapshot   `json:"lock"`          // the lock as the first answer showed it
	Old      *lock.Lock `json:"old,omitempty"` // force release: what it freed
	Released int        `json:"released"`      // release: how many counts it gave back
	// Set is each lock of a request for several, as the first answer
	// showed it, and each one's counts given back; Lock and Released
	// then say nothing.
	Set map[string]setOutcome `json:"set,omitempty"`
}

// setOutcome is one lock of a request for several.
type setOutcome struct {
	Lock     Snapshot   `json:"lock"`
	Old      *lock.Lock `json:"old,omitempty"`
	Released int        `json:"released,omitempty"`
}

// outcomeOf is the outcome of a request over the locks in got, with the
// counts released of each and what a force release freed (nil: none). A
// request over one lock keeps the shape outcomes had before sets; a
// claim's is always a set (which members it got is part of its answer).
func outcomeOf(got map[string]Snapshot, released map[string]int, old map[string]lock.Lock, claim bool) outcome {
	o := outcome{Set: make(map[string]setOutcome, len(got))}
	for name, s := range got {
		so := setOutcome{Lock: s, Released: released[name]}
		if l, ok := old[name]; ok {
			so.Old = &l
		}
		if len(got) == 1 && !claim {
			return outcome{Lock: so.Lock, Old: so.Old, Released: so.Released}
		}
		o.Set[name] = so
	}
	return o
}

// olds returns what o, a force release of names, freed, by lock.
func (o *outcome) olds(names []string) map[string]lock.Lock {
	old := map[string]lock.Lock{}
	for _, name := range names {
		l := o.Old
		if o.Set != nil {
			l = o.Set[name].Old
		}
		if l != nil {
			old[name] = *l
		}
	}
	return old
}

// locks returns the locks of o, a request over names (a claim's: the
// pool's members, of which it got some), as first answered.
func (o *outcome) locks(names []string) map[string]Snapshot {
	got := make(map[string]Snapshot, len(names))
	if o.Set == nil {
		s := o.Lock
		s.Replayed = true
		got[names[0]] = s
		return got
	}
	for name, so := range o.Set {
		so.Lock.Replayed = true
		got[name] = so.Lock
	}
	return got
}

// released returns the counts o gave back of each lock in names.
func (o *outcome) released(names []string) map[string]int {
	n := make(map[string]int, len(names))
	for _, name := range names {
		n[name] = o.Released
		if o.Set != nil {
			n[name] = o.Set[name].Released
		}
	}
	return n
}

// sum adds up the counts in n.
func sum(n map[string]int) int {
	total := 0
	for _, c := range n {
		total += c
	}
	return total
}

// scope returns idem's scope, or "" for a request without a key.
func (i *IdempotencyKey) scopeOrNone() string {
	if i == nil {
		return ""
	}
	return i.Scope
}

// recall returns the outcome remembered for idem's key, or nil; a key
// seen with another request is ErrKeyReused. Only requests that changed
// something are remembered.
func recall(tx txn.Tx, idem *IdempotencyKey) (*outcome, error) {
	if idem == nil {
		return nil, nil
	}
	e, ok := tx.Recall(idem.Scope)
	if !ok {
		return nil, nil
	}
	if e.Fingerprint != idem.Fingerprint {
		return nil, fmt.Errorf("%w: it came at %s with another request; send a new key with a new request",
			ErrKeyReused, e.At.Format(time.RFC3339))
	}
	var o outcome
	if err := json.Unmarshal([]byte(e.Outcome), &o); err != nil {
		return nil, fmt.Errorf("reading a remembered outcome: %w", err)
	}
	o.Lock.Replayed = true
	return &o, nil
}

// remember keeps o as the answer to idem's key, with the change. A nil
// idem does nothing.
func remember(tx txn.Tx, idem *IdempotencyKey, o outcome) error {
	if idem == nil {
		return nil
	}
	data, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("encoding an outcome to remember: %w", err)
	}
	tx.Remember(idempotency.Entry{Scope: idem.Scope, Fingerprint: idem.Fingerprint, At: tx.Now(), Outcome: string(data)})
	return nil
}
