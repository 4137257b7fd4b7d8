package filestore

import (
	"slices"
	"strconv"

	"github.com/locker-ci/locker/internal/lock"
)

// A change as one line of the journal, written by hand for the common case.

// appendChange appends c as encoding/json writes it (the journal's
// encoder), without reflection, for the changes that touch only locks
// and their histories: nearly all of them. It reports false, having
// appended nothing, for one that remembers or forgets an outcome or
// changes a pool or a credential (encoding/json writes those).
// TestAppendChangeIsEncodingJSON keeps the two the same.
func appendChange(b []byte, c Change) ([]byte, bool) {
	if len(c.Remember) > 0 || len(c.Forget) > 0 || len(c.Pools) > 0 || len(c.Credentials) > 0 {
		return b, false
	}
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, c.Seq, 10)
	if c.Prev != 0 {
		b = append(b, `,"prev":`...)
		b = strconv.AppendUint(b, c.Prev, 10)
	}
	b = append(b, `,"last_token":`...)
	b = strconv.AppendUint(b, c.LastToken, 10)
	if c.Locks == nil {
		b = append(b, `,"locks":null`...)
	} else {
		b = append(b, `,"locks":{`...)
		names := make([]string, 0, len(c.Locks))
		for name := range c.Locks {
			names = append(names, name)
		}
		slices.Sort(names) // as encoding/json sorts a map's keys
		for i, name := range names {
			if i > 0 {
				b = append(b, ',')
			}
			b = lock.AppendString(b, name)
			b = append(b, ':')
			b = lock.AppendLock(b, c.Locks[name])
		}
		b = append(b, '}')
	}
	if len(c.Events) > 0 {
		b = append(b, `,"events":[`...)
		for i, e := range c.Events {
			if i > 0 {
				b = append(b, ',')
			}
			b = lock.AppendEvent(b, e)
		}
		b = append(b, ']')
	}
	if c.LastEvent != 0 {
		b = append(b, `,"last_event":`...)
		b = strconv.AppendUint(b, c.LastEvent, 10)
	}
	return append(b, '}'), true
}
