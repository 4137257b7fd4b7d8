package statefile

import (
	"bytes"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v2"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/lock"
)

func TestStateRoundTrip(t *testing.T) {
	locks := map[string]lock.Lock{
		"prod":             lockOf("prod-cf", map[string]int{"prod-cf": 2, "node-a": 1}),
		"a/b":              lockOf("k", map[string]int{"k": 1}),
		"déploy vers prod": lockOf("clé", map[string]int{"qui: moi": 3}),
		"line\nbreak\x00":  lockOf("- not a list", map[string]int{"{}": 1}),
		"version":          lockOf("true", map[string]int{"null": 1, "123": 4}),
		"locks":            lockOf("~", map[string]int{"#": 1}),
	}
	at := time.Date(2026, 11, 25, 9, 30, 15, 123456789, time.UTC)
	locks["leased"] = lock.Lock{Key: "k", Token: 41, AcquiredAt: at, Holders: []lock.Holder{
		{Name: "a", Hold: lock.Hold{Count: 2, Since: at, ExpiresAt: at.Add(time.Hour), Note: "https://ci.example.com/builds/42?x=1&y=2"}},
		{Name: "b", Hold: lock.Hold{Count: 1}},
	}}
	st := State{Seq: 1234, LastToken: 42, Locks: locks, Pools: map[string]lock.Pool{
		"staging":     {Members: []string{"envs/staging-1", "staging 2: b"}, Claimed: map[string]time.Time{"staging 2: b": at}},
		"never used":  {Members: []string{"x"}},
		"pool #3 \"q": {Members: []string{"a", "b", "c"}, Claimed: map[string]time.Time{"a": at, "c": at.Add(time.Second)}},
	}, Credentials: testCredentials(at)}
	var buf bytes.Buffer
	if err := Encode(&buf, st); err != nil {
		t.Fatal(err)
	}
	got, err := Decode(buf.Bytes())
	if err != nil {
		t.Fatalf("Decode(Encode(locks)) = %v\nfile:\n%s", err, buf.String())
	}
	st.Sealed = true
	if !reflect.DeepEqual(got, st) {
		t.Errorf("round trip = %+v; want %+v", got, st)
	}
}

// TestParseAgreesWithYAML checks that the fast parser reads what the
// encoder writes, and reads it as yaml.v2 does.
func TestParseAgreesWithYAML(t *testing.T) {
	at := time.Date(2026, 11, 25, 9, 30, 15, 120000000, time.UTC)
	states := []State{
		{},
		{LastToken: 7, Locks: map[string]lock.Lock{"prod": lockOf("prod-cf", map[string]int{"prod-cf": 2, "node-a": 1})}},
		{LastToken: 7, Locks: map[string]lock.Lock{}, Pools: map[string]lock.Pool{
			"staging": {Members: []string{"s1", "s2"}, Claimed: map[string]time.Time{"s2": at}},
			"yes":     {Members: []string{"no", "true"}},
		}},
		{LastToken: 9, Locks: map[string]lock.Lock{
			"a/b: c #d":       {Key: "yes", Token: 3, AcquiredAt: at, Holders: []lock.Holder{{Name: "123", Hold: lock.Hold{Count: 1, Since: at, Note: "line\nbreak \"quoted\" ü"}}}},
			"line\nbreak\x00": {Key: "- not a list", Holders: []lock.Holder{{Name: "{}", Hold: lock.Hold{Count: 4, ExpiresAt: at.Add(time.Hour)}}}},
			"plain.name/ok-1": {Key: "k", Token: 9, AcquiredAt: at, Holders: []lock.Holder{{Name: "a", Hold: lock.Hold{Count: 1}}, {Name: "b", Hold: lock.Hold{Count: 2, Since: at, ExpiresAt: at, Note: "n",
				Build: &lock.Build{ID: 17, Name: "3", Job: "hold: \"it\"", Pipeline: "p", Team: "main", URL: "https://ci.example.com/builds/17", EndWith: []string{"aborted", "errored"}}}}}},
		}},
		{LastToken: 1, Locks: map[string]lock.Lock{}, Credentials: testCredentials(at)},
		{LastToken: 3, Locks: map[string]lock.Lock{}, LastEvent: 12, History: []lock.Event{
			{ID: 4, Lock: "prod", At: at, Kind: lock.Taken, Holder: "a", Key: "k", Token: 3, Counts: 1, Note: "<b>&\n\"ü\"", Waited: lock.Duration(90 * time.Second)},
			{ID: 12, Lock: "a/b: c #d", At: at, Kind: lock.Forced, Holder: "- x", Key: "yes", Counts: 2, Held: lock.Duration(time.Hour), By: "admin from 10.0.0.1"},
		}},
	}
	for i, st := range states {
		var buf bytes.Buffer
		st.Seq = uint64(i)
		if err := Encode(&buf, st); err != nil {
			t.Fatal(err)
		}
		content, sealed, err := unseal(buf.Bytes())
		if err != nil || !sealed {
			t.Fatalf("state %d: unseal = %v, %v; want the encoder's seal", i, sealed, err)
		}
		fast, ok := parse(content)
		if !ok {
			t.Fatalf("state %d: the fast parser refused the encoder's output:\n%s", i, buf.String())
		}
		// It reads locks in the table's shape; yaml.v2, in the file's.
		fast.Locks = map[string]lock.Entry{}
		for _, f := range fast.fast {
			fast.Locks[f.name] = f.lock.Entry()
		}
		fast.fast = nil
		var slow document
		if err := yaml.UnmarshalStrict(buf.Bytes(), &slow); err != nil {
			t.Fatal(err)
		}
		if len(slow.Locks) == 0 {
			slow.Locks = map[string]lock.Entry{}
		}
		slices.SortFunc(fast.Credentials, func(a, b access.Credential) int { return strings.Compare(a.Name, b.Name) })
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("state %d: fast parser read\n%+v\nyaml.v2 read\n%+v", i, fast, slow)
		}
	}
	// Anything else goes to yaml.v2.
	for _, other := range []string{
		"version: 1\nlocks:\n  prod:\n    key: k\n    locked_by: {a: 1}\n",
		"version: 1\nseq: 0\nlast_token: 0\nlocks:\n  prod:\n     key: k\n",
		"version: 1\nseq: 0\nlast_token: 0\nlocks:\n  prod:\n    key: k\n    locked_by:\n      a: 1\n  prod:\n    key: k\n    locked_by:\n      a: 1\n",
	} {
		if _, ok := parse([]byte(other)); ok {
			t.Errorf("the fast parser took a file it does not own:\n%s", other)
		}
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    map[string]lock.Lock
		wantErr string // "" when the file is valid
	}{
		{name: "empty", data: "", want: map[string]lock.Lock{}},
		{name: "white space", data: "\n  \n", want: map[string]lock.Lock{}},
		{name: "original empty", data: "{}", want: map[string]lock.Lock{}},
		{
			name: "original JSON",
			data: `{"prod":{"locked_by":{"prod-cf":2,"node-a":1},"key":"prod-cf"},"staging":{"locked_by":{"x":1},"key":"k"}}`,
			want: map[string]lock.Lock{
				"prod":    lockOf("prod-cf", map[string]int{"prod-cf": 2, "node-a": 1}),
				"staging": lockOf("k", map[string]int{"x": 1}),
			},
		},
		{
			name: "original JSON drops released entries and zero counts",
			data: `{"old":{"locked_by":{"x":0},"key":""},"prod":{"locked_by":{"a":0,"b":1},"key":"k"},"gone":{"locked_by":{},"key":"k"}}`,
			want: map[string]lock.Lock{"prod": lockOf("k", map[string]int{"b": 1})},
		},
		{
			name: "YAML",
			data: "version: 1\nlocks:\n  prod:\n    key: prod-cf\n    locked_by:\n      prod-cf: 2\n",
			want: map[string]lock.Lock{"prod": lockOf("prod-cf", map[string]int{"prod-cf": 2})},
		},
		{name: "YAML without locks", data: "version: 1\n", want: map[string]lock.Lock{}},
		{name: "wrong version", data: "version: 7\nlocks: {}\n", wantErr: `"version: 7" is not a format this locker reads`},
		{name: "a credential's secret, not its hash", data: "version: 1\nlocks: {}\ncredentials:\n  - {name: ci, hash: lkr_secret, grants: [{role: lock, prefix: \"\"}]}\n", wantErr: `credential "ci": a credential's hash is "sha256:" and 64 hex digits`},
		{name: "a credential's unknown role", data: "version: 1\nlocks: {}\ncredentials:\n  - {name: ci, hash: x, grants: [{role: write, prefix: a/}]}\n", wantErr: `"write" is not a role`},
		{name: "a credential's misspelt field", data: "version: 1\nlocks: {}\ncredentials:\n  - {name: ci, hsah: x}\n", wantErr: "hsah is not a field of a credential"},
		{name: "no version", data: "locks: {}\n", wantErr: `"version: 0" is not a format`},
		{name: "unknown field", data: "version: 1\nlocks:\n  p:\n    key: k\n    lokced_by: {a: 1}\n", wantErr: "lokced_by"},
		{name: "legacy shape written as YAML", data: "prod:\n  key: k\n  locked_by: {a: 1}\n", wantErr: "not a valid Locker state file"},
		{name: "invalid YAML", data: "version: 1\nlocks: [\n", wantErr: "not a valid Locker state file"},
		{name: "truncated JSON", data: `{"prod":{"locked_by":{"a":1},"ke`, wantErr: "not valid JSON"},
		{name: "JSON with trailing data", data: `{"prod":{"locked_by":{"a":1},"key":"k"}} {}`, wantErr: "data after the closing brace"},
		{name: "JSON unknown field", data: `{"prod":{"locked_by":{"a":1},"key":"k","owner":"x"}}`, wantErr: "owner"},
		{name: "negative count", data: `{"prod":{"locked_by":{"a":-1},"key":"k"}}`, wantErr: `lock "prod": holder "a" has a negative count (-1)`},
		{name: "holder without key", data: `{"prod":{"locked_by":{"a":1},"key":""}}`, wantErr: `lock "prod": held by a (1) but has no key`},
		{name: "empty holder name", data: `{"prod":{"locked_by":{"":1},"key":"k"}}`, wantErr: "a holder has an empty name"},
		{name: "empty lock name", data: `{"":{"locked_by":{"a":1},"key":"k"}}`, wantErr: "a lock has an empty name"},
		{name: "count not a number", data: "version: 1\nlocks:\n  p:\n    key: k\n    locked_by: {a: many}\n", wantErr: "not a valid Locker state file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.data))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode = %v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got.Locks, tt.want) {
				t.Errorf("Decode = %v; want %v", got.Locks, tt.want)
			}
		})
	}
}

// lockOf returns a lock held with key by requestors with the given counts.
func lockOf(key string, counts map[string]int) lock.Lock {
	var l lock.Lock
	for _, r := range slices.Sorted(maps.Keys(counts)) {
		l.Holders = append(l.Holders, lock.Holder{Name: r, Hold: lock.Hold{Count: counts[r]}})
	}
	l.Key = key
	return l
}

// TestAnEditedFileIsRefusedUntilItsSealIsDeleted: a hand edit that hands
// a token out again (last_token lowered) is caught by the seal; deleting
// the seal line says the edit is meant; a file of an older Locker, which
// wrote no seal, reads as it is.
func TestAnEditedFileIsRefusedUntilItsSealIsDeleted(t *testing.T) {
	var buf bytes.Buffer
	st := State{Seq: 9, LastToken: 4, Locks: map[string]lock.Lock{"prod": {Key: "k", Token: 3, Holders: []lock.Holder{{Name: "a", Hold: lock.Hold{Count: 1}}}}}}
	if err := Encode(&buf, st); err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(buf.String(), "last_token: 4\n", "last_token: 3\n", 1)
	if edited == buf.String() {
		t.Fatalf("the test's edit did not apply to\n%s", buf.String())
	}
	if _, err := Decode([]byte(edited)); !errors.Is(err, ErrEdited) || !strings.Contains(err.Error(), "delete that last line") {
		t.Fatalf("Decode(edited file) = %v; want ErrEdited, saying how to accept the edit", err)
	}

	lines := strings.SplitAfter(strings.TrimSuffix(edited, "\n"), "\n")
	unsealed := strings.Join(lines[:len(lines)-1], "")
	if !strings.HasPrefix(lines[len(lines)-1], sealPrefix) {
		t.Fatalf("the last line is %q; want the seal", lines[len(lines)-1])
	}
	got, err := Decode([]byte(unsealed))
	if err != nil || got.Sealed || got.LastToken != 3 {
		t.Fatalf("Decode(edited, seal deleted) = %+v, %v; want last_token 3, not sealed", got, err)
	}

	// Encode's output, sealed, with a byte changed in a lock and none in
	// the numbers: still caught.
	if _, err := Decode(bytes.Replace(buf.Bytes(), []byte("key: k"), []byte("key: K"), 1)); !errors.Is(err, ErrEdited) {
		t.Errorf("Decode(file with a key changed) = %v; want ErrEdited", err)
	}
}

// testCredentials are credentials with every field filled, names that
// need quoting in YAML, and several grants.
func testCredentials(at time.Time) map[string]access.Credential {
	_, hash := access.NewSecret()
	return map[string]access.Credential{
		"team-a-ci": {Name: "team-a-ci", Hash: hash, Grants: []access.Grant{{Role: access.Lock, Prefix: "team-a/"}, {Role: access.Read, Prefix: ""}},
			CreatedBy: "admin", CreatedAt: at, ExpiresAt: at.Add(90 * 24 * time.Hour)},
		"ops #1 \"q\" - {x}": {Name: "ops #1 \"q\" - {x}", Hash: hash, Grants: []access.Grant{{Role: access.Operate, Prefix: "- x"}}},
	}
}

// TestHandEditedFilesReadAsBefore: a file in another order than
// Encode's, or with a holder whose count is zero, is not the fast
// parser's: yaml.v2 reads it, to the same table.
func TestHandEditedFilesReadAsBefore(t *testing.T) {
	want := map[string]lock.Lock{
		"a": {Key: "k", Token: 1, Holders: []lock.Holder{{Name: "x", Hold: lock.Hold{Count: 1, Note: "n"}}, {Name: "y", Hold: lock.Hold{Count: 2}}}},
		"b": {Key: "k", Token: 2, Holders: []lock.Holder{{Name: "z", Hold: lock.Hold{Count: 1}}}},
	}
	for _, file := range []string{
		// In Encode's order: the fast parser's.
		"version: 1\nseq: 1\nlast_token: 2\nlocks:\n  a:\n    key: k\n    locked_by:\n      x: 1\n      y: 2\n    token: 1\n    holders:\n      x:\n        note: n\n  b:\n    key: k\n    locked_by:\n      z: 1\n    token: 2\n",
		// Locks and holders out of order, a released holder left behind.
		"version: 1\nseq: 1\nlast_token: 2\nlocks:\n  b:\n    key: k\n    locked_by:\n      z: 1\n      w: 0\n    token: 2\n  a:\n    key: k\n    locked_by:\n      y: 2\n      x: 1\n    token: 1\n    holders:\n      x:\n        note: n\n",
	} {
		st, err := Decode([]byte(file))
		if err != nil || !reflect.DeepEqual(st.Locks, want) {
			t.Errorf("Decode(%q) = %+v, %v; want %+v", file, st.Locks, err, want)
		}
	}
}
