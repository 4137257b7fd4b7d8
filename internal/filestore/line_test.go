package filestore

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
)

// TestAppendChangeIsEncodingJSON: the journal line of a change to locks
// and their histories is what encoding/json writes for it; a change with
// anything else is left to encoding/json.
func TestAppendChangeIsEncodingJSON(t *testing.T) {
	at := time.Date(2026, 12, 8, 2, 0, 0, 123456789, time.UTC)
	held := &lock.Lock{Key: "k<&>", Token: 7, AcquiredAt: at, Holders: []lock.Holder{{Name: "b\u2028", Hold: lock.Hold{Count: 2, Since: at, Note: "https://ci/?a=1&b=2",
		Build: &lock.Build{ID: 17, Job: "j", EndWith: []string{"aborted"}}}}, {Name: "a", Hold: lock.Hold{Count: 1}}}}
	event := lock.Event{ID: 9, Lock: "z", At: at, Kind: lock.Taken, Holder: "b", Key: "k", Token: 7, Counts: 1, Waited: lock.Duration(90 * time.Second)}
	for _, c := range []Change{
		{Seq: 1, LastToken: 0},
		{Seq: 2, Prev: 1, LastToken: 7, Locks: map[string]*lock.Lock{"z": held, "a/b": nil, "m": {Key: "x"}}, Events: []lock.Event{event, event}, LastEvent: 9},
	} {
		got, fast := appendChange(nil, c)
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(c); err != nil {
			t.Fatal(err)
		}
		if want := bytes.TrimSuffix(buf.Bytes(), []byte("\n")); !fast || !bytes.Equal(got, want) {
			t.Errorf("appendChange = %s (fast %v)\nencoding/json writes %s", got, fast, want)
		}
	}
	if _, fast := appendChange(nil, Change{Seq: 3, Remember: []idempotency.Entry{{}}}); fast {
		t.Errorf("a change that remembers an outcome was written without encoding/json")
	}
}

// BenchmarkJournalLine: a typical change (one lock taken, its event) as a
// journal line, by encoding/json and by appendChange.
func BenchmarkJournalLine(b *testing.B) {
	at := time.Date(2026, 12, 8, 2, 0, 0, 123456789, time.UTC)
	c := Change{Seq: 2, Prev: 1, LastToken: 7, LastEvent: 9,
		Locks:  map[string]*lock.Lock{"client-07": {Key: "k", Token: 7, AcquiredAt: at, Holders: []lock.Holder{{Name: "client-07", Hold: lock.Hold{Count: 1, Since: at}}}}},
		Events: []lock.Event{{ID: 9, Lock: "client-07", At: at, Kind: lock.Taken, Holder: "client-07", Key: "k", Token: 7, Counts: 1}}}
	b.Run("encoding/json", func(b *testing.B) {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		for b.Loop() {
			buf.Reset()
			_ = enc.Encode(c)
		}
	})
	b.Run("appendChange", func(b *testing.B) {
		var line []byte
		for b.Loop() {
			line, _ = appendChange(line[:0], c)
		}
	})
}
