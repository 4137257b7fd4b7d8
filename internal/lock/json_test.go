package lock

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// encodingJSON is what encoding/json writes for v, HTML escaping off, as
// the server's replies are written.
func encodingJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		tb.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// oddStrings are strings whose JSON takes care: escapes, invalid UTF-8,
// HTML, line separators.
var oddStrings = []string{"", "plain", `q"uote`, `back\slash`, "\x00\x01\b\f\n\r\t\x1f\x7f", "<a href='x'>&amp;</a>",
	"\u2028\u2029", "\xff\xfe", "é ü 漢字 🔒", "half \xe2\x82", "https://ci.example.com/builds/42?x=1&y=2"}

func TestAppendStringIsEncodingJSON(t *testing.T) {
	for _, s := range oddStrings {
		if got, want := AppendString(nil, s), encodingJSON(t, s); !bytes.Equal(got, want) {
			t.Errorf("AppendString(%q) = %s; encoding/json writes %s", s, got, want)
		}
	}
}

// TestAppendViewIsEncodingJSON: for random locks and queues, with odd
// strings and zero or set times, AppendView writes what encoding/json
// writes for the View.
func TestAppendViewIsEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	str := func() string { return oddStrings[rng.IntN(len(oddStrings))] }
	at := func() time.Time {
		if rng.IntN(3) == 0 {
			return time.Time{}
		}
		return time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC).Add(time.Duration(rng.Int64N(int64(time.Hour))))
	}
	for range 2000 {
		l := Lock{Key: str(), Token: rng.Uint64N(1 << 40), AcquiredAt: at(), Limit: rng.IntN(3)}
		for i := range rng.IntN(4) {
			h := Holder{Name: string(rune('a'+i)) + str(), Hold: Hold{Count: rng.IntN(5) + 1, Since: at(), ExpiresAt: at(), Note: str()}}
			if rng.IntN(3) == 0 {
				h.Build = &Build{ID: rng.Int64N(1 << 40), Name: str(), Job: str(), Pipeline: str(), Team: str(), URL: str(), EndWith: Outcomes[:1+rng.IntN(len(Outcomes))]}
			}
			l.Holders = append(l.Holders, h)
		}
		var queue []Waiting
		for range rng.IntN(3) {
			queue = append(queue, Waiting{Key: str(), Requestor: str(), Since: at()})
		}
		name := str()
		if got, want := AppendView(nil, name, l, queue), encodingJSON(t, l.View(name, queue)); !bytes.Equal(got, want) {
			t.Fatalf("AppendView = %s\nencoding/json writes %s", got, want)
		}
	}
}

// TestAppendLockAndEventAreEncodingJSON: the journal's appenders write
// what encoding/json writes (HTML escaping off), for random locks and
// events with odd strings.
func TestAppendLockAndEventAreEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	str := func() string { return oddStrings[rng.IntN(len(oddStrings))] }
	at := func() time.Time {
		if rng.IntN(3) == 0 {
			return time.Time{}
		}
		return time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC).Add(time.Duration(rng.Int64N(int64(time.Hour))))
	}
	encode := func(v any) []byte {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	}
	if got, want := AppendLock(nil, nil), encode((*Lock)(nil)); !bytes.Equal(got, want) {
		t.Fatalf("AppendLock(nil) = %s; encoding/json writes %s", got, want)
	}
	for range 2000 {
		l := &Lock{Key: str(), Token: rng.Uint64N(1 << 40), AcquiredAt: at(), Limit: rng.IntN(3)}
		for i := range rng.IntN(4) {
			h := Holder{Name: string(rune('a'+i)) + str(), Hold: Hold{Count: rng.IntN(5) + 1, Since: at(), ExpiresAt: at(), Note: str()}}
			if rng.IntN(3) == 0 {
				h.Build = &Build{ID: rng.Int64N(1 << 40), Name: str(), URL: str(), EndWith: Outcomes[:1+rng.IntN(len(Outcomes))]}
			}
			l.Holders = append(l.Holders, h)
		}
		if got, want := AppendLock(nil, l), encode(l); !bytes.Equal(got, want) {
			t.Fatalf("AppendLock = %s\nencoding/json writes %s", got, want)
		}
		e := Event{ID: rng.Uint64N(1 << 50), Lock: str(), At: at(), Kind: Kind(str()), Holder: str(), Key: str(), Token: rng.Uint64N(3),
			Counts: rng.IntN(4), Note: str(), Waited: Duration(rng.Int64N(3) * rng.Int64N(int64(time.Hour))), Held: Duration(rng.Int64N(2) * rng.Int64N(int64(48*time.Hour))),
			By: str(), Reason: str(), Credential: str()}
		if rng.IntN(2) == 0 {
			e.Note, e.By, e.Reason, e.Credential = "", "", "", ""
		}
		if got, want := AppendEvent(nil, e), encode(e); !bytes.Equal(got, want) {
			t.Fatalf("AppendEvent = %s\nencoding/json writes %s", got, want)
		}
	}
}
