package main

import (
	"errors"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// Durability end to end: the order of the disk operations behind a 200,
// and what a client sees when the disk fails.

// TestSyscallOrder records the disk operations of a fresh server and of one
// PUT: everything that makes the change durable, the journal's directory
// entry included, happens before the client has its 200.
func TestSyscallOrder(t *testing.T) {
	d := &faultyDisk{}
	ls := startServe(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")}, d)
	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "k"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d %s", status, body)
	}
	ops := d.took() // everything done before the 200 arrived
	want := []string{
		// the empty state file is created: written, synced, renamed, its directory synced
		"create", "write", "sync", "close", "rename", "syncdir",
		// the journal is created, and its directory entry synced
		"open", "syncdir",
		// the PUT: its record written and synced
		"jwrite", "jsync",
	}
	if !isSubsequence(want, ops) {
		t.Errorf("disk operations before the 200:\n  %v\nwant, in this order:\n  %v", ops, want)
	}
	if i := slices.Index(ops, "jsync"); i < 0 || slices.Contains(ops[i+1:], "jwrite") {
		t.Errorf("a journal write came after the last sync before the 200: %v", ops)
	}
}

// isSubsequence reports whether want appears in got in order, with other
// elements in between allowed.
func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestSaveFailure(t *testing.T) {
	t.Run("write fails: 500, nothing changes, reads go on", func(t *testing.T) {
		d := &faultyDisk{}
		path := filepath.Join(t.TempDir(), "locks.yml")
		ls := startServe(t, map[string]string{"LOCKER_CONFIG": path}, d)
		ls.call(t, "PUT", "/lock/held", `{"key": "k", "lock_by": "a"}`)
		before := ls.listLocks(t)
		onDiskBefore := onDisk(t, path)

		d.fail("jwrite")
		status, body := ls.call(t, "PUT", "/lock/new", `{"key": "k"}`)
		if status != http.StatusInternalServerError || !strings.Contains(string(body), "nothing was changed") {
			t.Errorf("PUT with the disk failing = %d %s; want 500 saying nothing changed", status, body)
		}
		if got := ls.listLocks(t); !reflect.DeepEqual(got, before) {
			t.Errorf("GET /locks after the failed save = %v; want %v", got, before)
		}
		if got := onDisk(t, path); got != onDiskBefore {
			t.Errorf("the files changed after a failed save:\n%s", got)
		}
		d.fail("")
		if status, body := ls.call(t, "PUT", "/lock/new", `{"key": "k"}`); status != http.StatusOK {
			t.Errorf("PUT once the disk works again = %d %s", status, body)
		}
		if err := ls.shutdown(); err != nil {
			t.Errorf("shutdown after a recovered write failure = %v; want nil", err)
		}
	})

	t.Run("fsync fails: 500, and the server stops with an error", func(t *testing.T) {
		d := &faultyDisk{}
		path := filepath.Join(t.TempDir(), "locks.yml")
		ls := startServe(t, map[string]string{"LOCKER_CONFIG": path}, d)
		ls.call(t, "PUT", "/lock/held", `{"key": "k", "lock_by": "a"}`)
		d.fail("jsync")
		status, body := ls.call(t, "PUT", "/lock/new", `{"key": "k"}`)
		if status != http.StatusInternalServerError || !strings.Contains(string(body), "the server is stopping") {
			t.Errorf("PUT with fsync failing = %d %s; want 500 saying the server stops", status, body)
		}
		select {
		case err := <-ls.done:
			if !errors.Is(err, errUncertain) {
				t.Errorf("serve after a failed fsync = %v; want errUncertain (main exits 1)", err)
			}
			ls.done <- err // for the cleanup's shutdown
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not stop after a failed fsync")
		}
		// What a restart finds is what was acknowledged.
		d.fail("")
		if got := loadTestTable(t, path, nil, time.Now).list(); len(got) != 1 || got["held"].free() {
			t.Errorf("after the restart the table is %v; want only the acknowledged lock", got)
		}
	})
}
