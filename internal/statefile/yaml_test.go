package statefile

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"gopkg.in/yaml.v2"

	"github.com/locker-ci/locker/internal/idempotency"
	"github.com/locker-ci/locker/internal/lock"
)

// fill sets every field of the struct v points to, by reflection, to a
// random value, so that a field added to lock.Lock or lock.Hold is filled
// without this test being told of it.
func fill(r *rand.Rand, v reflect.Value) {
	for i := range v.NumField() {
		f := v.Field(i)
		switch {
		case f.Type() == reflect.TypeFor[time.Time]():
			f.Set(reflect.ValueOf(time.Unix(r.Int64N(4e9), r.Int64N(1e9)).UTC()))
		case f.Kind() == reflect.String:
			f.SetString(randomString(r))
		case f.Kind() == reflect.Int:
			f.SetInt(1 + r.Int64N(5))
		case f.Kind() == reflect.Int64: // a lock.Duration, to the millisecond
			f.SetInt(r.Int64N(1e6) * int64(time.Millisecond))
		case f.Kind() == reflect.Uint64:
			f.SetUint(1 + r.Uint64N(1000))
		case f.Kind() == reflect.Struct:
			fill(r, f)
		case f.Type() == reflect.TypeFor[*lock.Build]():
			if r.IntN(2) == 0 {
				b := new(lock.Build)
				fill(r, reflect.ValueOf(b).Elem())
				f.Set(reflect.ValueOf(b))
			}
		case f.Type() == reflect.TypeFor[[]string](): // a build's outcomes
			if n := r.IntN(len(lock.Outcomes) + 1); n > 0 {
				f.Set(reflect.ValueOf(lock.Outcomes[:n]))
			}
		case f.Type() == reflect.TypeFor[[]byte]():
			f.SetBytes([]byte(randomString(r)))
		case f.Kind() == reflect.Slice && f.Type() == reflect.TypeFor[[]lock.Holder]():
			// Holders: filled by randomLock, sorted and unique.
		default:
			panic(fmt.Sprintf("fill: add a case for field %s (%s)", v.Type().Field(i).Name, f.Type()))
		}
	}
}

// randomString returns a name with YAML's awkward characters now and then.
func randomString(r *rand.Rand) string {
	const alphabet = "abcXYZ09 -_./:#{}[]\"'\\\n\tü✓&<>\u2028"
	b := make([]rune, 1+r.IntN(12))
	letters := []rune(alphabet)
	for i := range b {
		b[i] = letters[r.IntN(len(letters))]
	}
	return string(b)
}

// randomLock returns a lock with every field set, some holders' details
// left zero.
func randomLock(r *rand.Rand) lock.Lock {
	var l lock.Lock
	fill(r, reflect.ValueOf(&l).Elem())
	for range 1 + r.IntN(3) {
		var h lock.Holder
		fill(r, reflect.ValueOf(&h).Elem())
		if r.IntN(3) == 0 {
			h.Hold = lock.Hold{Count: h.Count}
		}
		l.SetHolder(h)
	}
	return l
}

// TestEncodeIsYAML checks, for random tables with every field of a lock
// set, that yaml.v2 reads Encode's output as the lock.Entry values the
// types define, and that Decode gives back the table.
func TestEncodeIsYAML(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		st := State{Seq: uint64(i), Locks: map[string]lock.Lock{}}
		for range r.IntN(4) {
			l := randomLock(r)
			st.Locks[randomString(r)] = l
			st.LastToken = max(st.LastToken, l.Token)
		}
		for range r.IntN(3) {
			var e idempotency.Entry
			fill(r, reflect.ValueOf(&e).Elem())
			st.Requests = append(st.Requests, e)
		}
		for range r.IntN(4) {
			var e lock.Event
			fill(r, reflect.ValueOf(&e).Elem())
			st.LastEvent += e.ID
			e.ID = st.LastEvent
			st.History = append(st.History, e)
		}
		var buf bytes.Buffer
		if err := Encode(&buf, st); err != nil {
			t.Fatal(err)
		}
		if content, _, _ := unseal(buf.Bytes()); !parsesFast(content) {
			t.Fatalf("the fast parser refused Encode's output:\n%s", buf.String())
		}
		var got document
		if err := yaml.UnmarshalStrict(buf.Bytes(), &got); err != nil {
			t.Fatalf("yaml.v2 cannot read Encode's output: %v\n%s", err, buf.String())
		}
		want := document{Version: Version, Seq: st.Seq, LastToken: st.LastToken, Locks: map[string]lock.Entry{}, Requests: st.Requests,
			LastEvent: st.LastEvent, History: st.History}
		for name, l := range st.Locks {
			want.Locks[name] = l.Entry()
		}
		if len(got.Locks) == 0 {
			got.Locks = map[string]lock.Entry{}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("yaml.v2 read\n%+v\nfrom\n%s\nwant\n%+v", got, buf.String(), want)
		}
		back, err := Decode(buf.Bytes())
		st.Sealed = true
		if err != nil || !reflect.DeepEqual(back, st) {
			t.Fatalf("Decode(Encode(st)) = %+v, %v; want %+v", back, err, st)
		}
	}
}

// TestEntryHasEveryLockField checks that the state file keeps every field
// of a lock: lock.Entry has a field of the same name for each one.
func TestEntryHasEveryLockField(t *testing.T) {
	entry := reflect.TypeFor[lock.Entry]()
	for f := range reflect.TypeFor[lock.Lock]().Fields() {
		if _, ok := entry.FieldByName(f.Name); !ok {
			t.Errorf("lock.Lock has %s, which lock.Entry (the state file) does not keep", f.Name)
		}
	}
}

// parsesFast reports whether the fast parser reads content.
func parsesFast(content []byte) bool {
	_, ok := parse(content)
	return ok
}
