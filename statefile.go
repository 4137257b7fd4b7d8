package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v2"
)

// The state file format: YAML, written by encodeState and read back by
// decodeState.

// stateVersion is the version of the state file format this server writes.
const stateVersion = 1

// stateHeader opens every state file this server writes.
const stateHeader = `# Locker's lock table. While the locker server runs, newer changes are in
# the .journal file beside this one. Stop the server before editing by hand.
`

// stateFile is the YAML document kept in LOCKER_CONFIG.
type stateFile struct {
	Version   int                  `yaml:"version"`
	Seq       uint64               `yaml:"seq"` // the last journal record this snapshot holds
	LastToken uint64               `yaml:"last_token"`
	Locks     map[string]lockEntry `yaml:"locks"`
}

// lockEntry is one lock in the state file. Key and LockedBy have the shape
// the original locker wrote as JSON, so that its files load unchanged; the
// other fields are this server's own.
type lockEntry struct {
	Key        string                 `yaml:"key" json:"key"`
	LockedBy   map[string]int         `yaml:"locked_by" json:"locked_by"`
	Token      uint64                 `yaml:"token,omitempty" json:"-"`
	AcquiredAt time.Time              `yaml:"acquired_at,omitempty" json:"-"`
	Holders    map[string]holderEntry `yaml:"holders,omitempty" json:"-"`
}

// holderEntry is what the state file knows of a holder besides its count.
type holderEntry struct {
	Since     time.Time `yaml:"since,omitempty"`
	ExpiresAt time.Time `yaml:"expires_at,omitempty"`
	Note      string    `yaml:"note,omitempty"`
}

// encodeState writes st to w as a state file that holds the journal up to
// seq. It writes the YAML itself, for a fixed shape: yaml.v2 needs seconds
// and gigabytes of garbage for a table of 100,000 locks.
func encodeState(w io.Writer, st state, seq uint64) error {
	ew := &errWriter{w: w}
	ew.printf("%sversion: %d\nseq: %d\nlast_token: %d\n", stateHeader, stateVersion, seq, st.LastToken)
	if len(st.Locks) == 0 {
		ew.printf("locks: {}\n")
		return ew.err
	}
	ew.printf("locks:\n")
	for _, name := range slices.Sorted(maps.Keys(st.Locks)) {
		l := st.Locks[name]
		ew.printf("  %s:\n    key: %s\n    locked_by:\n", yamlString(name), yamlString(l.Key))
		detailed := false
		for _, h := range l.Holders {
			ew.printf("      %s: %d\n", yamlString(h.Name), h.Count)
			detailed = detailed || !h.Since.IsZero() || !h.ExpiresAt.IsZero() || h.Note != ""
		}
		if l.Token != 0 {
			ew.printf("    token: %d\n", l.Token)
		}
		if !l.AcquiredAt.IsZero() {
			ew.printf("    acquired_at: %s\n", l.AcquiredAt.Format(time.RFC3339Nano))
		}
		if !detailed {
			continue
		}
		ew.printf("    holders:\n")
		for _, h := range l.Holders {
			if h.Since.IsZero() && h.ExpiresAt.IsZero() && h.Note == "" {
				continue
			}
			ew.printf("      %s:\n", yamlString(h.Name))
			if !h.Since.IsZero() {
				ew.printf("        since: %s\n", h.Since.Format(time.RFC3339Nano))
			}
			if !h.ExpiresAt.IsZero() {
				ew.printf("        expires_at: %s\n", h.ExpiresAt.Format(time.RFC3339Nano))
			}
			if h.Note != "" {
				ew.printf("        note: %s\n", yamlString(h.Note))
			}
		}
	}
	return ew.err
}

// yamlString returns s as a YAML scalar: bare when that reads back as the
// same string, double-quoted otherwise. Go's quoting uses only escapes that
// YAML's double-quoted style has too (\n, \t, \xXX, \uXXXX, ...).
func yamlString(s string) string {
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

// errWriter remembers the first write error, so that encodeState can check
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

// decodeState parses a state file: this server's YAML, or the original
// locker's JSON. It returns the table and the last journal record the file
// holds. Released entries (no holder left) are dropped; anything that does
// not describe a valid lock table is an error.
func decodeState(data []byte) (state, uint64, error) {
	st := state{Locks: map[string]Lock{}}
	var seq uint64
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return st, 0, nil
	}
	var entries map[string]lockEntry
	if trimmed[0] == '{' {
		// The original locker wrote JSON: {"name": {"key": ..., "locked_by": {...}}}.
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&entries); err != nil {
			return state{}, 0, fmt.Errorf("not valid JSON in the original locker's format: %w", err)
		}
		if dec.More() {
			return state{}, 0, errors.New("not valid JSON in the original locker's format: data after the closing brace")
		}
	} else {
		f, ok := decodeOwnState(data)
		if !ok {
			// Not exactly as this server writes it (edited by hand, say):
			// yaml.v2 reads it, or says what is wrong with it.
			if err := yaml.UnmarshalStrict(data, &f); err != nil {
				return state{}, 0, fmt.Errorf("not a valid Locker state file: %w", err)
			}
		}
		if f.Version != stateVersion {
			return state{}, 0, fmt.Errorf("\"version: %d\" is not a format this locker reads (it reads version %d)", f.Version, stateVersion)
		}
		entries, st.LastToken, seq = f.Locks, f.LastToken, f.Seq
	}

	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if name == "" {
			return state{}, 0, errors.New("a lock has an empty name")
		}
		l, err := entries[name].lock()
		if err != nil {
			return state{}, 0, fmt.Errorf("lock %q: %w", name, err)
		}
		if l.free() {
			continue
		}
		if l.Token > st.LastToken {
			return state{}, 0, fmt.Errorf("lock %q has token %d, above last_token %d: tokens would be handed out twice", name, l.Token, st.LastToken)
		}
		st.Locks[name] = l
	}
	return st, seq, nil
}

// lock checks e and returns it as a Lock, without requestors at zero.
func (e lockEntry) lock() (Lock, error) {
	l := Lock{Key: e.Key, Token: e.Token, AcquiredAt: e.AcquiredAt}
	for _, r := range slices.Sorted(maps.Keys(e.LockedBy)) {
		n := e.LockedBy[r]
		switch {
		case n < 0:
			return Lock{}, fmt.Errorf("holder %q has a negative count (%d)", r, n)
		case n == 0:
			continue // released; the original left these behind
		case r == "":
			return Lock{}, errors.New("a holder has an empty name")
		}
		he := e.Holders[r]
		l.Holders = append(l.Holders, Holder{Name: r, Count: n, Since: he.Since, ExpiresAt: he.ExpiresAt, Note: he.Note}) // sorted: r comes sorted
	}
	for _, r := range slices.Sorted(maps.Keys(e.Holders)) {
		if _, ok := l.holder(r); !ok {
			return Lock{}, fmt.Errorf("holders lists %q, which has no count in locked_by", r)
		}
	}
	if l.free() {
		return Lock{}, nil
	}
	if l.Key == "" {
		return Lock{}, fmt.Errorf("held by %s but has no key", l.holdersString())
	}
	return l, nil
}

// decodeOwnState parses a state file in exactly the shape encodeState
// writes, about ten times faster than yaml.v2: a restart with 100,000 locks
// would otherwise spend 1.5 s here. It reports false for anything else, and
// the caller falls back to yaml.v2, so that yaml.v2 stays the reference.
func decodeOwnState(data []byte) (stateFile, bool) {
	p := &ownParser{data: data}
	var f stateFile
	for p.peek() != nil && bytes.HasPrefix(p.peek(), []byte("#")) {
		p.next()
	}
	v, ok1 := p.field("", "version")
	seq, ok2 := p.field("", "seq")
	last, ok3 := p.field("", "last_token")
	if !ok1 || !ok2 || !ok3 {
		return f, false
	}
	var err1, err2, err3 error
	f.Version, err1 = strconv.Atoi(v)
	f.Seq, err2 = strconv.ParseUint(seq, 10, 64)
	f.LastToken, err3 = strconv.ParseUint(last, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return f, false
	}
	f.Locks = map[string]lockEntry{}
	switch line := p.next(); string(line) {
	case "locks: {}":
		return f, p.peek() == nil
	case "locks:":
	default:
		return f, false
	}
	for p.peek() != nil {
		name, ok := p.key("  ")
		if !ok {
			return f, false
		}
		if _, dup := f.Locks[name]; dup {
			return f, false
		}
		e, ok := p.lockEntry()
		if !ok {
			return f, false
		}
		f.Locks[name] = e
	}
	return f, true
}

// ownParser reads the lines of a state file written by encodeState.
type ownParser struct {
	data []byte
}

// peek returns the next line without its newline, or nil at the end.
func (p *ownParser) peek() []byte {
	if len(p.data) == 0 {
		return nil
	}
	if i := bytes.IndexByte(p.data, '\n'); i >= 0 {
		return p.data[:i]
	}
	return p.data
}

// next returns the next line and moves past it.
func (p *ownParser) next() []byte {
	line := p.peek()
	p.data = p.data[min(len(line)+1, len(p.data)):]
	return line
}

// field reads "<indent><name>: <value>" and returns the value as written.
func (p *ownParser) field(indent, name string) (string, bool) {
	rest, ok := bytes.CutPrefix(p.peek(), []byte(indent+name+": "))
	if !ok {
		return "", false
	}
	p.next()
	return string(rest), true
}

// stringField reads "<indent><name>: <string>".
func (p *ownParser) stringField(indent, name string) (string, bool) {
	v, ok := p.field(indent, name)
	if !ok {
		return "", false
	}
	return str(v)
}

// key reads "<indent><scalar>:" and returns the scalar.
func (p *ownParser) key(indent string) (string, bool) {
	rest, ok := bytes.CutPrefix(p.peek(), []byte(indent))
	if !ok || len(rest) == 0 || rest[0] == ' ' || rest[len(rest)-1] != ':' {
		return "", false
	}
	p.next()
	return str(string(rest[:len(rest)-1]))
}

// keyValue reads "<indent><string>: <value>" and returns the value as
// written.
func (p *ownParser) keyValue(indent string) (string, string, bool) {
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
	key, ok := str(k)
	if !ok {
		return "", "", false
	}
	p.next()
	return key, v, true
}

// lockEntry reads one lock's lines, after its name.
func (p *ownParser) lockEntry() (lockEntry, bool) {
	var e lockEntry
	key, ok := p.stringField("    ", "key")
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
	if v, ok := p.field("    ", "acquired_at"); ok {
		at, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return e, false
		}
		e.AcquiredAt = at
	}
	if string(p.peek()) != "    holders:" {
		return e, true
	}
	p.next()
	e.Holders = map[string]holderEntry{}
	for bytes.HasPrefix(p.peek(), []byte("      ")) {
		r, ok := p.key("      ")
		if _, dup := e.Holders[r]; !ok || dup {
			return e, false
		}
		var h holderEntry
		for _, f := range []struct {
			name string
			at   *time.Time
		}{{"since", &h.Since}, {"expires_at", &h.ExpiresAt}} {
			if v, ok := p.field("        ", f.name); ok {
				at, err := time.Parse(time.RFC3339Nano, v)
				if err != nil {
					return e, false
				}
				*f.at = at
			}
		}
		if v, ok := p.field("        ", "note"); ok {
			if h.Note, ok = str(v); !ok {
				return e, false
			}
		}
		e.Holders[r] = h
	}
	return e, true
}

// str reads a string as encodeState writes it: bare, or Go-quoted.
func str(s string) (string, bool) {
	if strings.HasPrefix(s, `"`) {
		u, err := strconv.Unquote(s)
		return u, err == nil
	}
	return s, plainSafe(s)
}
