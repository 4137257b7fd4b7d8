// Package statefile reads and writes the state file: the YAML document
// that holds the lock table at rest, and the original locker's JSON, which
// it reads as it is.
package statefile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v2"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
)

// Version is the version of the format this package writes.
const Version = 1

// header opens every state file this package writes.
const header = `# Locker's lock table. While the locker server runs, newer changes are in
# the .journal file beside this one. To edit by hand: stop the server, edit,
# and delete the sha256 line at the end (locker refuses a changed file that
# still has it).
`

// State is what a state file holds.
type State struct {
	Seq       uint64 // the last journal record the file holds
	LastToken uint64 // the highest fencing token ever handed out
	Locks     map[string]lock.Lock
	Pools     map[string]lock.Pool
	// LastEvent is the highest event ID handed out; History the events
	// kept, oldest first, of locks held or free.
	LastEvent uint64
	History   []lock.Event
	// Requests are the outcomes remembered by Idempotency-Key, oldest
	// first.
	Requests []idempotency.Entry
	// Credentials are the credentials made over the API, by name: their
	// secrets' hashes, never a secret.
	Credentials map[string]access.Credential
	// Original says the file is in the original locker's JSON format
	// (Decode sets it; Encode writes this package's YAML regardless).
	Original bool
	// Sealed says the file ends in a checksum of its content that
	// matches: Locker wrote it as it is, and keeps a journal beside it
	// (Decode sets it; Encode always seals).
	Sealed bool
}

// document is the YAML document, as yaml.v2 reads and writes it.
type document struct {
	Version     int                   `yaml:"version"`
	Seq         uint64                `yaml:"seq"`
	LastToken   uint64                `yaml:"last_token"`
	Locks       map[string]lock.Entry `yaml:"locks"`
	LastEvent   uint64                `yaml:"last_event,omitempty"`
	Pools       map[string]lock.Pool  `yaml:"pools,omitempty"`
	Credentials []access.Credential   `yaml:"credentials,omitempty"`
	History     []lock.Event          `yaml:"history,omitempty"`
	Requests    []idempotency.Entry   `yaml:"requests,omitempty"`
	// fast are the locks as the fast parser reads them, in name order,
	// instead of Locks.
	fast []fastLock
}

// Decode parses a state file: this server's YAML, or the original locker's
// JSON. Released entries (no holder left) are dropped; anything that does
// not describe a valid lock table is an error.
func Decode(data []byte) (State, error) {
	st := State{Locks: map[string]lock.Lock{}}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return st, nil
	}
	var entries map[string]lock.Entry
	if trimmed[0] == '{' {
		// The original locker wrote JSON, a map of lock.Entry.
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&entries); err != nil {
			return State{}, fmt.Errorf("not valid JSON in the original locker's format: %w", err)
		}
		if dec.More() {
			return State{}, errors.New("not valid JSON in the original locker's format: data after the closing brace")
		}
		st.Original = true
	} else {
		var err error
		if data, st.Sealed, err = unseal(data); err != nil {
			return State{}, err
		}
		doc, ok := parse(data)
		if !ok {
			// yaml.v2 reads into the document as the fast parser left it,
			// the locks it read among the file's (a lock read twice is
			// refused: a truncated file ends so).
			doc.Locks = make(map[string]lock.Entry, len(doc.fast))
			for _, f := range doc.fast {
				doc.Locks[f.name] = f.lock.Entry()
			}
			doc.fast = nil
			// Not exactly as Encode writes it (edited by hand, say):
			// yaml.v2 reads it, or says what is wrong with it.
			if err := yaml.UnmarshalStrict(data, &doc); err != nil {
				return State{}, fmt.Errorf("not a valid Locker state file: %s", goTypes(err.Error()))
			}
		}
		if doc.Version != Version {
			return State{}, fmt.Errorf("\"version: %d\" is not a format this locker reads (it reads version %d)", doc.Version, Version)
		}
		entries, st.LastToken, st.Seq, st.Requests = doc.Locks, doc.LastToken, doc.Seq, doc.Requests
		if doc.fast != nil {
			st.Locks = make(map[string]lock.Lock, len(doc.fast))
		}
		for _, f := range doc.fast {
			if f.lock.Token > st.LastToken {
				return State{}, fmt.Errorf("lock %q has token %d, above last_token %d: tokens would be handed out twice", f.name, f.lock.Token, st.LastToken)
			}
			st.Locks[f.name] = f.lock
		}
		for name, p := range doc.Pools {
			if err := checkPool(name, p); err != nil {
				return State{}, err
			}
		}
		st.Pools = doc.Pools
		if st.Credentials, err = checkCredentials(doc.Credentials); err != nil {
			return State{}, err
		}
		if err := checkHistory(doc.History, doc.LastEvent); err != nil {
			return State{}, err
		}
		st.History, st.LastEvent = doc.History, doc.LastEvent
	}

	if len(entries) > 0 {
		st.Locks = make(map[string]lock.Lock, len(entries)) // a restart with 100,000 locks spent a fifth of its time growing maps
	}
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if name == "" {
			return State{}, errors.New("a lock has an empty name")
		}
		l, err := fromEntry(entries[name])
		if err != nil {
			return State{}, fmt.Errorf("lock %q: %w", name, err)
		}
		if l.Free() {
			continue
		}
		if l.Token > st.LastToken {
			return State{}, fmt.Errorf("lock %q has token %d, above last_token %d: tokens would be handed out twice", name, l.Token, st.LastToken)
		}
		st.Locks[name] = l
	}
	return st, nil
}

// goTypes turns yaml.v2's errors, which name Go types, into the words of
// a reader of the file.
func goTypes(msg string) string {
	msg = unknownField.ReplaceAllString(msg, "$1 is not a field of $2")
	return strings.NewReplacer(
		"of statefile.document", "of the top level, which holds version, seq, last_token, last_event, locks, pools, credentials, history and requests",
		"into statefile.document", "into the top level, which holds version, seq, last_token, last_event, locks, pools, credentials, history and requests",
		"of access.Credential", "of a credential, which holds name, hash, grants, created_by, created_at and expires_at",
		"access.Credential", "a credential",
		"of access.Grant", "of a grant, which holds role and prefix",
		"statefile.document", "the top level",
		"of lock.Entry", "of a lock, which holds key, locked_by, token, acquired_at, limit and holders",
		"lock.Entry", "a lock",
		"of lock.Hold", "of a holder, which holds since, expires_at and note",
		"lock.Hold", "a holder",
		"of lock.Pool", "of a pool, which holds members and claimed",
		"lock.Pool", "a pool",
	).Replace(msg)
}

// unknownField matches yaml.v2's error for a field the type lacks.
var unknownField = regexp.MustCompile(`field (\S+) not found in type (\S+)`)

// fromEntry checks e and returns it as a Lock, without holders at zero.
func fromEntry(e lock.Entry) (lock.Lock, error) {
	if e.Limit < 0 {
		return lock.Lock{}, fmt.Errorf("limit is %d; a limit is a number of holders, at least 1 (or none)", e.Limit)
	}
	l := lock.Lock{Key: e.Key, Token: e.Token, AcquiredAt: e.AcquiredAt, Limit: e.Limit}
	for _, r := range slices.Sorted(maps.Keys(e.LockedBy)) {
		n := e.LockedBy[r]
		switch {
		case n < 0:
			return lock.Lock{}, fmt.Errorf("holder %q has a negative count (%d)", r, n)
		case n == 0:
			continue // released; the original left these behind
		case r == "":
			return lock.Lock{}, errors.New("a holder has an empty name")
		}
		h := e.Holders[r]
		h.Count = n
		l.Holders = append(l.Holders, lock.Holder{Name: r, Hold: h}) // sorted: r comes sorted
	}
	for _, r := range slices.Sorted(maps.Keys(e.Holders)) {
		if _, ok := l.Holder(r); !ok {
			return lock.Lock{}, fmt.Errorf("holders lists %q, which has no count in locked_by", r)
		}
	}
	if l.Free() {
		return lock.Lock{}, nil
	}
	if l.Key == "" {
		return lock.Lock{}, fmt.Errorf("held by %s but has no key", l.HoldersString())
	}
	return l, nil
}

// checkHistory checks the events read from the file: in the order of
// their IDs, none above last.
func checkHistory(events []lock.Event, last uint64) error {
	var prev uint64
	for _, e := range events {
		switch {
		case e.Lock == "":
			return fmt.Errorf("history: event %d names no lock", e.ID)
		case e.ID <= prev:
			return fmt.Errorf("history: event %d comes after event %d; events are in the order of their ids", e.ID, prev)
		case e.ID > last:
			return fmt.Errorf("history: event %d is above last_event %d: ids would be handed out twice", e.ID, last)
		}
		prev = e.ID
	}
	return nil
}

// checkPool checks a pool read from the file.
func checkPool(name string, p lock.Pool) error {
	if name == "" {
		return errors.New("a pool has an empty name")
	}
	if len(p.Members) == 0 {
		return fmt.Errorf("pool %q has no members", name)
	}
	if !slices.IsSorted(p.Members) || len(slices.Compact(slices.Clone(p.Members))) != len(p.Members) {
		return fmt.Errorf("pool %q: its members must be sorted, each once", name)
	}
	return nil
}

// checkCredentials checks the credentials read from the file, and
// returns them by name.
func checkCredentials(list []access.Credential) (map[string]access.Credential, error) {
	if len(list) == 0 {
		return nil, nil
	}
	byName := make(map[string]access.Credential, len(list))
	for _, c := range list {
		for _, err := range []error{access.CheckName(c.Name), access.CheckGrants(c.Grants), access.CheckHash(c.Hash)} {
			if err != nil {
				return nil, fmt.Errorf("credential %q: %w", c.Name, err)
			}
		}
		if _, dup := byName[c.Name]; dup {
			return nil, fmt.Errorf("credential %q is given twice", c.Name)
		}
		byName[c.Name] = c
	}
	return byName, nil
}
