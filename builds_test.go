package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/ci"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// Holds that end with the Concourse build that took them, on both
// stores, against a Concourse that answers as a real one does.

// bound is a body's build, as the resource sends it.
func bound(id int, endWith string) string {
	return fmt.Sprintf(`"build": {"id": %d, "name": "3", "job": "hold-lock", "pipeline": "locker-e2e", "team": "main", "url": "https://ci.example.com/teams/main/pipelines/locker-e2e/jobs/hold-lock/builds/3"}, "end_with_build": %s`, id, endWith)
}

// watcher returns the server's watcher of build-bound holds, on fake.
func watcher(ts *testServer, fake *testutil.Concourse) *ci.Watcher {
	w := &ci.Watcher{Table: ts.server.locks, Builds: ci.NewConcourse(fake.URL, fake.User, fake.Password), Log: enginetest.DiscardLog}
	ts.server.builds = w
	return w
}

func TestHoldsEndWithTheirBuild(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		fake := testutil.NewConcourse(t)
		w := watcher(ts, fake)
		ctx := context.Background()
		ts.mustSend(t, request{"PUT", "/lock/deploy", `{"key": "k17", "lock_by": "deploy/3", ` + bound(17, "true") + `}`})
		ts.mustSend(t, request{"PUT", "/lock/kept", `{"key": "k18", ` + bound(18, `["aborted", "errored"]`) + `}`})
		for i := range 5 {
			ts.mustSend(t, request{"PUT", fmt.Sprintf("/lock/env-%d", i), `{"key": "k19", ` + bound(19, "true") + `}`})
		}
		ts.mustSend(t, request{"PUT", "/lock/handed-on", `{"key": "k20", ` + bound(20, "false") + `}`})
		ts.mustSend(t, request{"PUT", "/lock/gone", `{"key": "k21", ` + bound(21, "true") + `}`})
		for id, status := range map[int64]string{17: "started", 18: "succeeded", 19: "started", 20: "aborted"} {
			fake.SetBuild(id, status)
		}
		next := ts.inBackground(t, request{"PUT", "/lock/deploy?wait=1m", `{"key": "k-next", "lock_by": "deploy/4"}`}, "")
		testutil.WaitFor(t, "deploy/4 to queue", func() bool {
			s, err := ts.server.locks.Get("deploy")
			return err == nil && len(s.Waiting) == 1
		})

		// Build 21 is gone (404): its hold ends. The others run, or
		// succeeded where only aborted and errored end the hold, or are
		// not bound: they stay. One lookup a build, five holds or one.
		w.Round(ctx)
		held := ts.locks(t)
		for _, name := range []string{"deploy", "kept", "env-0", "env-4", "handed-on"} {
			if _, ok := held[name]; !ok {
				t.Errorf("%s was ended after one look; want it held", name)
			}
		}
		if _, ok := held["gone"]; ok {
			t.Errorf("the hold of build 21, which Concourse no longer knows (404), was kept")
		}
		if n := fake.Lookups(19); n != 1 {
			t.Errorf("build 19, which has 5 holds, was looked up %d times in one look; want once", n)
		}
		if n := fake.Lookups(20); n != 0 {
			t.Errorf("build 20's hold does not end with it, yet it was looked up %d times", n)
		}

		// Build 17 is aborted: its hold ends at the next look, and the
		// next waiter is granted.
		fake.SetBuild(17, "aborted")
		w.Round(ctx)
		if got := answer(t, next, "deploy/4's wait"); got.Code != http.StatusOK {
			t.Errorf("the waiter after a hold whose build was aborted = %d %s; want 200", got.Code, got.Body)
		}
		rec := ts.send(t, request{"GET", "/history/deploy?limit=2", ""})
		var h struct{ Events []lock.Event }
		if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil || len(h.Events) != 2 || h.Events[1].Kind != lock.Ended ||
			h.Events[1].Reason != "build 17 (aborted), main/locker-e2e/hold-lock #3" || h.Events[1].Holder != "deploy/3" {
			t.Errorf("deploy's history = %s; want its hold ended with build 17 (aborted), then deploy/4's taking", rec.Body)
		}
		rec = ts.send(t, request{"GET", "/lock/kept", ""})
		if !strings.Contains(rec.Body.String(), `"build":{"id":18,"name":"3","job":"hold-lock","pipeline":"locker-e2e","team":"main","url":"https://ci.example.com/teams/main/pipelines/locker-e2e/jobs/hold-lock/builds/3","end_with":["aborted","errored"]}`) {
			t.Errorf("GET /lock/kept = %s; want its holder's build", rec.Body)
		}

		if page := ts.page(t, "/?q=kept"); !strings.Contains(page, `<a class="build" href="https://ci.example.com/teams/main/pipelines/locker-e2e/jobs/hold-lock/builds/3" rel="noreferrer">build 18</a>, ends if it is aborted or errored`) {
			t.Errorf("the status page does not link kept's hold to its build:\n%s", page)
		}

		// Concourse gone: nothing ends, and /readyz says so, ready all the
		// same (locks are served).
		fake.SetBuild(19, "aborted")
		fake.Close()
		w.Round(ctx)
		if _, ok := ts.locks(t)["env-0"]; !ok {
			t.Errorf("a hold was ended while Concourse could not be reached")
		}
		rec = ts.send(t, request{"GET", "/readyz", ""})
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "builds cannot be looked up since") {
			t.Errorf("/readyz with Concourse gone = %d %s; want 200, saying builds cannot be looked up", rec.Code, rec.Body)
		}
	})
}

// TestBuildFieldsAreChecked: a build or an outcome that cannot be right is
// refused with a 400 that says what to send, and takes nothing.
func TestBuildFieldsAreChecked(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		for _, tc := range []struct{ body, want string }{
			{`{"key": "k", "end_with_build": true}`, `"end_with_build" needs "build"`},
			{`{"key": "k", "build": {"name": "3"}, "end_with_build": true}`, `"build" is an object with the CI system's build ID`},
			{`{"key": "k", "build": {"id": 17, "colour": "red"}}`, `"build" is an object`},
			{`{"key": "k", "build": 17}`, `"build" is an object`},
			{`{"key": "k", "build": {"id": 17}, "end_with_build": ["exploded"]}`, `"exploded" is not a build outcome: end_with_build names some of succeeded, failed, errored, aborted`},
			{`{"key": "k", "build": {"id": 17}, "end_with_build": "yes"}`, `"end_with_build" is true`},
			{`{"key": "k", "build": {"id": 17, "end_with": ["aborted"]}}`, `go in "end_with_build"`},
			{`{"key": "k", "build": {"id": 17, "job": "a\u0000b"}}`, `control character`},
		} {
			rec := ts.send(t, request{"PUT", "/lock/checked", tc.body})
			if rec.Code != http.StatusBadRequest || !strings.Contains(errorOf(t, rec), tc.want) {
				t.Errorf("PUT %s = %d %s; want 400 saying %q", tc.body, rec.Code, rec.Body, tc.want)
			}
		}
		if _, ok := ts.locks(t)["checked"]; ok {
			t.Errorf("a refused request took the lock")
		}
	})
}

// TestBuildBoundHoldsAreWatchedAfterARestart: a hold bound to its build
// is kept with its build by the store, and ended by the server that
// starts next.
func TestBuildBoundHoldsAreWatchedAfterARestart(t *testing.T) {
	fake := testutil.NewConcourse(t)
	fake.SetBuild(17, "errored")
	check := func(t *testing.T, first *enginetest.Table, restart func() *enginetest.Table) {
		req := engine.Request{Request: lock.Request{Key: "k", Requestor: "deploy/3", Named: true,
			Build: &lock.Build{ID: 17, EndWith: lock.DefaultEndWith}}}
		if _, err := first.Acquire(context.Background(), "deploy", req); err != nil {
			t.Fatal(err)
		}
		again := restart()
		ts := serveTable(again, again.Path, "", "")
		watcher(ts, fake).Round(context.Background())
		if _, ok := ts.locks(t)["deploy"]; ok {
			t.Errorf("after a restart, the hold of build 17 (errored) was kept")
		}
	}
	t.Run("file", func(t *testing.T) {
		first := enginetest.File(t, nil)
		check(t, first, func() *enginetest.Table { return enginetest.Load(t, first.Path, nil, nil) })
	})
	t.Run("postgresql", func(t *testing.T) {
		db := testutil.PostgresSchema(t)
		first := enginetest.Postgres(t, db, "first")
		check(t, first, func() *enginetest.Table { return enginetest.Postgres(t, db, "again") })
	})
}
