package client_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/locker-ci/locker/client"
	"github.com/locker-ci/locker/internal/lock"
)

// fill sets every field of the struct v points to, and of the structs,
// maps and slices in it, to a value that is not zero: a field the server
// adds is then in its JSON, whether or not a test names it.
func fill(t *testing.T, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2026, 12, 5, 10, 4, 5, 0, time.UTC)))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(t, v.Field(i))
			}
		}
	case reflect.String:
		v.SetString("x-" + v.Type().String())
	case reflect.Int, reflect.Int64:
		v.SetInt(7)
	case reflect.Uint64:
		v.SetUint(9)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		key, val := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(t, key)
		fill(t, val)
		m.SetMapIndex(key, val)
		v.Set(m)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(t, s.Index(0))
		v.Set(s)
	default:
		t.Fatalf("fill does not know how to fill a %s", v.Type())
	}
}

// TestTheClientReadsEveryFieldTheServerWrites: the client's types are its
// own, so that it exports nothing internal; this keeps them in step with
// the server's. A lock and an event with every field set, as the server
// writes them, read by the client and written again, give the same JSON.
func TestTheClientReadsEveryFieldTheServerWrites(t *testing.T) {
	var view lock.View
	fill(t, reflect.ValueOf(&view).Elem())
	sent, err := json.Marshal(view)
	if err != nil {
		t.Fatal(err)
	}
	var l client.Lock
	if err := json.Unmarshal(sent, &l); err != nil {
		t.Fatal(err)
	}
	again, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(sent) {
		t.Errorf("a lock the server wrote as\n%s\nthe client reads as\n%s", sent, again)
	}

	var e lock.Event
	fill(t, reflect.ValueOf(&e).Elem())
	e.Waited, e.Held = lock.Duration(90*time.Second), lock.Duration(2*time.Hour)
	sent, err = json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var got client.Event
	if err := json.Unmarshal(sent, &got); err != nil {
		t.Fatal(err)
	}
	want := client.Event{ID: e.ID, Lock: e.Lock, At: e.At, Kind: client.EventKind(e.Kind), Holder: e.Holder, Key: e.Key,
		Token: e.Token, Counts: e.Counts, Note: e.Note, Waited: 90 * time.Second, Held: 2 * time.Hour, By: e.By, Reason: e.Reason, Credential: e.Credential, Raw: sent}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("an event the server wrote as\n%s\nthe client reads as\n%+v", sent, got)
	}
	var keys map[string]any
	if err := json.Unmarshal(sent, &keys); err != nil {
		t.Fatal(err)
	}
	if fields := reflect.TypeFor[client.Event]().NumField() - 1; len(keys) != fields { // all but Raw
		t.Errorf("the server writes an event's %d fields, %v; client.Event reads %d", len(keys), keys, fields)
	}
}
