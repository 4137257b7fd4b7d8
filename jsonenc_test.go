package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// The API's reply shape, as encoding/json writes it: the reference that
// viewFields is checked against, and what tests decode replies into.

// lockView is one lock as the API shows it. The original clients read key
// and locked_by with jq; both keep their shape.
type lockView struct {
	Name       string                `json:"name"`
	Key        string                `json:"key"`
	LockedBy   map[string]int        `json:"locked_by"`
	Token      uint64                `json:"token"`
	AcquiredAt time.Time             `json:"acquired_at,omitzero"`
	Holders    map[string]holderView `json:"holders"`
	Waiting    []waitingView         `json:"waiting"`
}

type holderView struct {
	Count     int       `json:"count"`
	Since     time.Time `json:"since,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Note      string    `json:"note,omitempty"`
}

type waitingView struct {
	Key       string    `json:"key"`
	Requestor string    `json:"requestor"`
	Since     time.Time `json:"since"`
}

func viewOf(name string, s Snapshot) lockView {
	v := lockView{
		Name:       name,
		Key:        s.Key,
		LockedBy:   s.lockedBy(),
		Token:      s.Token,
		AcquiredAt: s.AcquiredAt,
		Holders:    make(map[string]holderView, len(s.Holders)),
		Waiting:    make([]waitingView, len(s.Waiting)),
	}
	for _, h := range s.Holders {
		v.Holders[h.Name] = holderView{Count: h.Count, Since: h.Since, ExpiresAt: h.ExpiresAt, Note: h.Note}
	}
	for i, w := range s.Waiting {
		v.Waiting[i] = waitingView(w)
	}
	return v
}

// lockReply answers a change: the lock as it now is, and a sentence.
type lockReply struct {
	lockView
	Response string `json:"response"`
}

// encodingJSON is what encoding/json writes for v, HTML escaping off.
func encodingJSON(tb testing.TB, v any) string {
	tb.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// oddStrings are strings that JSON escaping has to get right.
var oddStrings = []string{
	"", "a", "prod-cf", "a/b", "ü", "日本", "\u2028", "\u2029", "\x00", "\x1f", "\x7f", "\xff", "a\xc3",
	`"quoted"`, `back\slash`, "<&>", "tab\there", "line\nbreak", "\r\b\f", "https://ci.example.com/builds/1?x=1&y=2",
}

// randomLock returns a lock with 0-3 holders, each field from oddStrings,
// times zero or not.
func randomLock(r *rand.Rand) Lock {
	pick := func() string { return oddStrings[r.IntN(len(oddStrings))] }
	when := func() time.Time {
		if r.IntN(3) == 0 {
			return time.Time{}
		}
		return time.Date(2026, 11, 25, r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(3)*r.IntN(1e9), time.UTC)
	}
	l := Lock{Key: pick(), AcquiredAt: when()}
	if r.IntN(4) > 0 {
		l.Token = r.Uint64N(1 << 40)
	}
	for range r.IntN(4) {
		l.setHolder(Holder{Name: pick(), Count: r.IntN(5), Since: when(), ExpiresAt: when(), Note: pick()})
	}
	return l
}

func TestReplyIsEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		name := oddStrings[r.IntN(len(oddStrings))]
		s := Snapshot{Lock: randomLock(r)}
		for range r.IntN(3) {
			s.Waiting = append(s.Waiting, Waiting{Key: oddStrings[r.IntN(len(oddStrings))],
				Requestor: oddStrings[r.IntN(len(oddStrings))], Since: time.Unix(r.Int64N(2e9), r.Int64N(1e9)).UTC()})
		}
		msg := oddStrings[1+r.IntN(len(oddStrings)-1)]

		j := jsonBuf{}
		j.raw("{")
		j.viewFields(name, s)
		j.raw("}")
		if want := encodingJSON(t, viewOf(name, s)); string(j.b) != want || j.err != nil {
			t.Fatalf("view of %q %+v:\n got %s (%v)\nwant %s", name, s, j.b, j.err, want)
		}
		j = jsonBuf{}
		j.raw("{")
		j.viewFields(name, s)
		j.raw(`,"response":`)
		j.str(msg)
		j.raw("}")
		if want := encodingJSON(t, lockReply{lockView: viewOf(name, s), Response: msg}); string(j.b) != want {
			t.Fatalf("reply for %q %+v:\n got %s\nwant %s", name, s, j.b, want)
		}
	}
}

func TestJournalRecordIsEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		rec := record{Seq: r.Uint64(), LastToken: r.Uint64N(1 << 50), Locks: map[string]*Lock{}}
		for range 1 + r.IntN(3) {
			l := randomLock(r)
			if r.IntN(4) == 0 {
				rec.Locks[oddStrings[r.IntN(len(oddStrings))]] = nil // freed
			} else {
				rec.Locks[oddStrings[r.IntN(len(oddStrings))]] = &l
			}
		}
		line, err := appendRecord([]byte("before\n"), rec)
		if err != nil {
			t.Fatal(err)
		}
		line, ok := bytes.CutPrefix(line, []byte("before\n"))
		if !ok {
			t.Fatalf("appendRecord changed what buf held: %q", line)
		}
		if want := encodingJSON(t, rec); string(line[9:len(line)-1]) != want {
			t.Fatalf("record %+v:\n got %s\nwant %s", rec, line[9:], want)
		}
		back, err := parseRecord(line[:len(line)-1])
		if err != nil {
			t.Fatalf("the line does not read back: %v\n%s", err, line)
		}
		// Invalid UTF-8 reads back as U+FFFD, as with encoding/json; the
		// server only keeps valid UTF-8.
		if got, want := encodingJSON(t, back), encodingJSON(t, rec); got != want && !strings.Contains(want, `\ufffd`) {
			t.Fatalf("read back as %s, wrote %s", got, want)
		}
	}
}

// A time that JSON cannot hold is refused, as json.Marshal refuses it, and
// nothing is appended: the change is answered 500 instead of writing a
// journal line that would not read back.
func TestJSONRefusesTimesOutsideRFC3339(t *testing.T) {
	far := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := record{Seq: 1, LastToken: 1, Locks: map[string]*Lock{"x": {Key: "k", Token: 1, AcquiredAt: far, Holders: []Holder{{Name: "k", Count: 1}}}}}
	if _, err := json.Marshal(rec); err == nil {
		t.Fatal("json.Marshal took the year 10000; the test's premise is wrong")
	}
	buf, err := appendRecord([]byte("kept"), rec)
	if !errors.Is(err, errJSONTime) || string(buf) != "kept" {
		t.Fatalf("appendRecord = %q, %v; want %q and errJSONTime", buf, err, "kept")
	}
}

func FuzzJSONString(f *testing.F) {
	for _, s := range oddStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		j := jsonBuf{}
		j.str(s)
		if want := encodingJSON(t, s); string(j.b) != want {
			t.Fatalf("str(%q) = %s; encoding/json writes %s", s, j.b, want)
		}
	})
}
