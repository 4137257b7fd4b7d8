package statefile

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

// parseEvent reads one event of the history section, as json.Marshal
// writes a lock.Event (its fields in order, the optional ones only when
// set), five to ten times faster than encoding/json: a restart reads a
// million of them. Anything else is refused, and the file goes to
// yaml.v2. TestEncodeIsYAML checks it against encoding/json on random
// events.
func parseEvent(line []byte) (lock.Event, bool) {
	r := eventReader{rest: line}
	var e lock.Event
	var at, kind, waited, held string
	ok := r.lit(`{"id":`) && r.uint(&e.ID) &&
		r.lit(`,"lock":`) && r.str(&e.Lock) &&
		r.lit(`,"at":`) && r.str(&at) &&
		r.lit(`,"event":`) && r.str(&kind) &&
		r.lit(`,"holder":`) && r.str(&e.Holder) &&
		r.lit(`,"key":`) && r.str(&e.Key) &&
		(!r.opt(`,"token":`) || r.uint(&e.Token)) &&
		r.lit(`,"counts":`) && r.int(&e.Counts) &&
		(!r.opt(`,"note":`) || r.str(&e.Note)) &&
		(!r.opt(`,"waited":`) || r.str(&waited)) &&
		(!r.opt(`,"held":`) || r.str(&held)) &&
		(!r.opt(`,"by":`) || r.str(&e.By)) &&
		(!r.opt(`,"reason":`) || r.str(&e.Reason)) &&
		(!r.opt(`,"credential":`) || r.str(&e.Credential)) &&
		r.lit(`}`) && len(r.rest) == 0
	if !ok {
		return lock.Event{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return lock.Event{}, false
	}
	e.At, e.Kind = t, lock.Kind(kind)
	for _, d := range []struct {
		s   string
		dst *lock.Duration
	}{{waited, &e.Waited}, {held, &e.Held}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return lock.Event{}, false
		}
		*d.dst = lock.Duration(v)
	}
	return e, true
}

// eventReader reads a line written by json.Marshal, front to back.
type eventReader struct{ rest []byte }

// lit reads s.
func (r *eventReader) lit(s string) bool {
	if !bytes.HasPrefix(r.rest, []byte(s)) {
		return false
	}
	r.rest = r.rest[len(s):]
	return true
}

// opt reads s if it comes next.
func (r *eventReader) opt(s string) bool { return r.lit(s) }

// digits returns the digits that come next.
func (r *eventReader) digits() []byte {
	i := 0
	for i < len(r.rest) && r.rest[i] >= '0' && r.rest[i] <= '9' {
		i++
	}
	d := r.rest[:i]
	r.rest = r.rest[i:]
	return d
}

func (r *eventReader) uint(dst *uint64) bool {
	v, err := strconv.ParseUint(string(r.digits()), 10, 64)
	*dst = v
	return err == nil
}

func (r *eventReader) int(dst *int) bool {
	neg := r.lit("-")
	v, err := strconv.Atoi(string(r.digits()))
	if neg {
		v = -v
	}
	*dst = v
	return err == nil
}

// str reads a JSON string: as it is when it has no escape, else as
// encoding/json reads it.
func (r *eventReader) str(dst *string) bool {
	if len(r.rest) == 0 || r.rest[0] != '"' {
		return false
	}
	plain := true
	i := 1
	for ; i < len(r.rest) && r.rest[i] != '"'; i++ {
		if r.rest[i] == '\\' {
			plain = false
			i++ // the escaped character, which may be a quote
		} else if r.rest[i] < 0x20 {
			return false
		}
	}
	if i >= len(r.rest) {
		return false
	}
	quoted := r.rest[:i+1]
	r.rest = r.rest[i+1:]
	if plain {
		*dst = string(quoted[1 : len(quoted)-1])
		return true
	}
	return json.Unmarshal(quoted, dst) == nil
}
