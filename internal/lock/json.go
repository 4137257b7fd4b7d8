package lock

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendView appends l, called name, with its queue, as JSON: the bytes
// encoding/json writes for l.View(name, queue) with HTML escaping off,
// without building the View's maps. A listing of a million locks writes
// it a million times; TestAppendViewIsEncodingJSON keeps the two the same.
func AppendView(b []byte, name string, l Lock, queue []Waiting) []byte {
	b = append(b, `{"name":`...)
	b = AppendString(b, name)
	b = append(b, `,"key":`...)
	b = AppendString(b, l.Key)
	b = append(b, `,"locked_by":{`...)
	for i, h := range l.Holders { // sorted by name, as encoding/json sorts a map's keys
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, h.Name)
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(h.Count), 10)
	}
	b = append(b, `},"token":`...)
	b = strconv.AppendUint(b, l.Token, 10)
	if l.Limit != 0 {
		b = append(b, `,"limit":`...)
		b = strconv.AppendInt(b, int64(l.Limit), 10)
	}
	if !l.AcquiredAt.IsZero() {
		b = append(b, `,"acquired_at":`...)
		b = appendTime(b, l.AcquiredAt)
	}
	b = append(b, `,"holders":{`...)
	for i, h := range l.Holders {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, h.Name)
		b = append(b, ":{"...)
		b = append(h.Hold.appendFields(b), '}')
	}
	b = append(b, `},"waiting":[`...)
	for i, w := range queue {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = strconv.AppendInt(b, w.ID, 10)
		b = append(b, `,"key":`...)
		b = AppendString(b, w.Key)
		b = append(b, `,"requestor":`...)
		b = AppendString(b, w.Requestor)
		b = append(b, `,"since":`...)
		b = appendTime(b, w.Since)
		if w.Priority != 0 {
			b = append(b, `,"priority":`...)
			b = strconv.AppendInt(b, int64(w.Priority), 10)
		}
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// appendFields appends h's fields as encoding/json writes them, without
// the braces: its count, and the others that are set.
func (h Hold) appendFields(b []byte) []byte {
	b = append(b, `"count":`...)
	b = strconv.AppendInt(b, int64(h.Count), 10)
	if !h.Since.IsZero() {
		b = append(b, `,"since":`...)
		b = appendTime(b, h.Since)
	}
	if !h.ExpiresAt.IsZero() {
		b = append(b, `,"expires_at":`...)
		b = appendTime(b, h.ExpiresAt)
	}
	if h.Note != "" {
		b = append(b, `,"note":`...)
		b = AppendString(b, h.Note)
	}
	if h.Build != nil {
		b = append(b, `,"build":`...)
		b = h.Build.appendJSON(b)
	}
	return b
}

// appendTime appends t as encoding/json does: RFC 3339, quoted.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// AppendString appends s as a JSON string, as encoding/json writes it
// with HTML escaping off: quotes, backslashes and control characters
// escaped, invalid UTF-8 as U+FFFD, and U+2028 and U+2029 escaped (some
// JavaScript reads them as line ends).
func AppendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
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
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
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
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
