package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/journal"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// Durability end to end: the order of the disk operations behind a 200,
// and what a client sees when the disk fails.

// TestSyscallOrder records the disk operations of a fresh server and of one
// PUT: everything that makes the change durable, the journal's directory
// entry included, happens before the client has its 200.
func TestSyscallOrder(t *testing.T) {
	d := &faults.Faulty{}
	ls := startServe(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")}, d)
	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "k"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d %s", status, body)
	}
	ops := d.Took() // everything done before the 200 arrived
	want := []string{
		// the journal is created empty, first: a sealed state file says it is there
		"open",
		// the empty state file is created: written, synced, renamed, its
		// directory synced (the journal's entry with it)
		"create", "write", "sync", "close", "rename", "syncdir",
		// the journal opened for the changes
		"open",
		// the PUT: its record written and synced
		"jwrite", "jsync",
	}
	if !testutil.IsSubsequence(want, ops) {
		t.Errorf("disk operations before the 200:\n  %v\nwant, in this order:\n  %v", ops, want)
	}
	if i := slices.Index(ops, "jsync"); i < 0 || slices.Contains(ops[i+1:], "jwrite") {
		t.Errorf("a journal write came after the last sync before the 200: %v", ops)
	}
}

func TestSaveFailure(t *testing.T) {
	t.Run("write fails: 500, nothing changes, reads go on", func(t *testing.T) {
		d := &faults.Faulty{}
		path := filepath.Join(t.TempDir(), "locks.yml")
		ls := startServe(t, map[string]string{"LOCKER_CONFIG": path}, d)
		ls.call(t, "PUT", "/lock/held", `{"key": "k", "lock_by": "a"}`)
		before := ls.listLocks(t)
		onDiskBefore := testutil.OnDisk(t, path)

		d.Fail("jwrite")
		status, body := ls.call(t, "PUT", "/lock/new", `{"key": "k"}`)
		if status != http.StatusInternalServerError || !strings.Contains(string(body), "nothing was changed") {
			t.Errorf("PUT with the disk failing = %d %s; want 500 saying nothing changed", status, body)
		}
		if got := ls.listLocks(t); !reflect.DeepEqual(got, before) {
			t.Errorf("GET /locks after the failed save = %v; want %v", got, before)
		}
		if got := testutil.OnDisk(t, path); got != onDiskBefore {
			t.Errorf("the files changed after a failed save:\n%s", got)
		}
		d.Fail("")
		if status, body := ls.call(t, "PUT", "/lock/new", `{"key": "k"}`); status != http.StatusOK {
			t.Errorf("PUT once the disk works again = %d %s", status, body)
		}
		if err := ls.shutdown(); err != nil {
			t.Errorf("shutdown after a recovered write failure = %v; want nil", err)
		}
	})

	t.Run("fsync fails: 500, and the server stops with an error", func(t *testing.T) {
		d := &faults.Faulty{}
		path := filepath.Join(t.TempDir(), "locks.yml")
		ls := startServe(t, map[string]string{"LOCKER_CONFIG": path}, d)
		ls.call(t, "PUT", "/lock/held", `{"key": "k", "lock_by": "a"}`)
		d.Fail("jsync")
		status, body := ls.call(t, "PUT", "/lock/new", `{"key": "k"}`)
		if status != http.StatusInternalServerError || !strings.Contains(string(body), "the server is stopping") {
			t.Errorf("PUT with fsync failing = %d %s; want 500 saying the server stops", status, body)
		}
		select {
		case err := <-ls.done:
			if !errors.Is(err, engine.ErrDiskUncertain) {
				t.Errorf("serve after a failed fsync = %v; want engine.ErrDiskUncertain (main exits 1)", err)
			}
			ls.done <- err // for the cleanup's shutdown
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not stop after a failed fsync")
		}
		// What a restart finds is what was acknowledged.
		d.Fail("")
		if got := enginetest.List(t, enginetest.Load(t, path, nil, time.Now)); len(got) != 1 || got["held"].Free() {
			t.Errorf("after the restart the table is %v; want only the acknowledged lock", got)
		}
	})
}

func TestBadStateFile(t *testing.T) {
	const good = "version: 1\nseq: 2\nlast_token: 5\nlocks:\n  prod:\n    key: k\n    locked_by:\n      a: 1\n    token: 5\n"
	goodJournal := func(tb testing.TB) string {
		payload, err := json.Marshal(filestore.Change{Seq: 3, LastToken: 6, Locks: map[string]*lock.Lock{"next": {Key: "j", Token: 6, Holders: []lock.Holder{{Name: "b", Hold: lock.Hold{Count: 1}}}}}})
		if err != nil {
			tb.Fatal(err)
		}
		return string(journal.Line(payload))
	}(t)
	tests := []struct {
		name, state, journal string
		wantErr              string   // refused with this; "" when it starts
		wantLocks            []string // when it starts
	}{
		{name: "truncated state file", state: good[:len(good)-12], wantErr: "not a valid Locker state file"},
		{name: "invalid YAML", state: "version: 1\nlocks: [\n", wantErr: "not a valid Locker state file"},
		{name: "unknown field", state: strings.Replace(good, "    token: 5", "    tokne: 5", 1), wantErr: "tokne"},
		{name: "negative count", state: strings.Replace(good, "a: 1", "a: -1", 1), wantErr: `holder "a" has a negative count`},
		{name: "holder without a key", state: strings.Replace(good, "key: k", `key: ""`, 1), wantErr: "held by a (1) but has no key"},
		{name: "token counter below a lock's token", state: strings.Replace(good, "last_token: 5", "last_token: 4", 1), wantErr: "above last_token 4"},
		{name: "journal record damaged before the last", state: good, journal: "00000000 damaged\n" + goodJournal, wantErr: "damaged line"},
		{name: "torn last journal record", state: good, journal: goodJournal + goodJournal[:20], wantLocks: []string{"next", "prod"}},
		{name: "journal with only a torn record", state: good, journal: goodJournal[:30], wantLocks: []string{"prod"}},
		{name: "empty state file", state: "", wantLocks: nil},
		{name: "journal without its state file", journal: goodJournal, wantErr: "is missing but its journal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "locks.yml")
			if tt.name != "journal without its state file" {
				testutil.WriteFile(t, path, tt.state)
			}
			if tt.journal != "" {
				testutil.WriteFile(t, path+".journal", tt.journal)
			}
			before := testutil.DirContents(t, dir)
			if tt.wantErr != "" {
				err := run(t.Context(), nil, []string{"LOCKER_CONFIG=" + path, "PORT=0"}, io.Discard, io.Discard)
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
					t.Errorf("start = %v; want a refusal naming %s and saying %q", err, path, tt.wantErr)
				}
				after := testutil.DirContents(t, dir)
				delete(after, "locks.yml.lock") // the server's claim on the state, released as it exits
				if !reflect.DeepEqual(after, before) {
					t.Errorf("a refused start changed the files:\nbefore %v\nafter  %v", before, after)
				}
				return
			}
			ls := startRun(t, map[string]string{"LOCKER_CONFIG": path})
			var got []string
			for name := range ls.listLocks(t) {
				got = append(got, name)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.wantLocks) {
				t.Errorf("locks after start = %v; want %v", got, tt.wantLocks)
			}
		})
	}
}
