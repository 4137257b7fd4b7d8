package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

func TestSaveFailureIsA500AndChangesNothing(t *testing.T) {
	d := &faults.Faulty{}
	ts := newTestServer(t, d, "", "")
	ts.mustSend(t, request{"PUT", "/lock/l", `{"key": "k", "lock_by": "a"}`})
	before := testutil.OnDisk(t, ts.path)
	want := ts.locks(t)

	d.Fail("jwrite")
	for _, r := range []request{
		{"PUT", "/lock/new", `{"key": "k"}`},
		{"PUT", "/lock/l", `{"key": "k", "lock_by": "b"}`},
		{"DELETE", "/lock/l", `{"key": "k", "lock_by": "a"}`},
	} {
		rec := ts.send(t, r)
		if rec.Code != http.StatusInternalServerError {
			t.Fatalf("%s %s with the disk failing = %d %s; want 500", r.method, r.target, rec.Code, rec.Body)
		}
		msg := errorOf(t, rec)
		if !strings.Contains(msg, "nothing was changed") || strings.Contains(msg, ts.path) {
			t.Errorf("500 message = %q; want it to say nothing changed, without the file's path", msg)
		}
		if got := ts.locks(t); !reflect.DeepEqual(got, want) {
			t.Errorf("after a failed save GET /locks = %v; want %v", got, want)
		}
		if after := testutil.OnDisk(t, ts.path); after != before {
			t.Errorf("the files changed after a failed save:\n%s", after)
		}
	}
}

// TestExclusion runs 16 clients over real HTTP, each with its own key, all
// fighting for one lock. Whoever is granted checks that no one else holds it.
func TestExclusion(t *testing.T) {
	ts := newTestServer(t, nil, "", "")
	httpSrv := httptest.NewServer(ts.handler)
	defer httpSrv.Close()

	const clients = 16
	duration := 2 * time.Second
	if testing.Short() {
		duration = 500 * time.Millisecond
	}
	deadline := time.Now().Add(duration)
	var holders, grants, overlaps atomic.Int64
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := `{"key": "key-` + string(rune('a'+i)) + `"}`
			for time.Now().Before(deadline) {
				status := testutil.HTTPDo(t, httpSrv.URL, "PUT", "/lock/shared", body)
				if status == http.StatusLocked {
					continue
				}
				if status != http.StatusOK {
					t.Errorf("PUT = %d", status)
					return
				}
				if holders.Add(1) != 1 {
					overlaps.Add(1)
				}
				grants.Add(1)
				holders.Add(-1)
				if status := testutil.HTTPDo(t, httpSrv.URL, "DELETE", "/lock/shared", body); status != http.StatusOK {
					t.Errorf("DELETE = %d", status)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := overlaps.Load(); n != 0 {
		t.Errorf("%d times two clients with different keys held the lock at once", n)
	}
	if grants.Load() < clients {
		t.Errorf("only %d grants in %v; the test did not exercise the lock", grants.Load(), duration)
	}
	if got := ts.locks(t); len(got) != 0 {
		t.Errorf("after every client let go GET /locks = %v; want none", got)
	}
	t.Logf("%d grants in %v", grants.Load(), duration)
}

func TestLockDetailsShown(t *testing.T) {
	ts := newTestServer(t, nil, "", "")
	before := time.Now().UTC().Truncate(time.Millisecond) // the server's precision
	ts.mustSend(t, request{"PUT", "/lock/l", `{"key": "k", "lock_by": "a", "ttl": "10m", "note": "https://ci/builds/1?a=1&b=2"}`})
	ts.mustSend(t, request{"PUT", "/lock/l", `{"key": "k", "lock_by": "a"}`})
	ts.mustSend(t, request{"PUT", "/lock/l", `{"key": "k", "lock_by": "b"}`})

	for _, target := range []string{"/lock/l", "/locks"} {
		rec := ts.send(t, request{"GET", target, ""})
		var v lock.View
		body := rec.Body.Bytes()
		if target == "/locks" {
			var all map[string]json.RawMessage
			if err := json.Unmarshal(body, &all); err != nil {
				t.Fatal(err)
			}
			body = all["l"]
		}
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("GET %s = %s: %v", target, rec.Body, err)
		}
		a, b := v.Holders["a"], v.Holders["b"]
		switch {
		case v.Token < 1:
			t.Errorf("GET %s: token = %d; want one handed out", target, v.Token)
		case v.AcquiredAt.Before(before) || v.AcquiredAt.After(time.Now()):
			t.Errorf("GET %s: acquired_at = %v; want the time of the first PUT", target, v.AcquiredAt)
		case a.Count != 2 || a.Since != v.AcquiredAt || a.Note != "https://ci/builds/1?a=1&b=2":
			t.Errorf("GET %s: holder a = %+v; want count 2, since acquired_at, the note", target, a)
		case a.ExpiresAt.Sub(a.Since) < 10*time.Minute || a.ExpiresAt.Sub(a.Since) > 11*time.Minute:
			t.Errorf("GET %s: holder a expires at %v; want about 10m after %v", target, a.ExpiresAt, a.Since)
		case b.Count != 1 || !b.ExpiresAt.IsZero() || b.Note != "":
			t.Errorf("GET %s: holder b = %+v; want count 1, no lease, no note", target, b)
		case v.Waiting == nil || len(v.Waiting) != 0:
			t.Errorf("GET %s: waiting = %#v; want []", target, v.Waiting)
		}
		if !strings.Contains(string(body), `"note":"https://ci/builds/1?a=1&b=2"`) {
			t.Errorf("GET %s: the note is escaped or missing: %s", target, body)
		}
	}

	rec := ts.send(t, request{"GET", "/lock/free", ""})
	if want := `{"name":"free","key":"","locked_by":{},"token":0,"holders":{},"waiting":[]}` + "\n"; rec.Body.String() != want {
		t.Errorf("GET a free lock = %s; want %s", rec.Body, want)
	}
}

// TestDeleteSaysHowManyCountsItGaveBack checks the "released" field of a
// DELETE's reply: a client can tell a release from a request that held
// nothing.
func TestDeleteSaysHowManyCountsItGaveBack(t *testing.T) {
	ts := newTestServer(t, nil, "", "")
	put := request{"PUT", "/lock/l", `{"key": "k", "lock_by": "a"}`}
	ts.mustSend(t, put)
	ts.mustSend(t, put)
	for _, tt := range []struct {
		body string
		want int
	}{
		{`{"key": "k", "lock_by": "nobody"}`, 0},
		{`{"key": "k", "lock_by": "a"}`, 1},
		{`{"key": "k", "lock_by": "a", "all": true}`, 1},
		{`{"key": "k", "lock_by": "a"}`, 0},
	} {
		rec := ts.send(t, request{"DELETE", "/lock/l", tt.body})
		var got struct{ Released *int }
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || got.Released == nil || *got.Released != tt.want {
			t.Errorf("DELETE %s = %d %s; want \"released\": %d", tt.body, rec.Code, rec.Body, tt.want)
		}
	}
}

// TestWriteViewIsEncodingJSON: a single lock's reply, written by
// writeView, is the bytes encoding/json wrote for it before, for locks
// with odd names, notes, limits, leases, queues, released counts and
// responses.
func TestWriteViewIsEncodingJSON(t *testing.T) {
	now := time.Date(2026, 12, 5, 9, 0, 0, 123456789, time.UTC)
	released := 2
	for i, tc := range []struct {
		name     string
		l        engine.Snapshot
		released *int
		response string
	}{
		{"prod", engine.Snapshot{}, nil, "lock for prod was not held; nothing to release"},
		{"a/b <&> \u2028 \"q\"", engine.Snapshot{Lock: lock.Lock{Key: "k\x7f", Token: 9, AcquiredAt: now, Limit: 3,
			Holders: []lock.Holder{{Name: "a", Hold: lock.Hold{Count: 2, Since: now, ExpiresAt: now.Add(time.Hour), Note: "https://ci/b?x=1&y=<2>"}}, {Name: "b\u00e9", Hold: lock.Hold{Count: 1}}}},
			Waiting: []lock.Waiting{{Key: "w", Requestor: "r\t", Since: now}}}, &released, "lock for x acquired by a"},
		{"empty response", engine.Snapshot{Lock: lock.Lock{Key: "k", Token: 1, Holders: []lock.Holder{{Name: "k", Hold: lock.Hold{Count: 1}}}}}, &released, ""},
	} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(lockReply{View: tc.l.View(tc.name, tc.l.Waiting), Released: tc.released, Response: tc.response}); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		writeView(rec, tc.name, tc.l, tc.released, tc.response)
		if got := rec.Body.String(); got != want.String() {
			t.Errorf("case %d:\n got %s\nwant %s", i, got, want.String())
		}
	}
}
