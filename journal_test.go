package main

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
	"github.com/locker-ci/locker/internal/testutil"
)

// readJournal returns the records in the journal beside the state file at
// path: its bytes up to the zeros of the room allocated ahead.
func readJournal(tb testing.TB, path string) []byte {
	tb.Helper()
	data, err := os.ReadFile(path + ".journal")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	return data
}

// fill makes a few changes of every kind on tab and returns what a restart
// must find.
func fill(tb testing.TB, tab *table) map[string]Snapshot {
	tb.Helper()
	for i, name := range []string{"a", "b", "c", "d/e", "f"} {
		if _, err := tab.Acquire(context.Background(), name, acquireRequest{Request: lock.Request{Key: "k", Requestor: "r", TTL: time.Hour, Note: name}}); err != nil {
			tb.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := acquire(tab, name, "k", "s"); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if _, _, err := tab.Release("b", "k", "r", false, nil); err != nil {
		tb.Fatal(err)
	}
	if _, _, err := tab.ForceRelease("c", nil); err != nil {
		tb.Fatal(err)
	}
	return tab.list()
}

func TestJournalReplaysChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, time.Now)
	want := fill(t, tab)
	// A crash: no checkpoint, the journal holds every change.
	reloaded := loadTestTable(t, path, nil, time.Now)
	if got := reloaded.list(); !reflect.DeepEqual(got, want) {
		t.Errorf("after replay:\n%v\nwant\n%v", got, want)
	}
	if reloaded.lastToken != tab.lastToken || reloaded.seq != tab.seq {
		t.Errorf("after replay token %d, seq %d; want %d, %d", reloaded.lastToken, reloaded.seq, tab.lastToken, tab.seq)
	}
}

func TestJournalTornTailIsIgnored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, time.Now)
	want := fill(t, tab)
	good := readJournal(t, path)

	for name, tail := range map[string]string{
		"no newline":         `0badc0de {"seq":99,"last_token":9,"locks":{"x":null}}`,
		"half a record":      `1234abcd {"seq":99,"last_to`,
		"bad checksum":       "00000000 {\"seq\":99,\"last_token\":9,\"locks\":{}}\n",
		"garbage lines":      "\x00\x00\x00\n\x00garbage\n",
		"just a checksum":    "deadbeef",
		"bad then torn line": "00000000 {}\n1234abcd {\"seq\":1",
	} {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path+".journal", append(slices.Clone(good), tail...), 0o600); err != nil {
				t.Fatal(err)
			}
			reloaded := loadTestTable(t, path, nil, time.Now)
			if got := reloaded.list(); !reflect.DeepEqual(got, want) {
				t.Errorf("after a torn tail:\n%v\nwant\n%v", got, want)
			}
			if got := readJournal(t, path); string(got) != string(good) {
				t.Errorf("the torn tail was not cut off: %q", got[len(good):])
			}
		})
	}
}

func TestJournalDamageIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, time.Now)
	fill(t, tab)
	data := readJournal(t, path)
	lines := strings.SplitAfter(string(data), "\n")
	lines[1] = "0000000 damaged in the middle\n"
	damaged := strings.Join(lines, "")
	if err := os.WriteFile(path+".journal", []byte(damaged), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = tab.store.(*fileStore).owner.Release() // as if its process had died
	_, err := newFileStore(path, atomicfile.OS{}).Open(nil)
	if err == nil || !strings.Contains(err.Error(), path+".journal") || !strings.Contains(err.Error(), "damaged line") {
		t.Errorf("opening a journal damaged in the middle = %v; want an error naming it", err)
	}
	if got := readJournal(t, path); string(got) != damaged {
		t.Error("the damaged journal was changed")
	}
}

func TestCheckpointWritesASnapshotAndCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, time.Now)
	want := fill(t, tab)
	if err := tab.checkpoint(); err != nil {
		t.Fatal(err)
	}
	if got := readJournal(t, path); len(got) != 0 {
		t.Errorf("journal after a checkpoint holds %q; want nothing", got)
	}
	st, err := statefile.Decode(testutil.ReadFile(t, path))
	if err != nil || st.Seq != tab.seq || len(st.Locks) != len(want) {
		t.Errorf("state file after a checkpoint: %d locks, seq %d, %v; want %d locks, seq %d", len(st.Locks), st.Seq, err, len(want), tab.seq)
	}
	// Changes after the checkpoint go to the journal, and both load together.
	if _, err := acquire(tab, "after", "k", "r"); err != nil {
		t.Fatal(err)
	}
	want = tab.list()
	if got := loadTestTable(t, path, nil, time.Now).list(); !reflect.DeepEqual(got, want) {
		t.Errorf("after a checkpoint and more changes:\n%v\nwant\n%v", got, want)
	}
}

func TestCrashBetweenSnapshotAndCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, time.Now)
	want := fill(t, tab)
	// The snapshot is written, then the server dies before the journal is
	// compacted: the journal's records are all in the snapshot already.
	if _, err := tab.store.(*fileStore).save(tab.saved()); err != nil {
		t.Fatal(err)
	}
	if len(readJournal(t, path)) == 0 {
		t.Fatal("the journal is empty; the test needs its records")
	}
	// Counts would double if records were applied twice.
	if got := loadTestTable(t, path, nil, time.Now).list(); !reflect.DeepEqual(got, want) {
		t.Errorf("after a crash between snapshot and compaction:\n%v\nwant\n%v", got, want)
	}
}

func TestCheckpointRunsWhenTheJournalGrows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, time.Now)
	journalOf(tab).CompactAt(2 << 10) // a couple of KiB instead of megabytes
	ctx, cancel := context.WithCancel(context.Background())
	var loop sync.WaitGroup
	loop.Go(func() { tab.checkpointLoop(ctx) })
	defer func() { cancel(); loop.Wait() }()

	for i := range 50 {
		name := "lock-" + strings.Repeat("x", i)
		if _, err := acquire(tab, name, "k", "r"); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, "a checkpoint", func() bool {
		st, err := statefile.Decode(testutil.ReadFile(t, path))
		return err == nil && st.Seq > 0
	})
	cancel()
	loop.Wait()
	want := tab.list()
	if got := loadTestTable(t, path, nil, time.Now).list(); !reflect.DeepEqual(got, want) {
		t.Errorf("after checkpoints:\n%d locks\nwant %d", len(got), len(want))
	}
}

func TestCloseLeavesTheStateFileAlone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "locks.yml")
	tab, err := openTable(newFileStore(path, atomicfile.OS{}), time.Now, discardLog)
	if err != nil {
		t.Fatal(err)
	}
	want := fill(t, tab)
	if err := tab.close(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.DirEntries(t, dir); !slices.Equal(got, []string{"locks.yml", "locks.yml.lock"}) {
		t.Errorf("directory after close = %v; want the state file alone (and its lock file)", got)
	}
	if got := loadTestTable(t, path, nil, time.Now).list(); !reflect.DeepEqual(got, want) {
		t.Errorf("after close:\n%v\nwant\n%v", got, want)
	}
}

func TestGroupCommitSharesFsyncs(t *testing.T) {
	d := &atomicfile.Faulty{}
	tab, _ := newTestTable(t, d)
	const clients, each = 16, 40
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				name := "c" + string(rune('a'+c))
				if _, err := acquire(tab, name, "k", "r"); err != nil {
					t.Error(err)
				}
				if _, _, err := tab.Release(name, "k", "r", false, nil); err != nil {
					t.Error(err)
				}
				_ = i
			}
		})
	}
	wg.Wait()
	syncs := 0
	for _, op := range d.Took() {
		if op == "jsync" {
			syncs++
		}
	}
	changes := clients * each * 2
	t.Logf("%d changes, %d fsyncs", changes, syncs)
	if syncs >= changes {
		t.Errorf("%d fsyncs for %d concurrent changes; want them shared", syncs, changes)
	}
}

// TestRepliesWaitForTheDisk holds the journal's write while a grant is in
// memory only: a reader and a refused request that saw the grant must not
// answer before it is on disk, and when the write then fails, they must
// not answer as if it had happened.
func TestRepliesWaitForTheDisk(t *testing.T) {
	for _, fault := range []string{"jwrite", "jsync"} {
		t.Run(fault, func(t *testing.T) {
			d := &atomicfile.Faulty{}
			tab, path := newTestTable(t, d)
			held, release := d.Hold(fault)
			d.Fail(fault)

			granted := make(chan error, 1)
			go func() { _, err := acquire(tab, "l", "k", "a"); granted <- err }()
			<-held // the grant is in memory; its write is stuck

			type answer struct {
				s   Snapshot
				err error
			}
			read := make(chan answer, 1)
			refused := make(chan error, 1)
			go func() { s, err := tab.Get("l"); read <- answer{s, err} }()
			go func() { _, err := acquire(tab, "l", "other", "b"); refused <- err }()
			// The PUT, the GET and the refused PUT all wait for the disk.
			testutil.WaitFor(t, "all three requests to wait for the disk", func() bool {
				return journalOf(tab).Blocked() == 3
			})
			release()

			want := errSave
			if fault == "jsync" {
				want = errUncertain
			}
			if err := <-granted; !errors.Is(err, want) {
				t.Errorf("PUT whose write failed = %v; want %v", err, want)
			}
			if a := <-read; !errors.Is(a.err, want) {
				t.Errorf("GET that saw the failed grant = %+v, %v; want %v", a.s.Lock, a.err, want)
			}
			if err := <-refused; !errors.Is(err, want) {
				t.Errorf("PUT refused because of the failed grant = %v; want %v", err, want)
			}
			if fault == "jwrite" {
				// Undone: memory equals disk, and the server goes on.
				if s := tab.get("l"); !s.Free() {
					t.Errorf("after the failed write the lock is %+v; want it free", s.Lock)
				}
				d.Fail("")
				if _, err := acquire(tab, "l", "other", "b"); err != nil {
					t.Errorf("PUT after the disk recovered = %v", err)
				}
				return
			}
			// A failed fsync is fatal: the server must stop.
			select {
			case err := <-tab.store.Broken():
				if !errors.Is(err, errUncertain) {
					t.Errorf("fatal = %v; want errUncertain", err)
				}
			default:
				t.Error("a failed fsync was not reported as fatal")
			}
			if _, err := acquire(tab, "m", "k", "a"); !errors.Is(err, errSave) {
				t.Errorf("PUT after a failed fsync = %v; want it refused", err)
			}
			_ = path
		})
	}
}
