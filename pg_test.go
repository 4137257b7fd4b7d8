package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/migrate"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestNodesShareOneTableInPostgreSQL runs two servers on one database,
// over real HTTP: what one grants the other refuses, a waiter on one is
// handed the lock when the holder lets go on the other, a retry with the
// same Idempotency-Key on the other node is answered again, and both show
// the same table on the status page and in /metrics.
func TestNodesShareOneTableInPostgreSQL(t *testing.T) {
	db := testutil.PostgresSchema(t)
	a := startRun(t, map[string]string{"LOCKER_DATABASE_URL": db})
	b := startRun(t, map[string]string{"LOCKER_DATABASE_URL": db})

	if status, body := a.call(t, "PUT", "/lock/prod", `{"key": "deploy", "lock_by": "job-1", "ttl": "10m"}`); status != 200 {
		t.Fatalf("PUT on a = %d %s", status, body)
	}
	if status, body := b.call(t, "PUT", "/lock/prod", `{"key": "upgrade"}`); status != 423 || !strings.Contains(string(body), `held with key \"deploy\" by job-1 (1)`) {
		t.Errorf("PUT with another key on b = %d %s; want 423 naming the holder", status, body)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiter := testutil.PutAsync(ctx, b.url, "/lock/prod?wait=20s", `{"key": "upgrade", "lock_by": "job-2"}`)
	testutil.WaitFor(t, "the waiter on b to show on a", func() bool { return a.waiting(t, "prod") == 1 })
	if status, body := a.call(t, "DELETE", "/lock/prod", `{"key": "deploy", "lock_by": "job-1"}`); status != 200 {
		t.Fatalf("DELETE on a = %d %s", status, body)
	}
	r := testutil.PutAnswer(t, waiter)
	var got lock.View
	if err := json.Unmarshal(r.Body, &got); r.Status != 200 || err != nil || got.Key != "upgrade" || got.Token < 2 {
		t.Fatalf("the waiter on b = %d %s; want the lock with key upgrade, a new token", r.Status, r.Body)
	}

	// A retry on the other node, with the same Idempotency-Key, changes nothing.
	body := `{"key": "upgrade", "lock_by": "job-3"}`
	first, _, err := testutil.SendWithKey(t, a.url, "PUT", "/lock/prod", body, "retry-1")
	if err != nil || first.StatusCode != 200 {
		t.Fatalf("PUT with a key on a: %v %v", first, err)
	}
	again, _, err := testutil.SendWithKey(t, b.url, "PUT", "/lock/prod", body, "retry-1")
	if err != nil || again.StatusCode != 200 || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the retry on b: %v %v; want 200, Idempotent-Replayed", again, err)
	}
	if n := a.listLocks(t)["prod"].LockedBy["job-3"]; n != 1 {
		t.Errorf("job-3 holds %d counts after a retry; want 1", n)
	}

	for _, s := range []*liveServer{a, b} {
		if status, _ := s.call(t, "GET", "/readyz", ""); status != 200 {
			t.Errorf("GET /readyz = %d; want 200", status)
		}
		if status, page := s.call(t, "GET", "/", ""); status != 200 || !strings.Contains(string(page), `data-name="prod"`) {
			t.Errorf("status page = %d; want prod on it", status)
		}
		if _, metrics := s.call(t, "GET", "/metrics", ""); !strings.Contains(string(metrics), "locker_holders 2") {
			t.Errorf("/metrics does not count the two holders")
		}
	}

	// A node stops cleanly: no error in its log on the way out.
	if err := a.shutdown(); err != nil {
		t.Fatal(err)
	}
	if log := a.log.String(); strings.Contains(log, "level=ERROR") || !strings.Contains(log, "msg=stopped locks=1") {
		t.Errorf("a node's log on shutdown: want no error, and msg=stopped locks=1:\n%s", log)
	}
}

func TestRunRefusesBothStores(t *testing.T) {
	err := run(context.Background(), nil, []string{"LOCKER_CONFIG=x.yml", "LOCKER_DATABASE_URL=postgres://h/db"}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "LOCKER_CONFIG and LOCKER_DATABASE_URL are both set") {
		t.Errorf("run with both = %v", err)
	}
}

// TestMigrateBetweenAFileAndPostgreSQL moves the locks of a state file
// into a database and back: the same holders, leases and notes, the
// fencing tokens going on from where they were, and a target that holds
// locks refused.
func TestMigrateBetweenAFileAndPostgreSQL(t *testing.T) {
	db := testutil.PostgresSchema(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "locks.yml")
	s := startRun(t, map[string]string{"LOCKER_CONFIG": file})
	for _, put := range []struct{ name, body string }{
		{"prod", `{"key": "deploy", "lock_by": "job-0"}`},
		{"staging", `{"key": "tests", "lock_by": "unit"}`},
		{"staging", `{"key": "tests", "lock_by": "unit"}`},
	} {
		if status, body := s.call(t, "PUT", "/lock/"+put.name, put.body); status != 200 {
			t.Fatalf("PUT = %d %s", status, body)
		}
	}
	if status, body := s.call(t, "DELETE", "/lock/prod", `{"key": "deploy", "lock_by": "job-0"}`); status != 200 {
		t.Fatalf("DELETE = %d %s", status, body)
	}
	// A request whose answer its client never heard, sent again after
	// each move: answered as the first time, counted once.
	const keyed = `{"key": "deploy", "lock_by": "job-1", "ttl": "1h", "note": "https://ci/builds/1"}`
	sendAgain := func(base, where string) {
		t.Helper()
		resp, body, err := testutil.SendWithKey(t, base, "PUT", "/lock/prod", keyed, "K1")
		if err != nil || resp.StatusCode != 200 || (where != "" && resp.Header.Get("Idempotent-Replayed") != "true") || !strings.Contains(body, `"locked_by":{"job-1":1}`) {
			t.Errorf("PUT with Idempotency-Key K1 %s = %v %v %s; want the first answer, replayed, one count", where, resp, err, body)
		}
	}
	sendAgain(s.url, "")
	historyOf := func(ls *liveServer) string {
		t.Helper()
		status, body := ls.call(t, "GET", "/history/prod", "")
		if status != 200 {
			t.Fatalf("GET /history/prod = %d %s", status, body)
		}
		return string(body)
	}
	history := historyOf(s)
	if n := strings.Count(history, `"id":`); n != 3 {
		t.Fatalf("prod's history holds %d events; want 3: %s", n, history)
	}
	if status, body := s.call(t, "PUT", "/pool/envs", `{"members": ["env-1", "env-2"]}`); status != 200 {
		t.Fatalf("PUT /pool/envs = %d %s", status, body)
	}
	want := s.listLocks(t)
	if err := s.shutdown(); err != nil {
		t.Fatal(err)
	}
	move := func(from, to string) (string, error) {
		var out strings.Builder
		err := run(context.Background(), []string{"migrate", "--from", from, "--to", to}, nil, &out, io.Discard)
		return out.String(), err
	}
	if _, err := move(filepath.Join(dir, "lcoks.yml"), db); err == nil || !strings.Contains(err.Error(), "lcoks.yml") {
		t.Errorf("migrate from a mistyped path = %v; want an error naming it", err)
	}
	if _, err := move("", db); !errors.Is(err, migrate.ErrUsage) {
		t.Errorf("migrate without --from = %v; want a usage error (exit 2)", err)
	}
	if out, err := move(file, db); err != nil || !strings.Contains(out, "copied 2 locks, 1 pool, 5 events, 1 remembered outcome and 0 credentials") {
		t.Fatalf("migrate to the database = %q, %v", out, err)
	}
	if _, err := move(file, db); err == nil || !strings.Contains(err.Error(), "migrate does not overwrite locks") {
		t.Errorf("a second migrate into the same database = %v; want it refused", err)
	}
	p := startRun(t, map[string]string{"LOCKER_DATABASE_URL": db})
	if got := p.listLocks(t); !reflect.DeepEqual(got, want) {
		t.Errorf("on PostgreSQL the locks are %v; want %v", got, want)
	}
	sendAgain(p.url, "on PostgreSQL")
	if got := historyOf(p); got != history {
		t.Errorf("on PostgreSQL prod's history is %s; want the file's %s", got, history)
	}
	if status, body := p.call(t, "GET", "/pools", ""); status != 200 || string(body) != `{"envs":{"members":["env-1","env-2"]}}`+"\n" {
		t.Errorf("on PostgreSQL the pools are %d %s; want envs, as in the file", status, body)
	}
	tokenOf := func(ls *liveServer, name string) uint64 {
		t.Helper()
		status, body := ls.call(t, "PUT", "/lock/"+name, `{"key": "k"}`)
		var l struct{ Token uint64 }
		if status != 200 || json.Unmarshal(body, &l) != nil {
			t.Fatalf("PUT /lock/%s = %d %s", name, status, body)
		}
		return l.Token
	}
	// A token may be skipped (a node fetches one ahead for a change that
	// may take a lock), never given again.
	onPG := tokenOf(p, "new")
	if onPG <= 3 {
		t.Errorf("a new lock on PostgreSQL got token %d; want one after the file's 3", onPG)
	}
	// While a node serves the database, it is no source to copy from.
	early := filepath.Join(dir, "early.yml")
	if _, err := move(db, early); err == nil || !strings.Contains(err.Error(), "1 locker nodes still serve it") {
		t.Errorf("migrate from a database a node serves = %v; want it refused", err)
	}
	if _, err := os.Stat(early); err == nil {
		t.Error("the refused migrate wrote its target")
	}
	var out strings.Builder
	if err := run(context.Background(), []string{"migrate", "--force", "--from", db, "--to", early}, nil, &out, io.Discard); err != nil || !strings.Contains(out.String(), "copied 3 locks") {
		t.Errorf("migrate --force from a database a node serves = %q, %v; want it copied", out.String(), err)
	}
	if err := p.shutdown(); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(dir, "back.yml")
	if out, err := move(db, back); err != nil || !strings.Contains(out, "copied 3 locks, 1 pool, 6 events, 1 remembered outcome and 0 credentials") {
		t.Fatalf("migrate back = %q, %v", out, err)
	}
	if _, err := move(db, back); err == nil || !strings.Contains(err.Error(), "it holds 3 locks") {
		t.Errorf("migrate onto a state file with locks = %v; want it refused", err)
	}
	f := startRun(t, map[string]string{"LOCKER_CONFIG": back})
	if got := f.listLocks(t)["prod"]; !reflect.DeepEqual(got, want["prod"]) {
		t.Errorf("back in a file, prod is %v; want %v", got, want["prod"])
	}
	sendAgain(f.url, "back in a file")
	if got := historyOf(f); got != history {
		t.Errorf("back in a file prod's history is %s; want %s", got, history)
	}
	if back := tokenOf(f, "newer"); back <= onPG {
		t.Errorf("a new lock after migrating back got token %d; want one after PostgreSQL's %d", back, onPG)
	}
}

// TestANodeWaitsForItsDatabase starts a node while its database cannot be
// reached: it says so and tries again, and serves once the database
// answers. A database that refuses the node (one that does not exist)
// fails the start at once.
func TestANodeWaitsForItsDatabase(t *testing.T) {
	u, px := testutil.ThroughProxy(t, testutil.PostgresSchema(t))
	px.Down()
	up := time.AfterFunc(2500*time.Millisecond, px.Up)
	defer up.Stop()
	start := time.Now()
	s := startRun(t, map[string]string{"LOCKER_DATABASE_URL": u})
	if waited := time.Since(start); waited < 2*time.Second {
		t.Errorf("the node served %v after its start, while its database could not be reached for 2.5 s", waited)
	}
	if log := s.log.String(); !strings.Contains(log, `level=WARN msg="cannot reach the database; trying again" in=1s until=`) {
		t.Errorf("the log does not say the node is trying again:\n%s", log)
	}
	if status, body := s.call(t, "PUT", "/lock/prod", `{"key": "k"}`); status != 200 {
		t.Errorf("PUT = %d %s", status, body)
	}

	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	parsed.Path = "/no_such_database_here"
	start = time.Now()
	err = run(context.Background(), nil, []string{"LOCKER_DATABASE_URL=" + parsed.String(), "PORT=0"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `database "no_such_database_here" does not exist`) || time.Since(start) > databasePatience/2 {
		t.Errorf("a start on a database that does not exist = %v after %v; want that error, at once", err, time.Since(start))
	}
}
