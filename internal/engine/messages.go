package engine

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/txn"
)

// What the engine's messages say of the locks' state: why a request
// cannot have them now.

// refusals says why a request with key cannot have the locks in got: the
// reason for each one it cannot have.
func refusals(got map[string]Snapshot, key string) string {
	var why []string
	for _, name := range slices.Sorted(maps.Keys(got)) {
		if s := got[name]; !s.Free() && (s.Key != key || s.Full()) || len(s.Waiting) > 0 {
			why = append(why, refusal(name, s, key))
		}
	}
	return strings.Join(why, "; ")
}

// refusal says why a request with key cannot have the lock called name,
// whose state is s.
func refusal(name string, s Snapshot, key string) string {
	if !s.Free() && s.Key == key && s.Full() {
		msg := fmt.Sprintf("%q is held with key %q by %s: %d holds, as many as its limit of %d allows", name, key, s.HoldersString(), s.Holds(), s.Limit)
		if n := len(s.Waiting); n > 0 {
			msg += fmt.Sprintf(", and %s waiting for it", advice.Plural(n, "request is", "requests are"))
		}
		return msg
	}
	if !s.Free() && s.Key != key {
		msg := fmt.Sprintf("%q is held with key %q by %s", name, s.Key, s.HoldersString())
		if n := len(s.Waiting); n > 0 {
			msg += fmt.Sprintf(", and %s waiting for it", advice.Plural(n, "request is", "requests are"))
		}
		return msg
	}
	other := 0
	for _, w := range s.Waiting {
		if w.Key != key {
			other++
		}
	}
	if other == len(s.Waiting) {
		return fmt.Sprintf("%q has %s with another key waiting first, and a new request does not jump the queue",
			name, advice.Plural(other, "request", "requests"))
	}
	return fmt.Sprintf("%q has %s waiting first (%d with another key), and a new request does not jump the queue",
		name, advice.Plural(len(s.Waiting), "request", "requests"), other)
}

// limitText says a lock's limit: "3 holders", or "none".
func limitText(limit int) string {
	if limit == 0 {
		return "none"
	}
	return advice.Plural(limit, "holder", "holders")
}

// waitedFor names what waiter p waits for, for messages: its pool, or
// its locks.
func waitedFor(names []string, p txn.Waiter) string {
	if p.Pool != "" {
		return fmt.Sprintf("the pool %q", p.Pool)
	}
	return quoteAll(names)
}

// quoteAll names locks for a message: "a", "b".
func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}
