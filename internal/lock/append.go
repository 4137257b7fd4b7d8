package lock

import (
	"strconv"
	"time"
)

// AppendLock appends l as JSON: the bytes encoding/json writes for l with
// HTML escaping off (the journal's encoder), without reflection. Every
// change on the file store writes its locks so; TestAppendLockIsEncodingJSON
// keeps the two the same.
func AppendLock(b []byte, l *Lock) []byte {
	if l == nil {
		return append(b, "null"...)
	}
	b = append(b, `{"key":`...)
	b = AppendString(b, l.Key)
	if l.Token != 0 {
		b = append(b, `,"token":`...)
		b = strconv.AppendUint(b, l.Token, 10)
	}
	if !l.AcquiredAt.IsZero() {
		b = append(b, `,"acquired_at":`...)
		b = appendTime(b, l.AcquiredAt)
	}
	if l.Limit != 0 {
		b = append(b, `,"limit":`...)
		b = strconv.AppendInt(b, int64(l.Limit), 10)
	}
	if l.Holders == nil {
		return append(b, `,"holders":null}`...)
	}
	b = append(b, `,"holders":[`...)
	for i, h := range l.Holders {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = AppendString(b, h.Name)
		b = append(b, ',')
		b = append(h.Hold.appendFields(b), '}')
	}
	return append(b, "]}"...)
}

// AppendEvent appends e as JSON, as encoding/json writes it with HTML
// escaping off (TestAppendEventIsEncodingJSON).
func AppendEvent(b []byte, e Event) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, e.ID, 10)
	b = append(b, `,"lock":`...)
	b = AppendString(b, e.Lock)
	b = append(b, `,"at":`...)
	b = appendTime(b, e.At)
	b = append(b, `,"event":`...)
	b = AppendString(b, string(e.Kind))
	b = append(b, `,"holder":`...)
	b = AppendString(b, e.Holder)
	b = append(b, `,"key":`...)
	b = AppendString(b, e.Key)
	if e.Token != 0 {
		b = append(b, `,"token":`...)
		b = strconv.AppendUint(b, e.Token, 10)
	}
	b = append(b, `,"counts":`...)
	b = strconv.AppendInt(b, int64(e.Counts), 10)
	if e.Note != "" {
		b = append(b, `,"note":`...)
		b = AppendString(b, e.Note)
	}
	for _, f := range [...]struct {
		name string
		d    Duration
	}{{`,"waited":"`, e.Waited}, {`,"held":"`, e.Held}} {
		if f.d != 0 {
			b = append(b, f.name...)
			b = append(b, time.Duration(f.d).Round(time.Millisecond).String()...)
			b = append(b, '"')
		}
	}
	for _, f := range [...]struct{ name, value string }{{`,"by":`, e.By}, {`,"reason":`, e.Reason}, {`,"credential":`, e.Credential}} {
		if f.value != "" {
			b = append(b, f.name...)
			b = AppendString(b, f.value)
		}
	}
	return append(b, '}')
}
