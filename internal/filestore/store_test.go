package filestore

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// The store's own promises, through its transactions: what it is told is
// on disk before Update returns, replays after a crash, survives
// checkpoints, and is undone whole when it cannot be written. The lock
// rules are the engine's (the root package's contract tests); here a
// transaction only sets locks.

// opened is the store last opened on each path by openTest.
var opened sync.Map // path -> *Store

// openTest opens the store at path through d (the real disk when nil)
// with the clock now (time.Now when nil). A store still open on path is
// closed first without a checkpoint, as a crash leaves it. It is closed
// when the test ends.
func openTest(tb testing.TB, path string, d atomicfile.FS, now func() time.Time) *Store {
	tb.Helper()
	if d == nil {
		d = atomicfile.OS{}
	}
	if earlier, ok := opened.Load(path); ok {
		_ = earlier.(*Store).Close(false)
	}
	s, err := Open(path, d, Options{Now: now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	opened.Store(path, s)
	tb.Cleanup(func() { _ = s.Close(false) })
	return s
}

// newTest opens an empty store in a temp directory, and returns its path.
func newTest(tb testing.TB, d atomicfile.FS) (*Store, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "locks.yml")
	return openTest(tb, path, d, nil), path
}

// errOtherKey refuses a take of a lock held with another key.
var errOtherKey = errors.New("held with another key")

// take gives who a count of the lock called name under key, with a lease
// of ttl (0: none).
func take(s *Store, name, key, who string, ttl time.Duration) error {
	return s.Update(context.Background(), []string{name}, txn.Options{}, func(tx txn.Tx) error {
		l := tx.Lock(name)
		if !l.Free() && l.Key != key {
			return errOtherKey
		}
		tx.Set(name, lock.Give(l, lock.Request{Key: key, Requestor: who, TTL: ttl, Note: name, Named: true}, tx.Now(), tx.NextToken))
		return nil
	})
}

// give takes back one count of who's hold.
func give(s *Store, name, key, who string) error {
	return s.Update(context.Background(), []string{name}, txn.Options{}, func(tx txn.Tx) error {
		next, _, _ := lock.Release(tx.Lock(name), key, who, false)
		tx.Set(name, next)
		return nil
	})
}

// table returns every lock the store holds.
func table(tb testing.TB, s *Store) map[string]lock.Lock {
	tb.Helper()
	var t txn.Tables
	if err := s.Scan(context.Background(), txn.Page{}, &t); err != nil {
		tb.Fatal(err)
	}
	return t.Locks
}

// fill makes a few changes of every kind on s and returns what a restart
// must find.
func fill(tb testing.TB, s *Store) map[string]lock.Lock {
	tb.Helper()
	for i, name := range []string{"a", "b", "c", "d/e", "f"} {
		if err := take(s, name, "k", "r", time.Hour); err != nil {
			tb.Fatal(err)
		}
		if i%2 == 0 {
			if err := take(s, name, "k", "s", 0); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := give(s, "b", "k", "r"); err != nil {
		tb.Fatal(err)
	}
	if err := s.Update(context.Background(), []string{"c"}, txn.Options{}, func(tx txn.Tx) error {
		tx.Set("c", lock.Lock{})
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	return table(tb, s)
}

func TestJournalReplaysChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	s := openTest(t, path, nil, nil)
	want := fill(t, s)
	// A crash: no checkpoint, the journal holds every change.
	reloaded := openTest(t, path, nil, nil)
	if got := table(t, reloaded); !reflect.DeepEqual(got, want) {
		t.Errorf("after replay:\n%v\nwant\n%v", got, want)
	}
	if reloaded.lastToken != s.lastToken || reloaded.seq != s.seq {
		t.Errorf("after replay token %d, seq %d; want %d, %d", reloaded.lastToken, reloaded.seq, s.lastToken, s.seq)
	}
}

func TestJournalTornTailIsIgnored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	want := fill(t, openTest(t, path, nil, nil))
	good := testutil.ReadJournal(t, path)

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
			if got := table(t, openTest(t, path, nil, nil)); !reflect.DeepEqual(got, want) {
				t.Errorf("after a torn tail:\n%v\nwant\n%v", got, want)
			}
			if got := testutil.ReadJournal(t, path); string(got) != string(good) {
				t.Errorf("the torn tail was not cut off: %q", got[len(good):])
			}
		})
	}
}

func TestJournalDamageIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	s := openTest(t, path, nil, nil)
	fill(t, s)
	data := testutil.ReadJournal(t, path)
	lines := strings.SplitAfter(string(data), "\n")
	lines[1] = "0000000 damaged in the middle\n"
	damaged := strings.Join(lines, "")
	_ = s.Close(false) // as if its process had died
	if err := os.WriteFile(path+".journal", []byte(damaged), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, atomicfile.OS{}, Options{})
	if err == nil || !strings.Contains(err.Error(), path+".journal") || !strings.Contains(err.Error(), "damaged line") {
		t.Errorf("opening a journal damaged in the middle = %v; want an error naming it", err)
	}
	if got := testutil.ReadJournal(t, path); string(got) != damaged {
		t.Error("the damaged journal was changed")
	}
}

func TestCheckpointWritesASnapshotAndCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	s := openTest(t, path, nil, nil)
	want := fill(t, s)
	if err := s.checkpoint(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ReadJournal(t, path); len(got) != 0 {
		t.Errorf("journal after a checkpoint holds %q; want nothing", got)
	}
	st, err := statefile.Decode(testutil.ReadFile(t, path))
	if err != nil || st.Seq != s.seq || len(st.Locks) != len(want) {
		t.Errorf("state file after a checkpoint: %d locks, seq %d, %v; want %d locks, seq %d", len(st.Locks), st.Seq, err, len(want), s.seq)
	}
	// Changes after the checkpoint go to the journal, and both load together.
	if err := take(s, "after", "k", "r", 0); err != nil {
		t.Fatal(err)
	}
	want = table(t, s)
	if got := table(t, openTest(t, path, nil, nil)); !reflect.DeepEqual(got, want) {
		t.Errorf("after a checkpoint and more changes:\n%v\nwant\n%v", got, want)
	}
}

func TestCrashBetweenSnapshotAndCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	s := openTest(t, path, nil, nil)
	want := fill(t, s)
	// The snapshot is written, then the server dies before the journal is
	// compacted: the journal's records are all in the snapshot already.
	if _, err := s.save(s.saved()); err != nil {
		t.Fatal(err)
	}
	if len(testutil.ReadJournal(t, path)) == 0 {
		t.Fatal("the journal is empty; the test needs its records")
	}
	// Counts would double if records were applied twice.
	if got := table(t, openTest(t, path, nil, nil)); !reflect.DeepEqual(got, want) {
		t.Errorf("after a crash between snapshot and compaction:\n%v\nwant\n%v", got, want)
	}
}

func TestCheckpointRunsWhenTheJournalGrows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	s := openTest(t, path, nil, nil)
	s.journal.CompactAt(2 << 10) // a couple of KiB instead of megabytes
	ctx, cancel := context.WithCancel(context.Background())
	var loop sync.WaitGroup
	loop.Go(func() { s.checkpointLoop(ctx) })
	defer func() { cancel(); loop.Wait() }()

	for i := range 50 {
		if err := take(s, "lock-"+strings.Repeat("x", i), "k", "r", 0); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, "a checkpoint", func() bool {
		st, err := statefile.Decode(testutil.ReadFile(t, path))
		return err == nil && st.Seq > 0
	})
	cancel()
	loop.Wait()
	want := table(t, s)
	if got := table(t, openTest(t, path, nil, nil)); !reflect.DeepEqual(got, want) {
		t.Errorf("after checkpoints:\n%d locks\nwant %d", len(got), len(want))
	}
}

// TestCloseLeavesTheStateFileWhole: after a clean close the state file
// holds every lock and its journal is empty, and still there: the state
// file's seal says it is.
func TestCloseLeavesTheStateFileWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "locks.yml")
	s, err := Open(path, atomicfile.OS{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := fill(t, s)
	if err := s.Close(true); err != nil {
		t.Fatal(err)
	}
	if got := testutil.DirEntries(t, dir); !slices.Equal(got, []string{"locks.yml", "locks.yml.journal", "locks.yml.lock"}) {
		t.Errorf("directory after close = %v; want the state file, its journal and its lock file", got)
	}
	if n := len(testutil.ReadFile(t, path+".journal")); n != 0 {
		t.Errorf("the journal holds %d bytes after a clean close; want 0", n)
	}
	if got := table(t, openTest(t, path, nil, nil)); !reflect.DeepEqual(got, want) {
		t.Errorf("after close:\n%v\nwant\n%v", got, want)
	}
}

// TestAMissingJournalStopsTheStart: the journal deleted, after a crash
// (changes only in it) or after a clean stop (empty), stops the start
// with a message naming it and saying what to do; deleting the state
// file's seal line, as that message says, starts from the state file.
func TestAMissingJournalStopsTheStart(t *testing.T) {
	for _, clean := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "locks.yml")
		s, err := Open(path, atomicfile.OS{}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		fill(t, s)
		if err := s.Close(clean); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(path + ".journal"); err != nil {
			t.Fatal(err)
		}
		before := testutil.ReadFile(t, path)
		_, err = Open(path, atomicfile.OS{}, Options{})
		if err == nil || !strings.Contains(err.Error(), path+".journal") || !strings.Contains(err.Error(), "is missing") || !strings.Contains(err.Error(), "delete the state file's last line") {
			t.Fatalf("clean=%v: Open with the journal deleted = %v; want an error naming it and saying what to do", clean, err)
		}
		if !bytes.Equal(testutil.ReadFile(t, path), before) {
			t.Errorf("clean=%v: the refused start changed the state file", clean)
		}
		if _, err := os.Stat(path + ".journal"); err == nil {
			t.Errorf("clean=%v: the refused start created a journal", clean)
		}

		lines := bytes.SplitAfter(bytes.TrimSuffix(before, []byte("\n")), []byte("\n"))
		if err := os.WriteFile(path, bytes.Join(lines[:len(lines)-1], nil), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err = Open(path, atomicfile.OS{}, Options{})
		if err != nil {
			t.Fatalf("clean=%v: Open with the seal deleted = %v; want it to start from the state file", clean, err)
		}
		_ = s.Close(false)
	}
}

func TestGroupCommitSharesFsyncs(t *testing.T) {
	d := &faults.Faulty{}
	s, _ := newTest(t, d)
	const clients, each = 16, 40
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			name := "c" + string(rune('a'+c))
			for range each {
				if err := take(s, name, "k", "r", 0); err != nil {
					t.Error(err)
				}
				if err := give(s, name, "k", "r"); err != nil {
					t.Error(err)
				}
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
