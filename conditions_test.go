package main

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// Conditional changes (If-Match on a lock's ETag) and reasons for forced
// releases, through real HTTP on both stores.

// ifMatch is a header with If-Match set to tags.
func ifMatchHeader(tags ...string) http.Header {
	return http.Header{"If-Match": {strings.Join(tags, ", ")}}
}

// tokenTag is the ETag of a lock at token.
func tokenTag(token uint64) string { return `"` + strconv.FormatUint(token, 10) + `"` }

// preconditionFailed is a 412's body.
type preconditionFailed struct {
	Error string
	Lock  *lock.View
	Locks map[string]lock.View
}

// TestAStalePageFreesNoOneElsesLock: a person reads a lock (its ETag);
// the holder gives it back and the next one takes it; the person's force
// release, conditional on what they read, is refused with 412 and the
// lock as it is now, and the next holder keeps it. With the ETag read
// again, it is freed, and its history, the stream and the log keep who
// did it and why.
func TestAStalePageFreesNoOneElsesLock(t *testing.T) {
	onEachStore(t, map[string]string{}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		stream := testutil.OpenStream(t, ls.url, "?lock=web", "")
		resp, body := ls.request(t, "PUT", "/lock/web", `{"key": "v1", "lock_by": "deploy-41"}`, nil)
		var first lock.View
		if err := json.Unmarshal(body, &first); resp.StatusCode != 200 || err != nil {
			t.Fatalf("PUT = %d %s", resp.StatusCode, body)
		}
		if got := resp.Header.Get("ETag"); got != tokenTag(first.Token) {
			t.Errorf("PUT's ETag = %q; want %q, its token", got, tokenTag(first.Token))
		}
		resp, _ = ls.request(t, "GET", "/lock/web", "", nil)
		seen := resp.Header.Get("ETag") // the person's page
		if seen != tokenTag(first.Token) {
			t.Fatalf("GET's ETag = %q; want %q", seen, tokenTag(first.Token))
		}
		ls.mustStatus(t, 200, "DELETE", "/lock/web", `{"key": "v1", "lock_by": "deploy-41"}`, nil)
		resp, body = ls.request(t, "PUT", "/lock/web", `{"key": "v2", "lock_by": "deploy-42"}`, nil)
		var next lock.View
		if err := json.Unmarshal(body, &next); resp.StatusCode != 200 || err != nil {
			t.Fatalf("PUT = %d %s", resp.StatusCode, body)
		}

		for _, req := range []struct{ method, path, body string }{
			{"DELETE", "/lock/web?force=true", `{"reason": "stuck"}`},
			{"DELETE", "/lock/web", `{"key": "v2", "lock_by": "deploy-42"}`},
			{"PATCH", "/lock/web", `{"key": "v2", "lock_by": "deploy-42", "ttl": "1h"}`},
		} {
			resp, body := ls.request(t, req.method, req.path, req.body, ifMatchHeader(seen))
			var refused preconditionFailed
			if err := json.Unmarshal(body, &refused); resp.StatusCode != http.StatusPreconditionFailed || err != nil || refused.Lock == nil {
				t.Fatalf("%s %s with If-Match %s = %d %s; want 412 with the lock", req.method, req.path, seen, resp.StatusCode, body)
			}
			if refused.Lock.Key != "v2" || refused.Lock.LockedBy["deploy-42"] != 1 || refused.Lock.Token != next.Token ||
				resp.Header.Get("ETag") != tokenTag(next.Token) || !strings.Contains(refused.Error, "changed hands") {
				t.Errorf("the 412 shows %+v, ETag %s: %s; want deploy-42's hold at token %d", refused.Lock, resp.Header.Get("ETag"), refused.Error, next.Token)
			}
			if now := ls.listLocks(t)["web"]; now.Key != "v2" || now.LockedBy["deploy-42"] != 1 {
				t.Fatalf("after a refused %s: %+v; want deploy-42's hold unchanged", req.method, now)
			}
		}

		// With what is there now, the force release is made, and kept
		// with its reason.
		resp, body = ls.request(t, "DELETE", "/lock/web?force=true", `{"reason": "deploy 42 hung on the migration"}`, ifMatchHeader(tokenTag(next.Token)))
		if resp.StatusCode != 200 {
			t.Fatalf("DELETE ?force=true with If-Match %s = %d %s", tokenTag(next.Token), resp.StatusCode, body)
		}
		status, body := ls.call(t, "GET", "/history/web?limit=1", "")
		var h struct{ Events []lock.Event }
		if err := json.Unmarshal(body, &h); status != 200 || err != nil || len(h.Events) != 1 {
			t.Fatalf("GET /history/web = %d %s", status, body)
		}
		if e := h.Events[0]; e.Kind != lock.Forced || e.Reason != "deploy 42 hung on the migration" || e.By == "" || e.Holder != "deploy-42" {
			t.Errorf("the history's last event = %+v; want deploy-42's hold forced, with the reason and who", e)
		}
		for {
			e, ok := stream.Next(t)
			if !ok {
				t.Fatal("the stream ended before the forced release")
			}
			if e.Kind == "" {
				if ev := testutil.LockEvent(t, e); ev.Kind == lock.Forced {
					if ev.Reason != "deploy 42 hung on the migration" {
						t.Errorf("the stream's forced event = %+v; want its reason", ev)
					}
					break
				}
			}
		}
		if log := ls.log.String(); !strings.Contains(log, `reason="deploy 42 hung on the migration"`) {
			t.Errorf("the log does not say why the lock was forced free:\n%s", log)
		}
	})
}

// TestConditionalSets: a set's release and renewal with If-Match are made
// only while every lock's token is one of those given; a refusal shows
// every lock as it is, and changes none. If-Match: * asks that each be
// held.
func TestConditionalSets(t *testing.T) {
	onEachStore(t, map[string]string{}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		status, body := ls.call(t, "PUT", "/locks", `{"locks": ["db", "app"], "key": "k"}`)
		var set struct{ Locks map[string]lock.View }
		if err := json.Unmarshal(body, &set); status != 200 || err != nil {
			t.Fatalf("PUT /locks = %d %s", status, body)
		}
		tags := []string{tokenTag(set.Locks["db"].Token), tokenTag(set.Locks["app"].Token)}
		ls.mustStatus(t, 200, "PUT", "/lock/other", `{"key": "o"}`, nil)
		stale := tokenTag(set.Locks["db"].Token + 1000)

		resp, body := ls.request(t, "PATCH", "/locks", `{"locks": ["db", "app"], "key": "k", "ttl": "1h"}`, ifMatchHeader(stale))
		var refused preconditionFailed
		if err := json.Unmarshal(body, &refused); resp.StatusCode != http.StatusPreconditionFailed || err != nil || len(refused.Locks) != 2 {
			t.Fatalf("PATCH /locks with a stale If-Match = %d %s; want 412 with both locks", resp.StatusCode, body)
		}
		for _, name := range []string{"db", "app"} {
			if l := ls.listLocks(t)[name]; l.Key != "k" {
				t.Errorf("%s after the refused PATCH: %+v", name, l)
			}
		}
		ls.mustStatus(t, 200, "PATCH", "/locks", `{"locks": ["db", "app"], "key": "k", "ttl": "1h"}`, ifMatchHeader(tags...))
		// Half right is wrong: one lock at another token refuses the set.
		resp, body = ls.request(t, "DELETE", "/locks", `{"locks": ["db", "other"], "key": "k"}`, ifMatchHeader(tags...))
		if resp.StatusCode != http.StatusPreconditionFailed || !strings.Contains(string(body), `\"other\"`) {
			t.Errorf("DELETE /locks naming a lock not at a token given = %d %s; want 412 naming it", resp.StatusCode, body)
		}
		ls.mustStatus(t, 200, "DELETE", "/locks", `{"locks": ["db", "app"], "key": "k"}`, ifMatchHeader("*"))
		resp, body = ls.request(t, "DELETE", "/locks?force=true", `{"locks": ["db", "app"]}`, ifMatchHeader("*"))
		if resp.StatusCode != http.StatusPreconditionFailed || !strings.Contains(string(body), "free now") {
			t.Errorf("DELETE /locks?force=true with If-Match: * on free locks = %d %s; want 412", resp.StatusCode, body)
		}
	})
}

// TestAConditionalRequestSentAgainIsAnsweredAsTheFirstTime: a force
// release with If-Match and an Idempotency-Key whose answer was lost is
// sent again after the lock changed hands: it gets its first answer
// (200, replayed), not a 412, and changes nothing more.
func TestAConditionalRequestSentAgainIsAnsweredAsTheFirstTime(t *testing.T) {
	onEachStore(t, map[string]string{}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		resp, _ := ls.request(t, "PUT", "/lock/web", `{"key": "v1"}`, nil)
		h := ifMatchHeader(resp.Header.Get("ETag"))
		h.Set("Idempotency-Key", "force-1")
		ls.mustStatus(t, 200, "DELETE", "/lock/web?force=true", `{"reason": "r"}`, h)
		ls.mustStatus(t, 200, "PUT", "/lock/web", `{"key": "v2"}`, nil)
		resp, body := ls.request(t, "DELETE", "/lock/web?force=true", `{"reason": "r"}`, h)
		if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("the force release sent again = %d (replayed %q) %s; want its first answer", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
		}
		if l := ls.listLocks(t)["web"]; l.Key != "v2" {
			t.Errorf("after the force release sent again: %+v; want v2's hold", l)
		}
		// The same key with another condition is another request.
		resp, body = ls.request(t, "DELETE", "/lock/web?force=true", `{"reason": "r"}`, http.Header{"If-Match": {`"999"`}, "Idempotency-Key": {"force-1"}})
		if resp.StatusCode != http.StatusUnprocessableEntity {
			t.Errorf("the key sent again with another If-Match = %d %s; want 422", resp.StatusCode, body)
		}
	})
}

// TestBadConditionsAndReasons: each is a 400 naming what is wrong, and
// changes nothing.
func TestBadConditionsAndReasons(t *testing.T) {
	onEachStore(t, map[string]string{}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		ls.mustStatus(t, 200, "PUT", "/lock/web", `{"key": "v1"}`, nil)
		before, _ := ls.request(t, "GET", "/lock/web", "", nil)
		for _, tc := range []struct {
			method, path, body string
			header             http.Header
			want               string
		}{
			{"DELETE", "/lock/web?force=true", "", ifMatchHeader(`W/"1"`), "weak"},
			{"DELETE", "/lock/web?force=true", "", ifMatchHeader(`1`), "not a lock's ETag"},
			{"DELETE", "/lock/web?force=true", "", ifMatchHeader(`"abc"`), "not a lock's ETag"},
			{"DELETE", "/lock/web?force=true", "", ifMatchHeader(`*`, `"1"`), "not both"},
			{"PUT", "/lock/web", `{"key": "v1"}`, ifMatchHeader(`"1"`), "PATCH or a DELETE"},
			{"DELETE", "/lock/web", `{"key": "v1", "reason": "done"}`, nil, "?force=true"},
			{"DELETE", "/lock/web?force=true", `{"reason": 7}`, nil, "must be a string"},
			{"DELETE", "/lock/web?force=true", `{"reason": "` + strings.Repeat("x", 1025) + `"}`, nil, "1024"},
			{"DELETE", "/lock/web?force=true", `{"reason": "a\u0007b"}`, nil, "control character"},
		} {
			resp, body := ls.request(t, tc.method, tc.path, tc.body, tc.header)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tc.want) {
				t.Errorf("%s %s %s %v = %d %s; want 400 with %q", tc.method, tc.path, tc.body, tc.header, resp.StatusCode, body, tc.want)
			}
		}
		if after, body := ls.request(t, "GET", "/lock/web", "", nil); after.Header.Get("ETag") != before.Header.Get("ETag") || !strings.Contains(string(body), `"key":"v1"`) {
			t.Errorf("bad requests changed the lock: ETag %s, then %s: %s", before.Header.Get("ETag"), after.Header.Get("ETag"), body)
		}
	})
}

// mustStatus sends a request and fails the test unless it is answered
// with status.
func (ls *liveServer) mustStatus(tb testing.TB, status int, method, path, body string, header http.Header) {
	tb.Helper()
	if resp, data := ls.request(tb, method, path, body, header); resp.StatusCode != status {
		tb.Fatalf("%s %s %s = %d %s; want %d", method, path, body, resp.StatusCode, data, status)
	}
}
