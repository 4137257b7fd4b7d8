package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestAnOperatorRemovesAWaiter, on each store through real HTTP: each
// waiter in a lock's queue shows its ID; DELETE /waiters/<id> answers that
// waiting request 409 saying who removed it and why, and the one behind
// it moves up (granted at once when it now can be); a set's and a claim's
// waiter leave every queue they are in. Bad IDs and bodies are refused,
// and nothing changes; a lock-only credential may not remove one.
func TestAnOperatorRemovesAWaiter(t *testing.T) {
	onEachStore(t, map[string]string{"AUTH_USER": "root", "AUTH_PASS": "rootpass"}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		root := []string{"root", "rootpass"}
		mustCall := func(method, path, body string) []byte {
			t.Helper()
			status, reply := ls.call(t, method, path, body, root...)
			if status != http.StatusOK {
				t.Fatalf("%s %s = %d %s", method, path, status, reply)
			}
			return reply
		}
		queueOf := func(name string) []lock.Waiting {
			t.Helper()
			var v lock.View
			if err := json.Unmarshal(mustCall("GET", "/lock/"+name, ""), &v); err != nil {
				t.Fatal(err)
			}
			return v.Waiting
		}
		background := func(method, path, body string) <-chan answered {
			return inBackground(ls.url, method, path, body, root...)
		}
		mustCall("PUT", "/lock/prod", `{"key": "a"}`)
		deploy55 := background("PUT", "/lock/prod?wait=1m", `{"key": "b", "lock_by": "deploy-55"}`)
		testutil.WaitFor(t, "deploy-55 to wait", func() bool { return len(queueOf("prod")) == 1 })
		sameKey := background("PUT", "/lock/prod?wait=1m", `{"key": "a", "lock_by": "a-2"}`)
		testutil.WaitFor(t, "a-2 to wait behind it", func() bool { return len(queueOf("prod")) == 2 })
		q := queueOf("prod")
		if q[0].ID == 0 || q[0].ID == q[1].ID || q[0].Requestor != "deploy-55" {
			t.Fatalf("prod's queue = %+v; want deploy-55 first, each with an ID of its own", q)
		}

		before := string(mustCall("GET", "/locks", ""))
		for _, bad := range []struct {
			path, body string
			status     int
			want       string
		}{
			{"/waiters/abc", "", 400, "not a waiter's ID"},
			{"/waiters/-3", "", 400, "not a waiter's ID"},
			{fmt.Sprintf("/waiters/%d", q[0].ID), `{"reson": "x"}`, 400, `unknown field "reson"`},
			{fmt.Sprintf("/waiters/%d", q[0].ID), `{"reason": 5}`, 400, `"reason"`},
			{fmt.Sprintf("/waiters/%d", q[0].ID), `{"reason": "a\u0007b"}`, 400, "control character"},
			{fmt.Sprintf("/waiters/%d?force=true", q[0].ID), "", 400, "no query parameters"},
			{"/waiters/999999999", "", 404, "no request waits with the ID 999999999"},
		} {
			status, reply := ls.call(t, "DELETE", bad.path, bad.body, root...)
			var e struct{ Error string }
			if err := json.Unmarshal(reply, &e); err != nil || status != bad.status || !strings.Contains(e.Error, bad.want) {
				t.Errorf("DELETE %s %s = %d %s; want %d saying %q", bad.path, bad.body, status, reply, bad.status, bad.want)
			}
		}
		lockOnly := ls.makeCredential(t, `{"name": "ci", "grants": [{"role": "lock", "prefix": ""}]}`)
		if status, reply := ls.call(t, "DELETE", fmt.Sprintf("/waiters/%d", q[0].ID), "", "ci", lockOnly); status != http.StatusForbidden || !strings.Contains(string(reply), "operate") {
			t.Errorf("DELETE /waiters as a lock credential = %d %s; want 403 naming the operate role", status, reply)
		}
		if after := string(mustCall("GET", "/locks", "")); after != before || len(queueOf("prod")) != 2 {
			t.Errorf("the refused removals changed something: %s, then %s", before, after)
		}

		// Removing deploy-55 answers it, and a-2, which shares the
		// holder's key, no longer waits behind it: granted at once.
		mustCall("DELETE", fmt.Sprintf("/waiters/%d", q[0].ID), `{"reason": "superseded by deploy 57"}`)
		if got := (<-deploy55).String(); !strings.HasPrefix(got, "409 removed from the queue by root (127.0.0.1): superseded by deploy 57") {
			t.Errorf("deploy-55's request = %q; want 409 saying who removed it and why", got)
		}
		if got := (<-sameKey).String(); !strings.HasPrefix(got, "200") {
			t.Errorf("a-2's request = %q; want it granted once deploy-55 left", got)
		}
		if status, _ := ls.call(t, "DELETE", fmt.Sprintf("/waiters/%d", q[0].ID), "", root...); status != http.StatusNotFound {
			t.Errorf("removing it again = %d; want 404", status)
		}

		// A set's waiter leaves both queues; a claim's, every member's.
		set := background("PUT", "/locks?wait=1m", `{"locks": ["prod", "db"], "key": "c"}`)
		testutil.WaitFor(t, "the set to wait", func() bool { return len(queueOf("prod")) == 1 })
		mustCall("PUT", "/pool/stage", `{"members": ["prod", "db2"]}`)
		mustCall("PUT", "/lock/db2", `{"key": "x"}`)
		claim := background("PUT", "/pool/stage/claim?wait=1m", `{"key": "d"}`)
		testutil.WaitFor(t, "the claim to wait", func() bool { return len(queueOf("db2")) == 1 })
		for _, w := range []struct {
			id   int64
			done <-chan answered
			what string
		}{{queueOf("prod")[0].ID, set, "the set"}, {queueOf("db2")[0].ID, claim, "the claim"}} {
			mustCall("DELETE", fmt.Sprintf("/waiters/%d", w.id), "")
			if got := (<-w.done).String(); !strings.HasPrefix(got, "409 removed from the queue by root") {
				t.Errorf("%s's request = %q; want 409", w.what, got)
			}
		}
		for _, name := range []string{"prod", "db", "db2"} {
			if q := queueOf(name); len(q) != 0 {
				t.Errorf("%s's queue after = %+v; want it empty", name, q)
			}
		}
	})
}

// TestANewerRequestSupersedesTheWaitingOnes, on each store through real
// HTTP: deploy builds 55, 56 and 57 queue for prod with one requestor; 57
// says "supersede": 55 and 56 are answered 409, 57 waits at the back
// (behind another requestor's) and is the one granted. The same for a
// set and a claim; another requestor's, and another target's, waiters
// stay.
func TestANewerRequestSupersedesTheWaitingOnes(t *testing.T) {
	onEachStore(t, map[string]string{}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		send := func(method, path, body string) <-chan answered {
			return inBackground(ls.url, method, path, body)
		}
		mustCall := func(method, path, body string) {
			t.Helper()
			if status, reply := ls.call(t, method, path, body); status != http.StatusOK {
				t.Fatalf("%s %s = %d %s", method, path, status, reply)
			}
		}
		queued := func(name string, n int) {
			t.Helper()
			testutil.WaitFor(t, fmt.Sprintf("%d waiting for %s", n, name), func() bool { return ls.waiting(t, name) == n })
		}

		mustCall("PUT", "/lock/prod", `{"key": "hotfix"}`)
		b55 := send("PUT", "/lock/prod?wait=1m", `{"key": "b55", "lock_by": "deploy-prod"}`)
		queued("prod", 1)
		b56 := send("PUT", "/lock/prod?wait=1m", `{"key": "b56", "lock_by": "deploy-prod"}`)
		queued("prod", 2)
		other := send("PUT", "/lock/prod?wait=1m", `{"key": "o", "lock_by": "smoke"}`)
		queued("prod", 3)
		set := send("PUT", "/locks?wait=1m", `{"locks": ["prod", "db"], "key": "s55", "lock_by": "deploy-prod"}`)
		queued("prod", 4)
		b57 := send("PUT", "/lock/prod?wait=1m", `{"key": "b57", "lock_by": "deploy-prod", "supersede": true}`)
		for _, c := range []struct {
			done <-chan answered
			what string
		}{{b55, "build 55"}, {b56, "build 56"}} {
			if got := (<-c.done).String(); got != "409 superseded by a newer request from deploy-prod" {
				t.Errorf("%s = %q; want 409 superseded by a newer request from deploy-prod", c.what, got)
			}
		}
		queued("prod", 3) // smoke, the set (another target), build 57 at the back
		var v lock.View
		_, body := ls.call(t, "GET", "/lock/prod", "")
		if err := json.Unmarshal(body, &v); err != nil || len(v.Waiting) != 3 || v.Waiting[0].Requestor != "smoke" || v.Waiting[2].Key != "b57" {
			t.Fatalf("prod's queue = %s; want smoke, the set, then build 57", body)
		}
		mustCall("DELETE", "/lock/prod", `{"key": "hotfix"}`)
		if got := (<-other).String(); !strings.HasPrefix(got, "200") {
			t.Errorf("smoke's request = %q; want it granted", got)
		}
		mustCall("DELETE", "/lock/prod", `{"key": "o", "lock_by": "smoke"}`)
		if got := (<-set).String(); !strings.HasPrefix(got, "200") {
			t.Errorf("the set = %q; want it granted (another target: not superseded)", got)
		}
		mustCall("DELETE", "/locks", `{"locks": ["prod", "db"], "key": "s55", "lock_by": "deploy-prod"}`)
		if got := (<-b57).String(); !strings.HasPrefix(got, "200") {
			t.Errorf("build 57 = %q; want it granted", got)
		}
		mustCall("DELETE", "/lock/prod", `{"key": "b57", "lock_by": "deploy-prod"}`)

		// A set and a claim supersede theirs too.
		mustCall("PUT", "/lock/db", `{"key": "hotfix"}`)
		s1 := send("PUT", "/locks?wait=1m", `{"locks": ["prod", "db"], "key": "s1", "lock_by": "deploy-prod"}`)
		queued("db", 1)
		s2 := send("PUT", "/locks?wait=1m", `{"locks": ["prod", "db"], "key": "s2", "lock_by": "deploy-prod", "supersede": true}`)
		if got := (<-s1).String(); got != "409 superseded by a newer request from deploy-prod" {
			t.Errorf("the first set = %q; want it superseded", got)
		}
		mustCall("PUT", "/pool/stage", `{"members": ["st1"]}`)
		mustCall("PUT", "/lock/st1", `{"key": "x"}`)
		c1 := send("PUT", "/pool/stage/claim?wait=1m", `{"key": "c1", "lock_by": "e2e"}`)
		queued("st1", 1)
		c2 := send("PUT", "/pool/stage/claim?wait=1m", `{"key": "c2", "lock_by": "e2e", "supersede": true}`)
		if got := (<-c1).String(); got != "409 superseded by a newer request from e2e" {
			t.Errorf("the first claim = %q; want it superseded", got)
		}
		queued("st1", 1)
		mustCall("DELETE", "/lock/db", `{"key": "hotfix"}`)
		mustCall("DELETE", "/lock/st1", `{"key": "x"}`)
		for _, c := range []struct {
			done <-chan answered
			what string
		}{{s2, "the newer set"}, {c2, "the newer claim"}} {
			if got := (<-c.done).String(); !strings.HasPrefix(got, "200") {
				t.Errorf("%s = %q; want it granted", c.what, got)
			}
		}

		for _, bad := range []struct{ path, body, want string }{
			{"/lock/prod", `{"key": "k", "supersede": true}`, "for a request that waits"},
			{"/lock/prod?wait=1m", `{"key": "k", "supersede": "yes"}`, "must be true or false"},
		} {
			status, reply := ls.call(t, "PUT", bad.path, bad.body)
			if status != http.StatusBadRequest || !strings.Contains(string(reply), bad.want) {
				t.Errorf("PUT %s %s = %d %s; want 400 saying %q", bad.path, bad.body, status, reply, bad.want)
			}
		}
	})
}

// TestAGateWaitsUntilTheLockIsFree, on each store through real HTTP: GET
// /lock/<name>?free=true&wait=D answers as soon as the lock is free (at
// once when it is), takes nothing, and with the lock as it is when the
// wait runs out; a wait without free=true, and the reverse, is a 400.
func TestAGateWaitsUntilTheLockIsFree(t *testing.T) {
	onEachStore(t, map[string]string{}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		get := func(path string) (int, lock.View) {
			t.Helper()
			status, body := ls.call(t, "GET", path, "")
			var v lock.View
			if status == http.StatusOK {
				if err := json.Unmarshal(body, &v); err != nil {
					t.Fatal(err)
				}
			}
			return status, v
		}
		if status, v := get("/lock/prod?free=true&wait=1m"); status != http.StatusOK || v.Key != "" {
			t.Errorf("a gate on a free lock = %d %+v; want it free at once", status, v)
		}
		if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "deploy"}`); status != http.StatusOK {
			t.Fatalf("PUT = %d %s", status, body)
		}
		if status, v := get("/lock/prod?free=true&wait=300ms"); status != http.StatusOK || v.Key != "deploy" {
			t.Errorf("a gate whose wait ran out = %d %+v; want the lock as it is, held", status, v)
		}
		gate := make(chan lock.View, 1)
		go func() {
			_, v := get("/lock/prod?free=true&wait=1m")
			gate <- v
		}()
		select {
		case v := <-gate:
			t.Fatalf("the gate answered %+v while the lock was held", v)
		case <-time.After(200 * time.Millisecond):
		}
		if status, body := ls.call(t, "DELETE", "/lock/prod", `{"key": "deploy"}`); status != http.StatusOK {
			t.Fatalf("DELETE = %d %s", status, body)
		}
		if v := <-gate; v.Key != "" || len(v.LockedBy) != 0 {
			t.Errorf("the gate after the release = %+v; want the lock free", v)
		}
		if l := ls.listLocks(t); len(l) != 0 {
			t.Errorf("GET /locks after the gates = %v; want nothing held (a gate takes nothing)", l)
		}
		for _, bad := range []struct{ query, want string }{
			{"?wait=5m", "give ?free=true and ?wait= together"},
			{"?free=true", "give ?free=true and ?wait= together"},
			{"?free=yes&wait=5m", "?free= is true"},
			{"?free=true&wait=5", "has no unit"},
			{"?fre=true", "unknown query parameter"},
		} {
			status, body := ls.call(t, "GET", "/lock/prod"+bad.query, "")
			if status != http.StatusBadRequest || !strings.Contains(string(body), bad.want) {
				t.Errorf("GET /lock/prod%s = %d %s; want 400 saying %q", bad.query, status, body, bad.want)
			}
		}
	})
}

// TestPrioritiesOrderTheQueue, on each store through real HTTP: a waiter
// of higher priority is shown and served before those of lower priority
// that came first, behind those of equal priority; a compatible request
// of higher priority than every waiter is granted at once; a set and a
// claim follow the same order; bad priorities are refused.
func TestPrioritiesOrderTheQueue(t *testing.T) {
	onEachStore(t, map[string]string{}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		send := func(path, body string) <-chan answered {
			return inBackground(ls.url, "PUT", path, body)
		}
		mustCall := func(method, path, body string) {
			t.Helper()
			if status, reply := ls.call(t, method, path, body); status != http.StatusOK {
				t.Fatalf("%s %s = %d %s", method, path, status, reply)
			}
		}
		queue := func(name string) []string {
			t.Helper()
			var v lock.View
			_, body := ls.call(t, "GET", "/lock/"+name, "")
			if err := json.Unmarshal(body, &v); err != nil {
				t.Fatal(err)
			}
			var who []string
			for _, w := range v.Waiting {
				who = append(who, fmt.Sprintf("%s:%d", w.Requestor, w.Priority))
			}
			return who
		}
		holder := func(name string) string {
			t.Helper()
			for who := range ls.listLocks(t)[name].LockedBy {
				return who
			}
			return ""
		}

		mustCall("PUT", "/lock/prod", `{"key": "k-first", "lock_by": "first"}`)
		done := map[string]<-chan answered{}
		for i, w := range []struct {
			who      string
			priority int
		}{{"low-1", 0}, {"low-2", 0}, {"high-1", 5}, {"high-2", 5}, {"lowest", -1}} {
			done[w.who] = send("/lock/prod?wait=1m", fmt.Sprintf(`{"key": "k-%s", "lock_by": %q, "priority": %d}`, w.who, w.who, w.priority))
			testutil.WaitFor(t, w.who+" to wait", func() bool { return len(queue("prod")) == i+1 })
		}
		want := []string{"high-1:5", "high-2:5", "low-1:0", "low-2:0", "lowest:-1"}
		if got := queue("prod"); !slices.Equal(got, want) {
			t.Fatalf("prod's queue = %v; want %v", got, want)
		}
		last := "first"
		for _, w := range want {
			who, _, _ := strings.Cut(w, ":")
			mustCall("DELETE", "/lock/prod", fmt.Sprintf(`{"key": "k-%s", "lock_by": %q}`, last, last))
			if status := (<-done[who]).status; status != http.StatusOK {
				t.Fatalf("%s's request = %d; want it granted in its turn", who, status)
			}
			if got := holder("prod"); got != who {
				t.Fatalf("prod is held by %q; want %s, next in order", got, who)
			}
			last = who
		}
		mustCall("DELETE", "/lock/prod", `{"key": "k-lowest", "lock_by": "lowest"}`)

		// A request that shares the holders' key jumps waiters of lower
		// priority, but not those of its own.
		mustCall("PUT", "/lock/web", `{"key": "shared", "lock_by": "a"}`)
		other := send("/lock/web?wait=1m", `{"key": "other", "lock_by": "o", "priority": 1}`)
		testutil.WaitFor(t, "o to wait", func() bool { return len(queue("web")) == 1 })
		if status, body := ls.call(t, "PUT", "/lock/web", `{"key": "shared", "lock_by": "b", "priority": 1}`); status != http.StatusLocked {
			t.Errorf("a shared-key request of the waiter's priority = %d %s; want 423: the waiter came first", status, body)
		}
		if status, body := ls.call(t, "PUT", "/lock/web", `{"key": "shared", "lock_by": "c", "priority": 2}`); status != http.StatusOK {
			t.Errorf("a shared-key request of higher priority = %d %s; want it granted at once", status, body)
		}
		mustCall("DELETE", "/lock/web", `{"key": "shared", "lock_by": "a"}`)
		mustCall("DELETE", "/lock/web", `{"key": "shared", "lock_by": "c"}`)
		if status := (<-other).status; status != http.StatusOK {
			t.Errorf("o's request = %d; want it granted once the holders left", status)
		}

		for _, bad := range []string{`"high"`, `1.5`, `null`, `10000001`} {
			status, body := ls.call(t, "PUT", "/lock/x?wait=1s", `{"key": "k", "priority": `+bad+`}`)
			if status != http.StatusBadRequest || !strings.Contains(string(body), "whole number") {
				t.Errorf("priority %s = %d %s; want 400", bad, status, body)
			}
		}
	})
}
