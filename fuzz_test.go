package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/keyring"
)

// FuzzAPI sends any method, path, body and credentials through the real
// router to a server with one lock held: it must not panic, must answer
// only with the documented statuses, and what it then holds on disk must
// load back to exactly what it holds in memory.
func FuzzAPI(f *testing.F) {
	for _, seed := range []struct {
		method, path, body string
		auth               byte
	}{
		{"PUT", "/lock/x", `{"key": "k", "lock_by": "a", "ttl": "1m", "note": "n"}`, 0},
		{"PUT", "/lock/held?wait=1s", `{"key": "other"}`, 0},
		{"DELETE", "/lock/held", `{"key": "k", "all": true}`, 0},
		{"DELETE", "/lock/held?force=true", ``, 0},
		{"PATCH", "/lock/held", `{"key": "k", "lock_by": "a", "ttl": "5m"}`, 0},
		{"GET", "/locks", ``, 1},
		{"GET", "/lock/a%2Fb", ``, 2},
		{"POST", "/lock/x", `{}`, 0},
		{"PUT", "/lock/%FF", `{"key": 5}`, 0},
		{"PUT", "/lock/x", `{"key": "k"} trailing`, 0},
		{"PUT", "/lock/x", `{"key": "k", "lokc_by": "x"}`, 0},
	} {
		f.Add(seed.method, seed.path, []byte(seed.body), seed.auth)
	}
	documented := []int{200, 400, 401, 404, 405, 413, 423}
	f.Fuzz(func(t *testing.T, method, path string, body []byte, auth byte) {
		req, err := http.NewRequest(method, "http://locker"+path, bytes.NewReader(body))
		if err != nil || !strings.HasPrefix(path, "/") {
			return // not something a client can send
		}
		tab := enginetest.File(t, nil)
		state := tab.Path
		s := &server{locks: tab.Engine, hub: tab.Hub, log: enginetest.DiscardLog, maxWait: 10 * time.Millisecond, writeTimeout: time.Second,
			keys: keyring.New("ci", "s3cret")}
		h := s.routes()
		setup := httptest.NewRequest("PUT", "/lock/held", strings.NewReader(`{"key": "k", "lock_by": "a"}`))
		setup.SetBasicAuth("ci", "s3cret")
		h.ServeHTTP(httptest.NewRecorder(), setup)

		switch auth % 3 {
		case 0:
			req.SetBasicAuth("ci", "s3cret")
		case 1:
			req.Header.Set("Authorization", string(body[:min(len(body), 40)]))
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if !slices.Contains(documented, rec.Code) {
			t.Fatalf("%s %s %q = %d %s; not a documented status", method, path, body, rec.Code, rec.Body)
		}
		if rec.Code != 200 && rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s %s = %d with Content-Type %q; errors are JSON", method, path, rec.Code, rec.Header().Get("Content-Type"))
		}
		if got, want := enginetest.List(t, enginetest.Load(t, state, nil, time.Now)), enginetest.List(t, tab); !reflect.DeepEqual(stripQueues(got), stripQueues(want)) {
			t.Fatalf("after %s %s %q the files hold\n%v\nbut memory holds\n%v", method, path, body, got, want)
		}
	})
}
