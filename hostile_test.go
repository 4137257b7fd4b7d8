package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Hostile clients against the real server on a real port.

func TestSlowlorisIsCutOff(t *testing.T) {
	addr, _ := startShortTimeouts(t)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers that never end.
	if _, err := io.WriteString(conn, "PUT /lock/x HTTP/1.1\r\nHost: locker\r\nX-Slow: 1\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(conn) // ends when the server closes the connection
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server kept a connection with unfinished headers open for %v", time.Since(start))
	}
	t.Logf("connection closed after %v", time.Since(start))
}

func TestHugeRequestsAreRefused(t *testing.T) {
	addr, tab := startShortTimeouts(t)
	base := "http://" + addr
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for i := range 20 {
		for _, chunked := range []bool{false, true} {
			body := io.Reader(strings.NewReader(`{"key": "` + strings.Repeat("x", 1<<20) + `"}`))
			if chunked {
				body = io.MultiReader(body) // hides the length: sent chunked
			}
			req, _ := http.NewRequest("PUT", base+"/lock/x", body)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				// The server may close the connection while the rest of the
				// body is still being sent; the status it sent first counts.
				t.Logf("request %d (chunked %v): %v", i, chunked, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("1 MiB body (chunked %v) = %d; want 413", chunked, resp.StatusCode)
			}
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if grown := int64(m1.HeapAlloc) - int64(m0.HeapAlloc); grown > 8<<20 {
		t.Errorf("heap grew by %d MB over 40 refused 1 MiB bodies", grown>>20)
	}
	if n := tab.Len(); n != 0 {
		t.Errorf("%d locks after refused requests", n)
	}

	// Headers over 16 KiB are refused, as the README says; under, taken.
	for _, h := range []struct {
		size int
		want int
	}{{64 << 10, http.StatusRequestHeaderFieldsTooLarge}, {17 << 10, http.StatusRequestHeaderFieldsTooLarge}, {15 << 10, http.StatusOK}} {
		req, _ := http.NewRequest("GET", base+"/locks", nil)
		req.Header.Set("X-Big", strings.Repeat("h", h.size))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != h.want {
			t.Errorf("a header of %d KiB = %d; want %d", h.size>>10, resp.StatusCode, h.want)
		}
	}
}

// TestChangesFromAnotherSitesPageAreRefused: a browser signed in to
// Locker sends its credentials with every request to it, whichever page
// makes the request; a change that a page of another site makes is
// refused (403, nothing changed), while the page's own requests, reads,
// and clients that are not browsers pass.
func TestChangesFromAnotherSitesPageAreRefused(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		ts.mustSend(t, request{"PUT", "/lock/prod", `{"key": "deploy", "lock_by": "ci"}`})
		send := func(method, target, body string, header map[string]string) *httptest.ResponseRecorder {
			req := httptest.NewRequest(method, target, strings.NewReader(body))
			for k, v := range header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			ts.handler.ServeHTTP(rec, req)
			return rec
		}
		crossSite := map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
		for _, tc := range []struct {
			method, target, body string
			header               map[string]string
		}{
			{"DELETE", "/lock/prod?force=true", `{"reason": "csrf"}`, crossSite},
			{"DELETE", "/lock/prod", `{"key": "deploy"}`, map[string]string{"Sec-Fetch-Site": "same-site"}},
			{"PUT", "/lock/other", `{"key": "k"}`, map[string]string{"Origin": "http://localhost:9999"}}, // an old browser: Origin alone
			{"POST", "/credentials", `{"name": "evil", "grants": [{"role": "admin", "prefix": ""}]}`, crossSite},
			{"PUT", "/pool/p", `{"members": ["a"]}`, crossSite},
		} {
			rec := send(tc.method, tc.target, tc.body, tc.header)
			if rec.Code != http.StatusForbidden || !strings.Contains(errorOf(t, rec), "a page of another site may not change locks here") {
				t.Errorf("%s %s from another site's page = %d %s; want 403 saying why", tc.method, tc.target, rec.Code, rec.Body)
			}
		}
		if got := ts.locks(t); len(got) != 1 || got["prod"].Key != "deploy" {
			t.Errorf("after refused cross-site requests, the locks are %v; want prod alone, as it was", got)
		}
		if rec := ts.send(t, request{"GET", "/pools", ""}); !strings.Contains(rec.Body.String(), "{}") {
			t.Errorf("after a refused cross-site PUT /pool/p, GET /pools = %s; want none", rec.Body)
		}
		// Reads from anywhere, the page's own changes, and curl pass.
		if rec := send("GET", "/lock/prod", "", crossSite); rec.Code != http.StatusOK {
			t.Errorf("GET /lock/prod from another site's page = %d; want 200 (reads change nothing)", rec.Code)
		}
		if rec := send("PUT", "/lock/prod", `{"key": "deploy", "lock_by": "page"}`, map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://example.com"}); rec.Code != http.StatusOK {
			t.Errorf("PUT from Locker's own page = %d %s; want 200", rec.Code, rec.Body)
		}
		if rec := send("DELETE", "/lock/prod?force=true", `{"reason": "done"}`, nil); rec.Code != http.StatusOK {
			t.Errorf("DELETE ?force=true from curl (no Origin, no Sec-Fetch-Site) = %d %s; want 200", rec.Code, rec.Body)
		}
	})
}
