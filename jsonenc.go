package main

import (
	"errors"
	"strconv"
	"time"
	"unicode/utf8"
)

// Every change writes two JSON documents: its journal record and its reply.
// encoding/json finds their fields by reflection and allocates as it goes,
// which shows on a two-core machine at thousands of requests a second, so
// those two are written by hand with jsonBuf. The bytes are the ones
// encoding/json writes for the same values (with HTML escaping off):
// TestJournalRecordIsEncodingJSON, TestReplyIsEncodingJSON and
// FuzzJSONString check it.

// jsonBuf appends JSON to b. The first value that JSON cannot hold is kept
// in err, and the rest is appended anyway; callers check err once, at the
// end.
type jsonBuf struct {
	b   []byte
	err error
}

// errJSONTime is a time that RFC 3339, and so encoding/json, cannot write.
var errJSONTime = errors.New("a time outside the years 0 to 9999 cannot be written as JSON")

// raw appends s as it is: punctuation and field names.
func (j *jsonBuf) raw(s string) { j.b = append(j.b, s...) }

// uint appends n.
func (j *jsonBuf) uint(n uint64) { j.b = strconv.AppendUint(j.b, n, 10) }

// int appends n.
func (j *jsonBuf) int(n int) { j.b = strconv.AppendInt(j.b, int64(n), 10) }

// time appends t as time.Time's MarshalJSON does: RFC 3339 with
// nanoseconds, quoted.
func (j *jsonBuf) time(t time.Time) {
	if y := t.Year(); y < 0 || y > 9999 {
		if j.err == nil {
			j.err = errJSONTime
		}
	}
	j.b = append(j.b, '"')
	j.b = t.AppendFormat(j.b, time.RFC3339Nano)
	j.b = append(j.b, '"')
}

// str appends s as a JSON string, escaped as encoding/json escapes it with
// SetEscapeHTML(false): quote, backslash and control characters escaped,
// invalid UTF-8 replaced by U+FFFD, U+2028 and U+2029 escaped.
func (j *jsonBuf) str(s string) {
	const hex = "0123456789abcdef"
	b := append(j.b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	j.b = append(b, '"')
}

// comma separates the i-th element of a list or object from the one before.
func (j *jsonBuf) comma(i int) {
	if i > 0 {
		j.raw(",")
	}
}

// holderFields appends h's count and, when set, since, expires_at and note:
// the fields a holder has in the journal and in replies alike.
func (j *jsonBuf) holderFields(h Holder) {
	j.raw(`"count":`)
	j.int(h.Count)
	if !h.Since.IsZero() {
		j.raw(`,"since":`)
		j.time(h.Since)
	}
	if !h.ExpiresAt.IsZero() {
		j.raw(`,"expires_at":`)
		j.time(h.ExpiresAt)
	}
	if h.Note != "" {
		j.raw(`,"note":`)
		j.str(h.Note)
	}
}

// lock appends l as encoding/json writes a Lock: the journal's format.
func (j *jsonBuf) lock(l *Lock) {
	if l == nil {
		j.raw("null")
		return
	}
	j.raw(`{"key":`)
	j.str(l.Key)
	if l.Token != 0 {
		j.raw(`,"token":`)
		j.uint(l.Token)
	}
	if !l.AcquiredAt.IsZero() {
		j.raw(`,"acquired_at":`)
		j.time(l.AcquiredAt)
	}
	j.raw(`,"holders":`)
	if l.Holders == nil {
		j.raw("null}")
		return
	}
	j.raw("[")
	for i, h := range l.Holders {
		j.comma(i)
		j.raw(`{"name":`)
		j.str(h.Name)
		j.raw(",")
		j.holderFields(h)
		j.raw("}")
	}
	j.raw("]}")
}
