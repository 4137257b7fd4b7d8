package main

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"
)

// newTestTable returns an empty table saved to a file in a temp directory
// through d (the real disk when d is nil), and the file's path.
func newTestTable(tb testing.TB, d disk) (*table, string) {
	tb.Helper()
	if d == nil {
		d = osDisk{}
	}
	path := filepath.Join(tb.TempDir(), "locks.yml")
	store := newFileStore(path, d)
	locks, err := store.load()
	if err != nil {
		tb.Fatal(err)
	}
	return newTable(store, locks), path
}

// step is one call on the table and what it must return.
type step struct {
	op           string // "acquire", "release" or "release-all"
	key, by      string
	wantErr      error
	wantReleased int
}

func TestLockRules(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		want  Lock // the lock "l" after the last step
	}{
		{
			name:  "free lock is granted",
			steps: []step{{op: "acquire", key: "k", by: "a"}},
			want:  Lock{Key: "k", LockedBy: map[string]int{"a": 1}},
		},
		{
			name:  "same key shares, counts add up",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "b"}},
			want:  Lock{Key: "k", LockedBy: map[string]int{"a": 2, "b": 1}},
		},
		{
			name:  "other key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "other", by: "b", wantErr: errLockHeld}},
			want:  Lock{Key: "k", LockedBy: map[string]int{"a": 1}},
		},
		{
			name: "release takes back one count",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"},
				{op: "release", key: "k", by: "a", wantReleased: 1},
			},
			want: Lock{Key: "k", LockedBy: map[string]int{"a": 1}},
		},
		{
			name: "release-all takes back every count",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "b"},
				{op: "release-all", key: "k", by: "a", wantReleased: 2},
			},
			want: Lock{Key: "k", LockedBy: map[string]int{"b": 1}},
		},
		{
			name:  "last release frees the lock",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "a", wantReleased: 1}},
			want:  Lock{},
		},
		{
			name: "freed lock takes a new key",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "a", wantReleased: 1},
				{op: "acquire", key: "new", by: "b"},
			},
			want: Lock{Key: "new", LockedBy: map[string]int{"b": 1}},
		},
		{
			name:  "releasing a free lock succeeds",
			steps: []step{{op: "release", key: "k", by: "a"}},
			want:  Lock{},
		},
		{
			name:  "release with another key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "other", by: "a", wantErr: errLockHeld}},
			want:  Lock{Key: "k", LockedBy: map[string]int{"a": 1}},
		},
		{
			name:  "release-all with another key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release-all", key: "other", by: "a", wantErr: errLockHeld}},
			want:  Lock{Key: "k", LockedBy: map[string]int{"a": 1}},
		},
		{
			name:  "requestor holding nothing releases nothing",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "b"}},
			want:  Lock{Key: "k", LockedBy: map[string]int{"a": 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, path := newTestTable(t, nil)
			for i, s := range tt.steps {
				var err error
				released := 0
				switch s.op {
				case "acquire":
					_, err = tab.Acquire("l", s.key, s.by)
				case "release", "release-all":
					_, released, err = tab.Release("l", s.key, s.by, s.op == "release-all")
				default:
					t.Fatalf("unknown op %q", s.op)
				}
				if !errors.Is(err, s.wantErr) {
					t.Fatalf("step %d: %s(%q, %q) = %v; want %v", i, s.op, s.key, s.by, err, s.wantErr)
				}
				if released != s.wantReleased {
					t.Errorf("step %d: %s released %d; want %d", i, s.op, released, s.wantReleased)
				}
			}
			if got := tab.Get("l"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("lock = %+v; want %+v", got, tt.want)
			}
			// What the table shows is what a restart would load.
			onDisk, err := newFileStore(path, osDisk{}).load()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(onDisk, tab.List()) {
				t.Errorf("file holds %v; table holds %v", onDisk, tab.List())
			}
		})
	}
}

func TestReleasedLocksDisappear(t *testing.T) {
	tab, path := newTestTable(t, nil)
	for _, name := range []string{"a", "b", "c"} {
		if _, err := tab.Acquire(name, "k", "r"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.Release(name, "k", "r", false); err != nil {
			t.Fatal(err)
		}
	}
	if n := tab.Len(); n != 0 {
		t.Errorf("table holds %d locks after every release; want 0", n)
	}
	onDisk, err := newFileStore(path, osDisk{}).load()
	if err != nil || len(onDisk) != 0 {
		t.Errorf("file holds %v, %v; want no locks", onDisk, err)
	}
}

func TestFailedSaveChangesNothing(t *testing.T) {
	d := &faultyDisk{}
	tab, path := newTestTable(t, d)
	if _, err := tab.Acquire("held", "k", "a"); err != nil {
		t.Fatal(err)
	}
	before := readFile(t, path)
	want := tab.List()

	d.failAt = "sync"
	changes := []struct {
		name string
		do   func() error
	}{
		{"acquire a free lock", func() error { _, err := tab.Acquire("new", "k", "a"); return err }},
		{"acquire again", func() error { _, err := tab.Acquire("held", "k", "a"); return err }},
		{"share the lock", func() error { _, err := tab.Acquire("held", "k", "b"); return err }},
		{"release", func() error { _, _, err := tab.Release("held", "k", "a", false); return err }},
	}
	for _, c := range changes {
		err := c.do()
		if !errors.Is(err, errSave) || !errors.Is(err, errInjected) {
			t.Errorf("%s with saving failing = %v; want errSave", c.name, err)
		}
		if got := tab.List(); !reflect.DeepEqual(got, want) {
			t.Errorf("after failed %s, table = %v; want %v", c.name, got, want)
		}
		if got := readFile(t, path); string(got) != string(before) {
			t.Errorf("after failed %s, file changed:\n%s", c.name, got)
		}
	}

	d.failAt = ""
	if _, err := tab.Acquire("new", "k", "a"); err != nil {
		t.Errorf("acquire once the disk works again = %v", err)
	}
}

func TestNoOpChangesDoNotWrite(t *testing.T) {
	d := &faultyDisk{}
	tab, _ := newTestTable(t, d)
	if _, err := tab.Acquire("l", "k", "a"); err != nil {
		t.Fatal(err)
	}
	d.ops = nil
	if _, _, err := tab.Release("free", "k", "a", false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tab.Release("l", "k", "nobody", false); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Acquire("l", "other", "b"); !errors.Is(err, errLockHeld) {
		t.Fatal(err)
	}
	if len(d.ops) != 0 {
		t.Errorf("requests that changed nothing touched the disk: %v", d.ops)
	}
}

func TestListAndGetReturnCopies(t *testing.T) {
	tab, _ := newTestTable(t, nil)
	l, err := tab.Acquire("l", "k", "a")
	if err != nil {
		t.Fatal(err)
	}
	l.LockedBy["a"] = 99
	tab.Get("l").LockedBy["a"] = 99
	tab.List()["l"].LockedBy["a"] = 99
	if got := tab.Get("l").LockedBy["a"]; got != 1 {
		t.Errorf("count after callers changed their copies = %d; want 1", got)
	}
}
