package statefile

// The state file as this package writes it, by hand, in both directions
// (this file writes; parse.go reads): Encode writes exactly one shape of
// YAML, and parse reads that shape back fast, handing anything else to
// yaml.v2.

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

// Encode writes st to w as a state file. It writes the YAML itself, for the
// one shape of lock.Entry: yaml.v2 takes seconds and gigabytes of garbage
// for a table of 100,000 locks, at every checkpoint. TestEncodeIsYAML
// checks that yaml.v2 reads back every field of lock.Entry from it. The
// file ends in its seal.
func Encode(w io.Writer, st State) error {
	sw := newSealWriter(w)
	ew := &errWriter{w: sw}
	ew.printf("%sversion: %d\nseq: %d\nlast_token: %d\n", header, Version, st.Seq, st.LastToken)
	if st.LastEvent != 0 {
		ew.printf("last_event: %d\n", st.LastEvent)
	}
	if len(st.Locks) == 0 {
		ew.printf("locks: {}\n")
	} else {
		ew.printf("locks:\n")
		for _, name := range slices.Sorted(maps.Keys(st.Locks)) {
			encodeLock(ew, name, st.Locks[name])
		}
	}
	if len(st.Pools) > 0 {
		ew.printf("pools:\n")
		for _, name := range slices.Sorted(maps.Keys(st.Pools)) {
			p := st.Pools[name]
			ew.printf("  %s:\n    members:\n", scalar(name))
			for _, m := range p.Members {
				ew.printf("      - %s\n", scalar(m))
			}
			if len(p.Claimed) > 0 {
				ew.printf("    claimed:\n")
				for _, m := range slices.Sorted(maps.Keys(p.Claimed)) {
					ew.printf("      %s: %s\n", scalar(m), p.Claimed[m].Format(time.RFC3339Nano))
				}
			}
		}
	}
	if len(st.Credentials) > 0 {
		// One credential a line, as JSON, as the events are.
		ew.printf("credentials:\n")
		for _, name := range slices.Sorted(maps.Keys(st.Credentials)) {
			line, err := json.Marshal(st.Credentials[name])
			if err != nil {
				return err
			}
			ew.printf("  - %s\n", line)
		}
	}
	if len(st.History) > 0 {
		// One event a line, as JSON (a YAML flow mapping): a history is
		// read back far more often by this package than by a person.
		ew.printf("history:\n")
		var line []byte
		for _, e := range st.History {
			line = lock.AppendEvent(append(line[:0], "  - "...), e)
			ew.printf("%s\n", line)
		}
	}
	if len(st.Requests) > 0 {
		ew.printf("requests:\n")
		for _, e := range st.Requests {
			ew.printf("  - scope: %s\n    fingerprint: %s\n    at: %s\n    outcome: %s\n",
				scalar(e.Scope), scalar(e.Fingerprint), e.At.Format(time.RFC3339Nano), scalar(e.Outcome))
		}
	}
	if ew.err != nil {
		return ew.err
	}
	return sw.seal()
}

// encodeLock writes one lock as a lock.Entry under its name.
func encodeLock(ew *errWriter, name string, l lock.Lock) {
	ew.printf("  %s:\n    key: %s\n    locked_by:\n", scalar(name), scalar(l.Key))
	detailed := false
	for _, h := range l.Holders {
		ew.printf("      %s: %d\n", scalar(h.Name), h.Count)
		detailed = detailed || h.Hold != lock.Hold{Count: h.Count}
	}
	if l.Token != 0 {
		ew.printf("    token: %d\n", l.Token)
	}
	if !l.AcquiredAt.IsZero() {
		ew.printf("    acquired_at: %s\n", l.AcquiredAt.Format(time.RFC3339Nano))
	}
	if l.Limit != 0 {
		ew.printf("    limit: %d\n", l.Limit)
	}
	if !detailed {
		return
	}
	ew.printf("    holders:\n")
	for _, h := range l.Holders {
		if h.Hold == (lock.Hold{Count: h.Count}) {
			continue
		}
		ew.printf("      %s:\n", scalar(h.Name))
		if !h.Since.IsZero() {
			ew.printf("        since: %s\n", h.Since.Format(time.RFC3339Nano))
		}
		if !h.ExpiresAt.IsZero() {
			ew.printf("        expires_at: %s\n", h.ExpiresAt.Format(time.RFC3339Nano))
		}
		if h.Note != "" {
			ew.printf("        note: %s\n", scalar(h.Note))
		}
		if h.Build != nil {
			// JSON, which YAML reads as a flow mapping: one line.
			raw, _ := json.Marshal(h.Build) // strings and numbers: it encodes
			ew.printf("        build: %s\n", raw)
		}
	}
}

// scalar returns s as a YAML scalar: bare when that reads back as the same
// string, double-quoted otherwise. Go's quoting uses only escapes that
// YAML's double-quoted style has too (\n, \t, \xXX, \uXXXX, ...).
func scalar(s string) string {
	if plainSafe(s) {
		return s
	}
	return strconv.Quote(s)
}

// plainSafe reports whether s can be written as a YAML plain scalar: a
// letter or underscore, then letters, digits and _ . / - only, and not a
// word that YAML 1.1 reads as a boolean or null.
func plainSafe(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '.' || c == '/' || c == '-')) {
			return false
		}
	}
	switch strings.ToLower(s) {
	case "y", "yes", "n", "no", "true", "false", "on", "off", "null":
		return false
	}
	return true
}

// errWriter remembers the first write error, so that Encode can check
// once at the end.
type errWriter struct {
	w   io.Writer
	err error
}

func (ew *errWriter) printf(format string, args ...any) {
	if ew.err == nil {
		_, ew.err = fmt.Fprintf(ew.w, format, args...)
	}
}
