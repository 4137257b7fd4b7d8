package filestore

// Failed writes, syncs and records: what the store undoes, refuses or stops for.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// TestRepliesWaitForTheDisk holds the journal's write while a grant is in
// memory only: a reader and a refused change that saw the grant must not
// return before it is on disk, and when the write then fails, they must
// not return as if it had happened.
func TestRepliesWaitForTheDisk(t *testing.T) {
	for _, fault := range []string{"jwrite", "jsync"} {
		t.Run(fault, func(t *testing.T) {
			d := &faults.Faulty{}
			s, _ := newTest(t, d)
			held, release := d.Hold(fault)
			d.Fail(fault)

			granted := make(chan error, 1)
			go func() { granted <- take(s, "l", "k", "a", 0) }()
			<-held // the grant is in memory; its write is stuck

			read := make(chan error, 1)
			refused := make(chan error, 1)
			go func() {
				read <- s.View(context.Background(), []string{"l"}, func(txn.Reader) error { return nil })
			}()
			go func() {
				// A change that, seeing the grant, changes nothing.
				refused <- s.Update(context.Background(), []string{"l"}, txn.Options{}, func(txn.Tx) error { return nil })
			}()
			testutil.WaitFor(t, "all three to wait for the disk", func() bool { return s.journal.Blocked() == 3 })
			release()

			want := txn.ErrNotSaved
			if fault == "jsync" {
				want = atomicfile.ErrUncertain
			}
			for what, ch := range map[string]chan error{"the grant": granted, "a read": read, "a change that saw it": refused} {
				if err := <-ch; !errors.Is(err, want) {
					t.Errorf("%s, its write failing = %v; want %v", what, err, want)
				}
			}
			if fault == "jwrite" {
				// Undone: memory equals disk, and the store goes on.
				if l := table(t, s)["l"]; !l.Free() {
					t.Errorf("after the failed write the lock is %+v; want it free", l)
				}
				d.Fail("")
				if err := take(s, "l", "other", "b", 0); err != nil {
					t.Errorf("a change after the disk recovered = %v", err)
				}
				return
			}
			// A failed fsync is fatal: the server must stop.
			select {
			case err := <-s.Broken():
				if !errors.Is(err, atomicfile.ErrUncertain) {
					t.Errorf("fatal = %v; want ErrUncertain", err)
				}
			default:
				t.Error("a failed fsync was not reported as fatal")
			}
			if err := take(s, "m", "k", "a", 0); !errors.Is(err, txn.ErrNotSaved) {
				t.Errorf("a change after a failed fsync = %v; want it refused", err)
			}
		})
	}
}

// TestFailedWriteUndoesTheTransactionWhole: a transaction over two locks
// whose record cannot be written leaves both as they were, and the token
// counter too.
func TestFailedWriteUndoesTheTransactionWhole(t *testing.T) {
	d := &faults.Faulty{}
	s, _ := newTest(t, d)
	if err := take(s, "a", "k", "r", 0); err != nil {
		t.Fatal(err)
	}
	want, token := table(t, s), s.lastToken
	d.Fail("jwrite")
	err := s.Update(context.Background(), []string{"a", "b"}, txn.Options{}, func(tx txn.Tx) error {
		tx.Set("a", lock.Lock{})
		tx.Set("b", lock.Give(lock.Lock{}, lock.Request{Key: "k", Requestor: "r"}, tx.Now(), tx.NextToken))
		return nil
	})
	if !errors.Is(err, txn.ErrNotSaved) {
		t.Fatalf("a transaction over two locks whose write failed = %v; want ErrNotSaved", err)
	}
	if got := table(t, s); !reflect.DeepEqual(got, want) || s.lastToken != token {
		t.Errorf("after the failed transaction: %v, token %d; want %v, token %d", got, s.lastToken, want, token)
	}
}

// TestRollbackRestoresLeases makes a renewal fail to be written after the
// lease's first expiry time has passed (and the expiry loop has dropped
// that time from its heap as renewed): the renewal is undone, and the
// lease must still end at its first time.
func TestRollbackRestoresLeases(t *testing.T) {
	now := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	var clock sync.Mutex
	d := &faults.Faulty{}
	s := openTest(t, filepath.Join(t.TempDir(), "locks.yml"), d, func() time.Time { clock.Lock(); defer clock.Unlock(); return now })
	if err := take(s, "l", "k", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	held, release := d.Hold("jwrite")
	d.Fail("jwrite")
	renewed := make(chan error, 1)
	go func() {
		renewed <- s.Update(context.Background(), []string{"l"}, txn.Options{}, func(tx txn.Tx) error {
			l, _ := lock.Renew(tx.Lock("l"), "k", "a", tx.Now().Add(time.Hour))
			tx.Set("l", l)
			return nil
		})
	}()
	<-held // the renewal is in memory; its write is stuck
	clock.Lock()
	now = now.Add(2 * time.Minute)
	clock.Unlock()
	// The expiry loop's step: the first lease comes due; its lock, renewed
	// in memory, has nothing to end.
	if due := s.due(s.now()); len(due) != 1 {
		t.Fatalf("leases due = %v; want the first one", due)
	}
	release()
	if err := <-renewed; !errors.Is(err, txn.ErrNotSaved) {
		t.Fatalf("renewal whose write failed = %v; want ErrNotSaved", err)
	}
	d.Fail("")
	if due := s.due(s.now()); len(due) != 1 || due[0].name != "l" {
		t.Errorf("after the renewal was undone, leases due = %v; want the first lease of l again", due)
	}
}

// TestAMissingRecordIsRefused: a record deleted from the middle of the
// journal loses a change; the next record says what it was made on, and
// the store refuses to start, naming the journal and the gap.
func TestAMissingRecordIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	s := openTest(t, path, nil, nil)
	fill(t, s)
	_ = s.Close(false) // as if its process had died
	lines := strings.SplitAfter(string(testutil.ReadJournal(t, path)), "\n")
	gapped := strings.Join(append(lines[:2:2], lines[3:]...), "")
	if err := os.WriteFile(path+".journal", []byte(gapped), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, atomicfile.OS{}, Options{})
	if err == nil || !strings.Contains(err.Error(), path+".journal") || !strings.Contains(err.Error(), "records are missing") {
		t.Errorf("opening a journal with a record deleted = %v; want an error naming it and the gap", err)
	}
}

// TestPermissionErrorSaysWhoMayNotWrite checks the message for a state
// file's directory the server may not write in. Tests run as root here,
// which may write anywhere, so the refusal is made up; the files it
// describes are real.
func TestPermissionErrorSaysWhoMayNotWrite(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	lockFile := filepath.Join(dir, "locks.yml.lock")
	got := permissionError(&fs.PathError{Op: "open", Path: lockFile, Err: fs.ErrPermission}).Error()
	want := fmt.Sprintf("locker runs as user %[1]s and may not write the directory %[2]s (mode drwxr-xr-x, owned by %[1]s) (open %[3]s: permission denied). "+
		"Give %[1]s write access to it (e.g. sudo chown %[1]s %[2]s), or point LOCKER_CONFIG at a file in a directory %[1]s may write", me.Username, dir, lockFile)
	if got != want {
		t.Errorf("permissionError =\n%s\nwant\n%s", got, want)
	}
	testutil.WriteFile(t, lockFile, "")
	got = permissionError(&fs.PathError{Op: "open", Path: lockFile, Err: fs.ErrPermission}).Error()
	if want := fmt.Sprintf("may not write the file %s (mode -rw-------, owned by %s)", lockFile, me.Username); !strings.Contains(got, want) {
		t.Errorf("permissionError for a file that exists =\n%s\nwant %q in it", got, want)
	}
}
