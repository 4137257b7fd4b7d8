package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/config"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/keyring"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/testutil"
)

// The API tests' helpers: the real router over a real engine (testServer),
// and the whole server through run() on a real port (liveServer).

// testServer is the real router over a table saved in a temp directory.
type testServer struct {
	handler http.Handler
	server  *server // its settings, which the handler reads at each request
	path    string  // the state file
	user    string  // basic-auth user sent by send; "" when auth is off
	pass    string
}

func newTestServer(tb testing.TB, d atomicfile.FS, user, pass string) *testServer {
	tb.Helper()
	tab := enginetest.File(tb, d)
	path := tab.Path
	return serveTable(tab, path, user, pass)
}

// serveTable is the real router over tab, saved in path.
func serveTable(tab *enginetest.Table, path, user, pass string) *testServer {
	s := &server{locks: tab.Engine, hub: tab.Hub, log: enginetest.DiscardLog, maxWait: config.DefaultMaxWait, maxTTL: config.DefaultMaxTTL, writeTimeout: defaultTimeouts.write, streamBuffer: defaultStreamBuffer,
		metrics: metrics.New("test", metrics.Gauges{Table: func() metrics.TableStats { return metrics.TableStats{} }})}
	s.keys = keyring.New(user, pass)
	s.origins = http.NewCrossOriginProtection()
	if err := s.reloadCredentials(context.Background()); err != nil {
		panic(err)
	}
	return &testServer{handler: s.routes(), server: s, path: path, user: user, pass: pass}
}

// request is one HTTP request in a test table.
type request struct {
	method, target, body string
}

// send passes r through the router with the server's credentials.
func (ts *testServer) send(tb testing.TB, r request) *httptest.ResponseRecorder {
	tb.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req := httptest.NewRequest(r.method, r.target, body)
	if ts.user != "" {
		req.SetBasicAuth(ts.user, ts.pass)
	}
	rec := httptest.NewRecorder()
	ts.handler.ServeHTTP(rec, req)
	return rec
}

// mustSend sends r and fails the test unless it is answered 200.
func (ts *testServer) mustSend(tb testing.TB, r request) {
	tb.Helper()
	if rec := ts.send(tb, r); rec.Code != http.StatusOK {
		tb.Fatalf("%s %s %s = %d %s; want 200", r.method, r.target, r.body, rec.Code, rec.Body)
	}
}

// locks returns GET /locks, decoded.
func (ts *testServer) locks(tb testing.TB) map[string]shown {
	tb.Helper()
	rec := ts.send(tb, request{"GET", "/locks", ""})
	if rec.Code != http.StatusOK {
		tb.Fatalf("GET /locks = %d %s", rec.Code, rec.Body)
	}
	var got map[string]shown
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		tb.Fatalf("GET /locks body %q: %v", rec.Body, err)
	}
	return got
}

// errorOf checks that rec is a JSON error and returns its message.
func errorOf(tb testing.TB, rec *httptest.ResponseRecorder) string {
	tb.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		tb.Errorf("Content-Type = %q; want application/json", ct)
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body["error"] == "" || len(body) != 1 {
		tb.Fatalf("body = %q; want {\"error\": \"...\"}", rec.Body)
	}
	return body["error"]
}

// shown is the part of a lock the original API showed, and its name.
type shown struct {
	Name     string         `json:"name"`
	Key      string         `json:"key"`
	LockedBy map[string]int `json:"locked_by"`
}

func held(key string, lockedBy map[string]int) shown {
	return shown{Key: key, LockedBy: lockedBy}
}

// named fills in the names of the locks in want, as GET /locks shows them.
func named(want map[string]shown) map[string]shown {
	for name, v := range want {
		v.Name = name
		want[name] = v
	}
	return want
}

// sendKeyed passes r through the router with an Idempotency-Key.
func (ts *testServer) sendKeyed(tb testing.TB, r request, key string) *httptest.ResponseRecorder {
	tb.Helper()
	req := httptest.NewRequest(r.method, r.target, strings.NewReader(r.body))
	req.Header.Set("Idempotency-Key", key)
	rec := httptest.NewRecorder()
	ts.handler.ServeHTTP(rec, req)
	return rec
}

// claimReply is what a claim's answer says: the members it got, and the
// holders of each.
type claimReply struct {
	Locks map[string]struct {
		Key   string `json:"key"`
		Token uint64 `json:"token"`
	} `json:"locks"`
}

// members returns the members a claim's answer gives, sorted.
func (c claimReply) members() []string {
	var names []string
	for name := range c.Locks {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// decodeClaim reads a claim's 200 answer.
func decodeClaim(tb testing.TB, rec *httptest.ResponseRecorder) claimReply {
	tb.Helper()
	var c claimReply
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &c) != nil {
		tb.Fatalf("claim = %d %s; want 200 with the members", rec.Code, rec.Body)
	}
	return c
}

// forEachServer runs f as a subtest on each store, with the real router
// over it.
func forEachServer(t *testing.T, f func(t *testing.T, ts *testServer)) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		f(t, serveTable(open(t), "", "", ""))
	})
}

// inBackground sends r (with an Idempotency-Key, unless key is "") in a
// goroutine and returns its answer's channel.
func (ts *testServer) inBackground(tb testing.TB, r request, key string) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		if key == "" {
			done <- ts.send(tb, r)
			return
		}
		done <- ts.sendKeyed(tb, r, key)
	}()
	return done
}

// poolWaiting returns how many claims wait for the pool.
func (ts *testServer) poolWaiting(tb testing.TB, pool string) int {
	tb.Helper()
	rec := ts.send(tb, request{"GET", "/pool/" + pool, ""})
	var v struct {
		Waiting []json.RawMessage `json:"waiting"`
	}
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &v) != nil {
		tb.Fatalf("GET /pool/%s = %d %s", pool, rec.Code, rec.Body)
	}
	return len(v.Waiting)
}

// answer waits for a request sent in the background.
func answer(tb testing.TB, done <-chan *httptest.ResponseRecorder, what string) *httptest.ResponseRecorder {
	tb.Helper()
	select {
	case rec := <-done:
		return rec
	case <-time.After(20 * time.Second):
		tb.Fatalf("%s was not answered", what)
		return nil
	}
}

// liveServer is run() serving on a real port.
type liveServer struct {
	url    string // http(s)://127.0.0.1:port
	log    *testutil.SyncBuffer
	stop   context.CancelFunc
	done   chan error
	client *http.Client
}

var listenAddr = regexp.MustCompile(`msg="locker listening" addr=(\S+)`)

// environ returns env as os.Environ would.
func environ(env map[string]string) []string {
	var kvs []string
	for k, v := range env {
		kvs = append(kvs, k+"="+v)
	}
	return kvs
}

// startRun starts run with env (PORT defaults to 0) and waits until it
// serves. The server is stopped when the test ends, if not before.
func startRun(tb testing.TB, env map[string]string) *liveServer {
	tb.Helper()
	return startServe(tb, env, nil)
}

// startServe is startRun with the server's disk operations going through d
// (the real disk when d is nil).
func startServe(tb testing.TB, env map[string]string, d atomicfile.FS) *liveServer {
	tb.Helper()
	if _, ok := env["PORT"]; !ok {
		env["PORT"] = "0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	ls := &liveServer{log: &testutil.SyncBuffer{}, stop: cancel, done: make(chan error, 1), client: &http.Client{Timeout: 10 * time.Second}}
	go func() {
		if d == nil {
			ls.done <- run(ctx, nil, environ(env), io.Discard, ls.log)
			return
		}
		cfg, err := loadConfig(environ(env))
		if err != nil {
			ls.done <- err
			return
		}
		ls.done <- serve(ctx, cfg, d, ls.log)
	}()
	tb.Cleanup(func() { _ = ls.shutdown() })

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := listenAddr.FindStringSubmatch(ls.log.String()); m != nil {
			_, port, err := net.SplitHostPort(m[1])
			if err != nil {
				tb.Fatalf("listening address %q: %v", m[1], err)
			}
			scheme := "http"
			if env["SSL_CERT"] != "" {
				scheme = "https"
			}
			ls.url = scheme + "://127.0.0.1:" + port
			return ls
		}
		select {
		case err := <-ls.done:
			tb.Fatalf("run returned before serving: %v\nlog:\n%s", err, ls.log)
		case <-time.After(10 * time.Millisecond):
		}
	}
	tb.Fatalf("server did not start within 10s; log:\n%s", ls.log)
	return nil
}

// shutdown cancels run's context, as SIGTERM does, and returns what run
// returned. It may be called more than once.
func (ls *liveServer) shutdown() error {
	ls.stop()
	select {
	case err, ok := <-ls.done:
		if ok {
			close(ls.done)
		}
		return err
	case <-time.After(15 * time.Second):
		return context.DeadlineExceeded
	}
}

// onEachStore runs f with env and a store of each kind added to it: a
// state file, then a PostgreSQL schema of its own.
func onEachStore(t *testing.T, env map[string]string, f func(t *testing.T, env map[string]string)) {
	for _, store := range []string{"file", "postgres"} {
		t.Run(store, func(t *testing.T) {
			e := maps.Clone(env)
			if store == "file" {
				e["LOCKER_CONFIG"] = filepath.Join(t.TempDir(), "locks.yml")
			} else {
				e["LOCKER_DATABASE_URL"] = testutil.PostgresSchema(t)
			}
			f(t, e)
		})
	}
}

// request sends a request with header and returns the response (its body
// read and closed) and its body.
func (ls *liveServer) request(tb testing.TB, method, path, body string, header http.Header) (*http.Response, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, ls.url+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	maps.Copy(req.Header, header)
	resp, err := ls.client.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp, data
}

// call sends a request and returns its status and body.
func (ls *liveServer) call(tb testing.TB, method, path, body string, auth ...string) (int, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, ls.url+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if len(auth) == 2 {
		req.SetBasicAuth(auth[0], auth[1])
	}
	resp, err := ls.client.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, data
}

func (ls *liveServer) listLocks(tb testing.TB, auth ...string) map[string]shown {
	tb.Helper()
	status, body := ls.call(tb, "GET", "/locks", "", auth...)
	if status != http.StatusOK {
		tb.Fatalf("GET /locks = %d %s", status, body)
	}
	var got map[string]shown
	if err := json.Unmarshal(body, &got); err != nil {
		tb.Fatalf("GET /locks body %q: %v", body, err)
	}
	return got
}

// waiting returns how many requests wait for the lock called name.
func (ls *liveServer) waiting(tb testing.TB, name string) int {
	tb.Helper()
	status, body := ls.call(tb, "GET", "/lock/"+name, "")
	var v lock.View
	if err := json.Unmarshal(body, &v); status != http.StatusOK || err != nil {
		tb.Fatalf("GET /lock/%s = %d %s", name, status, body)
	}
	return len(v.Waiting)
}

// stripQueues drops the queues, which are not kept on disk.
func stripQueues(m map[string]engine.Snapshot) map[string]lock.Lock {
	out := map[string]lock.Lock{}
	for name, s := range m {
		if !s.Free() {
			out[name] = s.Lock
		}
	}
	return out
}

// shortTimeouts are server timeouts short enough for tests to outlast.
var shortTimeouts = timeouts{readHeader: 300 * time.Millisecond, read: time.Second, write: time.Second, idle: time.Second}

// startShortTimeouts serves the router on 127.0.0.1 with shortTimeouts.
func startShortTimeouts(tb testing.TB) (string, *enginetest.Table) {
	tb.Helper()
	return startWithTimeouts(tb, shortTimeouts)
}

// startWithTimeouts serves the router on 127.0.0.1 with the given server
// timeouts and returns its address and table.
func startWithTimeouts(tb testing.TB, short timeouts) (string, *enginetest.Table) {
	tb.Helper()
	tab := enginetest.File(tb, nil)
	s := &server{locks: tab.Engine, hub: tab.Hub, log: enginetest.DiscardLog, maxWait: time.Minute, writeTimeout: short.write}
	httpSrv := newHTTPServer(s.routes(), enginetest.DiscardLog, short, context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = httpSrv.Serve(ln) }()
	tb.Cleanup(func() { _ = httpSrv.Close() })
	return ln.Addr().String(), tab
}

// setOf returns n lock names as JSON strings, each followed by a comma.
func setOf(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "%q,", fmt.Sprintf("lock-%d", i))
	}
	return b.String()
}

// putAsyncAuth sends a PUT with the test credentials in the background,
// and gives its status (0 if it could not be sent).
func putAsyncAuth(tb testing.TB, base, path, body string) <-chan int {
	done := make(chan int, 1)
	answer := inBackground(base, "PUT", path, body, "ci", "s3cret")
	go func() {
		a := <-answer
		done <- a.status
	}()
	return done
}

// answered is the answer to a request sent in the background: its status
// (0 if it could not be sent) and its JSON error, if any.
type answered struct {
	status int
	err    string
}

// String is the answer as "409 removed from the queue ...".
func (a answered) String() string { return fmt.Sprintf("%d %s", a.status, a.err) }

// inBackground sends a request (with basic auth when auth is a name and
// a password) in the background, and gives its answer.
func inBackground(base, method, path, body string, auth ...string) <-chan answered {
	done := make(chan answered, 1)
	go func() {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if len(auth) == 2 {
			req.SetBasicAuth(auth[0], auth[1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- answered{err: err.Error()}
			return
		}
		defer resp.Body.Close()
		var e struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		done <- answered{status: resp.StatusCode, err: e.Error}
	}()
	return done
}

// statusServer is the real router over a table whose clock the test moves.
func statusServer(t *testing.T, user, pass string) (*testServer, *enginetest.Table, *testutil.FakeClock) {
	t.Helper()
	clock := testutil.NewFakeClock()
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := enginetest.Load(t, path, nil, clock.Now)
	return serveTable(tab, path, user, pass), tab, clock
}

// page returns GET target's body, failing the test unless it is a 200
// HTML page.
func (ts *testServer) page(t *testing.T, target string) string {
	t.Helper()
	rec := ts.send(t, request{"GET", target, ""})
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s = %d %s; want 200", target, rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("GET %s: Content-Type = %q; want text/html; charset=utf-8", target, ct)
	}
	return rec.Body.String()
}

// cards returns the lock names on a status page, in order.
func cards(body string) []string {
	var names []string
	for _, m := range regexp.MustCompile(`<article class="lock[^"]*" data-name="([^"]*)"`).FindAllStringSubmatch(body, -1) {
		names = append(names, m[1])
	}
	return names
}

// nbsp puts no-break spaces in s where it has spaces, as the page writes
// durations.
func nbsp(s string) string { return strings.ReplaceAll(s, " ", "\u00a0") }
