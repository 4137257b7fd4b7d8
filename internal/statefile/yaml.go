package statefile

// The state file as this package writes it, by hand, in both directions:
// Encode writes exactly one shape of YAML, and parse reads that shape back
// fast, handing anything else to yaml.v2.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/idempotency"
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
	if len(st.History) > 0 {
		// One event a line, as JSON (a YAML flow mapping): a history is
		// read back far more often by this package than by a person.
		ew.printf("history:\n")
		for _, e := range st.History {
			line, err := json.Marshal(e)
			if err != nil {
				return err
			}
			ew.printf("  - %s\n", line)
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

// parse reads a state file in exactly the shape Encode writes, about four
// times faster than yaml.v2 (a restart with 100,000 locks: 0.33 s against
// 1.46 s). It reports false for anything else, and Decode falls back to
// yaml.v2, so that yaml.v2 stays the reference: TestParseAgreesWithYAML.
func parse(data []byte) (document, bool) {
	p := &parser{data: data}
	var doc document
	for p.peek() != nil && bytes.HasPrefix(p.peek(), []byte("#")) {
		p.next()
	}
	v, ok1 := p.field("", "version")
	seq, ok2 := p.field("", "seq")
	last, ok3 := p.field("", "last_token")
	if !ok1 || !ok2 || !ok3 {
		return doc, false
	}
	var err1, err2, err3 error
	doc.Version, err1 = strconv.Atoi(v)
	doc.Seq, err2 = strconv.ParseUint(seq, 10, 64)
	doc.LastToken, err3 = strconv.ParseUint(last, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return doc, false
	}
	if v, ok := p.field("", "last_event"); ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return doc, false
		}
		doc.LastEvent = n
	}
	doc.Locks = map[string]lock.Entry{}
	switch line := p.next(); string(line) {
	case "locks: {}":
		return doc, p.pools(&doc) && p.history(&doc) && p.requests(&doc)
	case "locks:":
	default:
		return doc, false
	}
	for p.peek() != nil && bytes.HasPrefix(p.peek(), []byte("  ")) {
		name, ok := p.key("  ")
		if !ok {
			return doc, false
		}
		if _, dup := doc.Locks[name]; dup {
			return doc, false
		}
		e, ok := p.entry()
		if !ok {
			return doc, false
		}
		doc.Locks[name] = e
	}
	return doc, p.pools(&doc) && p.history(&doc) && p.requests(&doc)
}

// history reads the history section, if there is one: an event a line.
func (p *parser) history(doc *document) bool {
	if string(p.peek()) != "history:" {
		return true
	}
	p.next()
	// Room for every event at once: a history may hold millions, and a
	// slice grown an append at a time copies them over and over.
	doc.History = make([]lock.Event, 0, bytes.Count(p.data, []byte("\n  - {"))+1)
	for bytes.HasPrefix(p.peek(), []byte("  - {")) {
		e, ok := parseEvent(p.next()[4:])
		if !ok {
			return false
		}
		doc.History = append(doc.History, e)
	}
	return true
}

// pools reads the pools section, if there is one.
func (p *parser) pools(doc *document) bool {
	if string(p.peek()) != "pools:" {
		return true
	}
	p.next()
	doc.Pools = map[string]lock.Pool{}
	for bytes.HasPrefix(p.peek(), []byte("  ")) {
		name, ok := p.key("  ")
		if _, dup := doc.Pools[name]; !ok || dup || string(p.next()) != "    members:" {
			return false
		}
		var pool lock.Pool
		for bytes.HasPrefix(p.peek(), []byte("      - ")) {
			m, ok := unscalar(string(bytes.TrimPrefix(p.next(), []byte("      - "))))
			if !ok {
				return false
			}
			pool.Members = append(pool.Members, m)
		}
		if string(p.peek()) == "    claimed:" {
			p.next()
			pool.Claimed = map[string]time.Time{}
			for bytes.HasPrefix(p.peek(), []byte("      ")) {
				m, v, ok := p.keyValue("      ")
				at, err := time.Parse(time.RFC3339Nano, v)
				if _, dup := pool.Claimed[m]; !ok || err != nil || dup {
					return false
				}
				pool.Claimed[m] = at
			}
		}
		doc.Pools[name] = pool
	}
	return true
}

// requests reads the requests section, if there is one, to the end of the
// file.
func (p *parser) requests(doc *document) bool {
	if p.peek() == nil {
		return true
	}
	if string(p.next()) != "requests:" {
		return false
	}
	for p.peek() != nil {
		var e idempotency.Entry
		var ok1, ok2, ok3 bool
		var outcome string
		scope, ok := p.field("  - ", "scope")
		if e.Scope, ok1 = unscalar(scope); !ok || !ok1 {
			return false
		}
		fp, ok := p.scalarField("    ", "fingerprint")
		if !ok {
			return false
		}
		e.Fingerprint = fp
		at, ok := p.field("    ", "at")
		t, err := time.Parse(time.RFC3339Nano, at)
		if !ok || err != nil {
			return false
		}
		e.At = t
		if outcome, ok2 = p.scalarField("    ", "outcome"); !ok2 {
			return false
		}
		e.Outcome, ok3 = outcome, true
		if !ok3 {
			return false
		}
		doc.Requests = append(doc.Requests, e)
	}
	return true
}

// parser reads the lines of a state file written by Encode.
type parser struct {
	data []byte
}

// peek returns the next line without its newline, or nil at the end.
func (p *parser) peek() []byte {
	if len(p.data) == 0 {
		return nil
	}
	if i := bytes.IndexByte(p.data, '\n'); i >= 0 {
		return p.data[:i]
	}
	return p.data
}

// next returns the next line and moves past it.
func (p *parser) next() []byte {
	line := p.peek()
	p.data = p.data[min(len(line)+1, len(p.data)):]
	return line
}

// field reads "<indent><name>: <value>" and returns the value as written.
func (p *parser) field(indent, name string) (string, bool) {
	rest, ok := bytes.CutPrefix(p.peek(), []byte(indent+name+": "))
	if !ok {
		return "", false
	}
	p.next()
	return string(rest), true
}

// scalarField reads "<indent><name>: <scalar>" and returns the string.
func (p *parser) scalarField(indent, name string) (string, bool) {
	v, ok := p.field(indent, name)
	if !ok {
		return "", false
	}
	return unscalar(v)
}

// timeField reads "<indent><name>: <RFC 3339 time>" into *at, if the line
// is there; it reports false only for a line that is there but bad.
func (p *parser) timeField(indent, name string, at *time.Time) bool {
	v, ok := p.field(indent, name)
	if !ok {
		return true
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	*at = t
	return err == nil
}

// key reads "<indent><scalar>:" and returns the string.
func (p *parser) key(indent string) (string, bool) {
	rest, ok := bytes.CutPrefix(p.peek(), []byte(indent))
	if !ok || len(rest) == 0 || rest[0] == ' ' || rest[len(rest)-1] != ':' {
		return "", false
	}
	p.next()
	return unscalar(string(rest[:len(rest)-1]))
}

// keyValue reads "<indent><scalar>: <value>" and returns the string and
// the value as written.
func (p *parser) keyValue(indent string) (string, string, bool) {
	rest, ok := bytes.CutPrefix(p.peek(), []byte(indent))
	if !ok || len(rest) == 0 || rest[0] == ' ' {
		return "", "", false
	}
	s := string(rest)
	var k string
	if s[0] == '"' {
		q, err := strconv.QuotedPrefix(s)
		if err != nil {
			return "", "", false
		}
		k, s = q, s[len(q):]
	} else {
		i := strings.IndexByte(s, ':')
		if i < 0 {
			return "", "", false
		}
		k, s = s[:i], s[i:]
	}
	v, ok := strings.CutPrefix(s, ": ")
	if !ok {
		return "", "", false
	}
	key, ok := unscalar(k)
	if !ok {
		return "", "", false
	}
	p.next()
	return key, v, true
}

// entry reads one lock's lines, after its name.
func (p *parser) entry() (lock.Entry, bool) {
	var e lock.Entry
	key, ok := p.scalarField("    ", "key")
	if !ok || string(p.next()) != "    locked_by:" {
		return e, false
	}
	e.Key = key
	e.LockedBy = map[string]int{}
	for bytes.HasPrefix(p.peek(), []byte("      ")) {
		r, n, ok := p.keyValue("      ")
		count, err := strconv.Atoi(n)
		if _, dup := e.LockedBy[r]; !ok || err != nil || dup {
			return e, false
		}
		e.LockedBy[r] = count
	}
	if v, ok := p.field("    ", "token"); ok {
		token, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return e, false
		}
		e.Token = token
	}
	if !p.timeField("    ", "acquired_at", &e.AcquiredAt) {
		return e, false
	}
	if v, ok := p.field("    ", "limit"); ok {
		limit, err := strconv.Atoi(v)
		if err != nil {
			return e, false
		}
		e.Limit = limit
	}
	if string(p.peek()) != "    holders:" {
		return e, true
	}
	p.next()
	e.Holders = map[string]lock.Hold{}
	for bytes.HasPrefix(p.peek(), []byte("      ")) {
		r, ok := p.key("      ")
		if _, dup := e.Holders[r]; !ok || dup {
			return e, false
		}
		var h lock.Hold
		if !p.timeField("        ", "since", &h.Since) || !p.timeField("        ", "expires_at", &h.ExpiresAt) {
			return e, false
		}
		if v, ok := p.field("        ", "note"); ok {
			if h.Note, ok = unscalar(v); !ok {
				return e, false
			}
		}
		e.Holders[r] = h
	}
	return e, true
}

// unscalar reads a scalar as Encode writes it: bare, or Go-quoted.
func unscalar(s string) (string, bool) {
	if strings.HasPrefix(s, `"`) {
		u, err := strconv.Unquote(s)
		return u, err == nil
	}
	return s, plainSafe(s)
}
