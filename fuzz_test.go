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
		tab, state := newTestTable(t, nil)
		s := &server{locks: tab, log: discardLog, maxWait: 10 * time.Millisecond, writeTimeout: time.Second,
			auth: newCredentials("ci", "s3cret")}
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
		if got, want := loadTestTable(t, state, nil, time.Now).list(), tab.list(); !reflect.DeepEqual(stripQueues(got), stripQueues(want)) {
			t.Fatalf("after %s %s %q the files hold\n%v\nbut memory holds\n%v", method, path, body, got, want)
		}
	})
}

// stripQueues drops the queues, which are not kept on disk.
func stripQueues(m map[string]Snapshot) map[string]Lock {
	out := map[string]Lock{}
	for name, s := range m {
		if !s.free() {
			out[name] = s.Lock
		}
	}
	return out
}

// FuzzState feeds anything to the state file and journal readers: they
// must not panic, and a state file they accept must survive being written
// out and read back unchanged.
func FuzzState(f *testing.F) {
	f.Add([]byte("version: 1\nseq: 3\nlast_token: 2\nlocks:\n  prod:\n    key: k\n    locked_by:\n      a: 1\n    token: 2\n"))
	f.Add([]byte(`{"prod":{"locked_by":{"prod-cf":2},"key":"prod-cf"},"old":{"locked_by":{"x":0},"key":""}}`))
	f.Add([]byte("version: 1\nlocks:\n  \"a\\nb\":\n    key: \"- x\"\n    locked_by: {\"y\": 1}\n    holders:\n      y: {note: n, since: 2026-01-02T03:04:05Z}\n"))
	f.Add([]byte("7b9cbd0c {\"seq\":1,\"last_token\":1,\"locks\":{\"l\":{\"key\":\"k\",\"token\":1,\"holders\":[{\"name\":\"a\",\"count\":1}]}}}\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = readRecords(data, func(record) error { return nil })
		st, seq, err := decodeState(data)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := encodeState(&buf, st, seq); err != nil {
			t.Fatalf("encoding an accepted state: %v", err)
		}
		back, seq2, err := decodeState(buf.Bytes())
		if err != nil {
			t.Fatalf("the state written from an accepted file does not load: %v\n%s", err, buf.String())
		}
		if seq2 != seq || !reflect.DeepEqual(normalize(back), normalize(st)) {
			t.Fatalf("round trip changed the state:\n%+v\nto\n%+v", st, back)
		}
	})
}

// normalize makes equal states compare equal: times in UTC, no empty maps.
func normalize(st state) state {
	out := state{LastToken: st.LastToken, Locks: map[string]Lock{}}
	for name, l := range st.Locks {
		l = l.clone()
		l.AcquiredAt = l.AcquiredAt.UTC()
		for i := range l.Holders {
			l.Holders[i].Since = l.Holders[i].Since.UTC()
			l.Holders[i].ExpiresAt = l.Holders[i].ExpiresAt.UTC()
		}
		out.Locks[name] = l
	}
	return out
}
