package statefile

// The reading half of the state file's hand-written YAML (encode.go is
// the writing half): parse reads exactly the shape Encode writes.

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
)

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
	// Each lock has one key line: counting them (a fast scan) sizes the
	// list once, instead of growing it through every size on the way.
	doc.fast = make([]fastLock, 0, bytes.Count(data, []byte("\n    key: ")))
	switch line := p.next(); string(line) {
	case "locks: {}":
		return doc, p.pools(&doc) && p.credentials(&doc) && p.history(&doc) && p.requests(&doc)
	case "locks:":
	default:
		return doc, false
	}
	for p.peek() != nil && bytes.HasPrefix(p.peek(), []byte("  ")) {
		name, ok := p.key("  ")
		if !ok || name == "" || (len(doc.fast) > 0 && name <= doc.fast[len(doc.fast)-1].name) {
			return doc, false // in Encode's order, each once; else yaml.v2 reads it, or says what is wrong
		}
		l, ok := p.entry()
		if !ok {
			return doc, false
		}
		doc.fast = append(doc.fast, fastLock{name: name, lock: l})
	}
	return doc, p.pools(&doc) && p.credentials(&doc) && p.history(&doc) && p.requests(&doc)
}

// fastLock is a lock as the fast parser reads it: in the table's shape
// already, without the file's two maps a lock (making them took a quarter
// of a restart with 100,000 locks).
type fastLock struct {
	name string
	lock lock.Lock
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

// credentials reads the credentials section, if there is one: a
// credential a line, as JSON.
func (p *parser) credentials(doc *document) bool {
	if string(p.peek()) != "credentials:" {
		return true
	}
	p.next()
	for bytes.HasPrefix(p.peek(), []byte("  - {")) {
		var c access.Credential
		if err := json.Unmarshal(p.next()[4:], &c); err != nil {
			return false
		}
		doc.Credentials = append(doc.Credentials, c)
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

// entry reads one lock's lines, after its name, as Encode writes them:
// holders in name order, each once, with a count above zero and details
// only for a holder with a count. Anything else (a file edited by hand)
// is left to yaml.v2 and fromEntry, which read it or say what is wrong.
func (p *parser) entry() (lock.Lock, bool) {
	var l lock.Lock
	key, ok := p.scalarField("    ", "key")
	if !ok || string(p.next()) != "    locked_by:" {
		return l, false
	}
	l.Key = key
	for bytes.HasPrefix(p.peek(), []byte("      ")) {
		r, n, ok := p.keyValue("      ")
		count, err := strconv.Atoi(n)
		if !ok || err != nil || count < 1 || r == "" || (len(l.Holders) > 0 && r <= l.Holders[len(l.Holders)-1].Name) {
			return l, false
		}
		l.Holders = append(l.Holders, lock.Holder{Name: r, Hold: lock.Hold{Count: count}})
	}
	if len(l.Holders) == 0 || key == "" {
		return l, false
	}
	if v, ok := p.field("    ", "token"); ok {
		token, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return l, false
		}
		l.Token = token
	}
	if !p.timeField("    ", "acquired_at", &l.AcquiredAt) {
		return l, false
	}
	if v, ok := p.field("    ", "limit"); ok {
		limit, err := strconv.Atoi(v)
		if err != nil || limit < 0 {
			return l, false
		}
		l.Limit = limit
	}
	if string(p.peek()) != "    holders:" {
		return l, true
	}
	p.next()
	i := 0 // the holder the details are for: both lists in name order
	for bytes.HasPrefix(p.peek(), []byte("      ")) {
		r, ok := p.key("      ")
		for i < len(l.Holders) && l.Holders[i].Name < r {
			i++
		}
		if !ok || i == len(l.Holders) || l.Holders[i].Name != r {
			return l, false
		}
		h := &l.Holders[i].Hold
		if !p.timeField("        ", "since", &h.Since) || !p.timeField("        ", "expires_at", &h.ExpiresAt) {
			return l, false
		}
		if v, ok := p.field("        ", "note"); ok {
			if h.Note, ok = unscalar(v); !ok {
				return l, false
			}
		}
		if v, ok := p.field("        ", "build"); ok {
			h.Build = new(lock.Build)
			if json.Unmarshal([]byte(v), h.Build) != nil {
				return l, false
			}
		}
		i++ // each holder's details once
	}
	return l, true
}

// unscalar reads a scalar as Encode writes it: bare, or Go-quoted.
func unscalar(s string) (string, bool) {
	if strings.HasPrefix(s, `"`) {
		u, err := strconv.Unquote(s)
		return u, err == nil
	}
	return s, plainSafe(s)
}
