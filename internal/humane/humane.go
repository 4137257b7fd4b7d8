// Package humane says what the status page shows in a person's words:
// durations at a glance, what an event tells, which part of a text a
// filter matched, and which notes are links.
package humane

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

// Part is a piece of a text, and whether it is (part of) what a filter
// matched.
type Part struct {
	Text  string
	Match bool
}

// Mark cuts s into the pieces filter matches, case aside, and the rest,
// for a page to mark.
func Mark(s, filter string) []Part {
	if filter == "" {
		return []Part{{Text: s}}
	}
	var parts []Part
	lower, f := strings.ToLower(s), strings.ToLower(filter)
	for {
		i := strings.Index(lower, f)
		// ToLower keeps the byte length of most text; where it does not,
		// the text is shown unmarked rather than cut in the wrong place.
		if i < 0 || len(lower) != len(s) {
			return append(parts, Part{Text: s})
		}
		if i > 0 {
			parts = append(parts, Part{Text: s[:i]})
		}
		parts = append(parts, Part{Text: s[i : i+len(f)], Match: true})
		s, lower = s[i+len(f):], lower[i+len(f):]
		if s == "" {
			return parts
		}
	}
}

// Event says what an event tells, in a few words.
func Event(e lock.Event) string {
	held := ""
	if e.Held > 0 {
		held = " after " + Duration(time.Duration(e.Held))
	}
	switch e.Kind {
	case lock.Taken:
		s := "taken by " + e.Holder
		if e.Waited > 0 {
			s += " after waiting " + Duration(time.Duration(e.Waited))
		}
		return s
	case lock.Released:
		return "released by " + e.Holder + held
	case lock.Expired:
		return "the lease of " + e.Holder + " ran out" + held
	case lock.Forced:
		return "forced free by " + e.By + "; " + e.Holder + " had it" + held
	case lock.Dropped:
		return "the grant to " + e.Holder + " was given back: its node was taken for dead"
	case lock.Ended:
		return "ended with " + e.Reason + "; " + e.Holder + " had it" + held
	}
	return string(e.Kind) + " " + e.Holder
}

// Link returns note if it is an absolute http or https URL, the kind
// a pipeline leaves there (its build's page), and "" otherwise: no other
// scheme becomes a link.
func Link(note string) string {
	u, err := url.Parse(note)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ""
	}
	return note
}

// Duration says d the way a person reads it at a glance, to the
// second under a minute and to the minute above: "42 s", "12 min",
// "3 h 5 min", "2 d 4 h", with no-break spaces, so that a number never
// wraps apart from its unit. Negative durations (a lease that just ran
// out, a clock step) read as "0 s".
func Duration(d time.Duration) string {
	d = max(d, 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d\u00a0s", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d\u00a0min", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%d\u00a0h\u00a0%d\u00a0min", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%d\u00a0d\u00a0%d\u00a0h", int(d.Hours())/24, int(d.Hours())%24)
}
