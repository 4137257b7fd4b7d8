package engine_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/testutil"
)

func TestLockRules(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		want  brief // the lock "l" after the last step
	}{
		{
			name:  "free lock is granted",
			steps: []step{{op: "acquire", key: "k", by: "a"}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name:  "same key shares, counts add up",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "b"}},
			want:  brief{"k", map[string]int{"a": 2, "b": 1}},
		},
		{
			name:  "other key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "other", by: "b", wantErr: engine.ErrHeld}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name:  "a holder's other key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "other", by: "a", wantErr: engine.ErrHeld}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name: "release takes back one count",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"},
				{op: "release", key: "k", by: "a", wantReleased: 1},
			},
			want: brief{"k", map[string]int{"a": 1}},
		},
		{
			name: "release-all takes back every count",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "a"}, {op: "acquire", key: "k", by: "b"},
				{op: "release-all", key: "k", by: "a", wantReleased: 2},
			},
			want: brief{"k", map[string]int{"b": 1}},
		},
		{
			name:  "last release frees the lock",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "a", wantReleased: 1}},
			want:  brief{},
		},
		{
			name: "freed lock takes a new key",
			steps: []step{
				{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "a", wantReleased: 1},
				{op: "acquire", key: "new", by: "b"},
			},
			want: brief{"new", map[string]int{"b": 1}},
		},
		{
			name:  "releasing a free lock succeeds",
			steps: []step{{op: "release", key: "k", by: "a"}},
			want:  brief{},
		},
		{
			name:  "release with another key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "other", by: "a", wantErr: engine.ErrHeld}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name:  "release-all with another key is refused",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release-all", key: "other", by: "a", wantErr: engine.ErrHeld}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
		{
			name:  "requestor holding nothing releases nothing",
			steps: []step{{op: "acquire", key: "k", by: "a"}, {op: "release", key: "k", by: "b"}},
			want:  brief{"k", map[string]int{"a": 1}},
		},
	}
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tab := open(t)
				for i, s := range tt.steps {
					var err error
					released := 0
					switch s.op {
					case "acquire":
						_, err = enginetest.Acquire(tab, "l", s.key, s.by)
					case "release", "release-all":
						_, released, err = tab.Release(context.Background(), "l", s.key, s.by, s.op == "release-all", nil)
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
				if got := briefOf(enginetest.Get(t, tab, "l").Lock); !reflect.DeepEqual(got, tt.want) {
					t.Errorf("lock = %+v; want %+v", got, tt.want)
				}
			})
		}
	})
}

func TestReleasedLocksDisappear(t *testing.T) {
	tab := enginetest.File(t, nil)
	path := tab.Path
	for _, name := range []string{"a", "b", "c"} {
		if _, err := enginetest.Acquire(tab, name, "k", "r"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.Release(context.Background(), name, "k", "r", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := tab.Len(); n != 0 {
		t.Errorf("table holds %d locks after every release; want 0", n)
	}
	if n := enginetest.Load(t, path, nil, time.Now).Len(); n != 0 {
		t.Errorf("file holds %d locks; want none", n)
	}
}

func TestFailedSaveChangesNothing(t *testing.T) {
	d := &faults.Faulty{}
	tab := enginetest.File(t, d)
	path := tab.Path
	if _, err := enginetest.Acquire(tab, "held", "k", "a"); err != nil {
		t.Fatal(err)
	}
	before := testutil.OnDisk(t, path)
	want := enginetest.List(t, tab)

	d.Fail("jwrite")
	changes := []struct {
		name string
		do   func() error
	}{
		{"acquire a free lock", func() error { _, err := enginetest.Acquire(tab, "new", "k", "a"); return err }},
		{"acquire again", func() error { _, err := enginetest.Acquire(tab, "held", "k", "a"); return err }},
		{"share the lock", func() error { _, err := enginetest.Acquire(tab, "held", "k", "b"); return err }},
		{"release", func() error { _, _, err := tab.Release(context.Background(), "held", "k", "a", false, nil); return err }},
		{"renew", func() error {
			_, err := tab.Renew(context.Background(), "held", "k", "a", time.Minute, nil)
			return err
		}},
		{"force release", func() error { _, _, err := tab.ForceRelease(context.Background(), "held", "test", nil); return err }},
	}
	for _, c := range changes {
		err := c.do()
		if !errors.Is(err, engine.ErrNotSaved) || !errors.Is(err, faults.ErrInjected) {
			t.Errorf("%s with saving failing = %v; want engine.ErrNotSaved", c.name, err)
		}
		if got := enginetest.List(t, tab); !reflect.DeepEqual(got, want) {
			t.Errorf("after failed %s, table = %v; want %v", c.name, got, want)
		}
		if got := testutil.OnDisk(t, path); got != before {
			t.Errorf("after failed %s, the files changed:\n%s", c.name, got)
		}
	}

	// The token handed out by the failed grant was taken back too.
	d.Fail("")
	got, err := enginetest.Acquire(tab, "new", "k", "a")
	if err != nil {
		t.Fatalf("acquire once the disk works again = %v", err)
	}
	if want := enginetest.Get(t, tab, "held").Token + 1; got.Token != want {
		t.Errorf("token after failed grants = %d; want %d", got.Token, want)
	}
}

func TestNoOpChangesDoNotWrite(t *testing.T) {
	d := &faults.Faulty{}
	tab := enginetest.File(t, d)
	if _, err := enginetest.Acquire(tab, "l", "k", "a"); err != nil {
		t.Fatal(err)
	}
	d.Took()
	if _, _, err := tab.Release(context.Background(), "free", "k", "a", false, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tab.Release(context.Background(), "l", "k", "nobody", false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := enginetest.Acquire(tab, "l", "other", "b"); !errors.Is(err, engine.ErrHeld) {
		t.Fatal(err)
	}
	if ops := d.Took(); len(ops) != 0 {
		t.Errorf("requests that changed nothing touched the disk: %v", ops)
	}
}

func TestListAndGetReturnCopies(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		l, err := enginetest.Acquire(tab, "l", "k", "a")
		if err != nil {
			t.Fatal(err)
		}
		l.Holders[0].Count = 99
		enginetest.Get(t, tab, "l").Holders[0].Count = 99
		enginetest.List(t, tab)["l"].Holders[0].Count = 99
		if got := enginetest.HolderOf(enginetest.Get(t, tab, "l"), "a").Count; got != 1 {
			t.Errorf("count after callers changed their copies = %d; want 1", got)
		}
	})
}
