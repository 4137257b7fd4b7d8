package statefile

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/locker-ci/locker/internal/lock"
)

// FuzzDecode feeds anything to the state file reader: they
// must not panic, and a state file they accept must survive being written
// out and read back unchanged.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("version: 1\nseq: 3\nlast_token: 2\nlocks:\n  prod:\n    key: k\n    locked_by:\n      a: 1\n    token: 2\n"))
	f.Add([]byte(`{"prod":{"locked_by":{"prod-cf":2},"key":"prod-cf"},"old":{"locked_by":{"x":0},"key":""}}`))
	f.Add([]byte("version: 1\nlocks:\n  \"a\\nb\":\n    key: \"- x\"\n    locked_by: {\"y\": 1}\n    holders:\n      y: {note: n, since: 2026-01-02T03:04:05Z}\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := Decode(data)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := Encode(&buf, st); err != nil {
			t.Fatalf("encoding an accepted state: %v", err)
		}
		back, err := Decode(buf.Bytes())
		if err != nil {
			t.Fatalf("the state written from an accepted file does not load: %v\n%s", err, buf.String())
		}
		if back.Seq != st.Seq || !reflect.DeepEqual(normalize(back), normalize(st)) {
			t.Fatalf("round trip changed the state:\n%+v\nto\n%+v", st, back)
		}
	})
}

// normalize makes equal states compare equal: times in UTC, no empty maps.
func normalize(st State) State {
	out := State{Seq: st.Seq, LastToken: st.LastToken, Locks: map[string]lock.Lock{}}
	for name, l := range st.Locks {
		l = l.Clone()
		l.AcquiredAt = l.AcquiredAt.UTC()
		for i := range l.Holders {
			l.Holders[i].Since = l.Holders[i].Since.UTC()
			l.Holders[i].ExpiresAt = l.Holders[i].ExpiresAt.UTC()
		}
		out.Locks[name] = l
	}
	return out
}
