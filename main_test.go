package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
	"github.com/locker-ci/locker/internal/testcert"
	"github.com/locker-ci/locker/internal/testutil"
)

func TestRunKeepsLocksAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	env := map[string]string{"LOCKER_CONFIG": path}

	first := startRun(t, env)
	for _, r := range []struct{ method, path, body string }{
		{"PUT", "/lock/prod", `{"key": "prod-cf", "lock_by": "deploy"}`},
		{"PUT", "/lock/prod", `{"key": "prod-cf", "lock_by": "deploy"}`},
		{"PUT", "/lock/prod", `{"key": "prod-cf", "lock_by": "smoke"}`},
		{"PUT", "/lock/a%2Fb", `{"key": "k"}`},
		{"PUT", "/lock/gone", `{"key": "k"}`},
		{"DELETE", "/lock/gone", `{"key": "k"}`},
		{"DELETE", "/lock/prod", `{"key": "prod-cf", "lock_by": "deploy"}`},
	} {
		if status, body := first.call(t, r.method, r.path, r.body); status != http.StatusOK {
			t.Fatalf("%s %s = %d %s", r.method, r.path, status, body)
		}
	}
	want := first.listLocks(t)
	if err := first.shutdown(); err != nil {
		t.Fatalf("run after shutdown = %v; want nil", err)
	}
	// Request lines are buffered, and written out at the latest at shutdown.
	if !strings.Contains(first.log.String(), "msg=request method=PUT path=/lock/prod status=200") {
		t.Errorf("request log is missing a line for PUT /lock/prod:\n%s", first.log)
	}

	second := startRun(t, env)
	if got := second.listLocks(t); !reflect.DeepEqual(got, want) {
		t.Errorf("after restart GET /locks = %v; want %v", got, want)
	}
	wantLocks := named(map[string]shown{
		"prod": held("prod-cf", map[string]int{"deploy": 1, "smoke": 1}),
		"a/b":  held("k", map[string]int{"k": 1}),
	})
	if !reflect.DeepEqual(want, wantLocks) {
		t.Errorf("GET /locks = %v; want %v", want, wantLocks)
	}
	if !strings.Contains(second.log.String(), "locks=2") {
		t.Errorf("start log does not say 2 locks were loaded:\n%s", second.log)
	}
}

func TestRunLoadsTheOriginalJSONStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locker-data.yml")
	legacy := `{"prod":{"locked_by":{"prod-cf":2,"node-a":1},"key":"prod-cf"},"old":{"locked_by":{"x":0},"key":""}}`
	if err := os.WriteFile(path, []byte(legacy), 0o644); err != nil {
		t.Fatal(err)
	}
	// A server that changes nothing leaves the file as it found it.
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": path})
	want := named(map[string]shown{"prod": held("prod-cf", map[string]int{"prod-cf": 2, "node-a": 1})})
	if got := ls.listLocks(t); !reflect.DeepEqual(got, want) {
		t.Fatalf("GET /locks on the original's file = %v; want %v", got, want)
	}
	if err := ls.shutdown(); err != nil {
		t.Fatal(err)
	}
	if got := string(testutil.ReadFile(t, path)); got != legacy {
		t.Fatalf("a server that changed nothing rewrote the original's file:\n%s", got)
	}
	if _, err := os.Stat(path + ".orig"); err == nil {
		t.Error("a server that changed nothing made a .orig copy")
	}

	ls = startRun(t, map[string]string{"LOCKER_CONFIG": path})
	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "other"}`); status != http.StatusLocked {
		t.Errorf("PUT with another key = %d %s; want 423", status, body)
	}
	if status, body := ls.call(t, "DELETE", "/lock/prod", `{"key": "prod-cf", "requestor": "node-a"}`); status != http.StatusOK {
		t.Errorf("DELETE = %d %s; want 200", status, body)
	}
	if err := ls.shutdown(); err != nil {
		t.Fatal(err)
	}
	data := testutil.ReadFile(t, path)
	got, err := statefile.Decode(data)
	if err != nil || !bytes.HasPrefix(data, []byte("# Locker's lock table.")) {
		t.Fatalf("state file after a change is not this server's YAML (%v):\n%s", err, data)
	}
	prod := enginetest.LockOf("prod-cf", map[string]int{"prod-cf": 2})
	prod.Token = 1 // the original kept none; it got one on load
	if want := map[string]lock.Lock{"prod": prod}; !reflect.DeepEqual(got.Locks, want) {
		t.Errorf("state file holds %v; want %v", got, want)
	}
	// The original's bytes are kept, to roll back with, and the log says so.
	if got := string(testutil.ReadFile(t, path+".orig")); got != legacy {
		t.Errorf("%s.orig holds %q; want the original file", path, got)
	}
	if !strings.Contains(ls.log.String(), "original="+path+".orig") {
		t.Errorf("the log does not say where the original file was kept:\n%s", ls.log)
	}
}

func TestRunRefusesBadConfiguration(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "locks.yml")
	corrupt := filepath.Join(dir, "corrupt.yml")
	corruptData := []byte("version: 1\nlocks: {prod: {key: k, locked_by: {a: -3}}}\n")
	plain := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(plain, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(corrupt, corruptData, 0o600); err != nil {
		t.Fatal(err)
	}
	wrongShape := filepath.Join(dir, "other.yml")
	testutil.WriteFile(t, wrongShape, "hello: world\n")
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"no state file", map[string]string{}, "LOCKER_CONFIG is not set"},
		{"port not a number", map[string]string{"LOCKER_CONFIG": state, "PORT": "abc"}, `PORT: not a port number: "abc"`},
		{"port out of range", map[string]string{"LOCKER_CONFIG": state, "PORT": "70000"}, `PORT: not a port number: "70000"`},
		{"user without password", map[string]string{"LOCKER_CONFIG": state, "AUTH_USER": "ci"}, "AUTH_USER is set but AUTH_PASS is not"},
		{"password without user", map[string]string{"LOCKER_CONFIG": state, "AUTH_PASS": "x"}, "AUTH_PASS is set but AUTH_USER is not"},
		{"cert without key", map[string]string{"LOCKER_CONFIG": state, "SSL_CERT": "c.pem"}, "SSL_CERT is set but SSL_KEY is not"},
		{"key without cert", map[string]string{"LOCKER_CONFIG": state, "SSL_KEY": "k.pem"}, "SSL_KEY is set but SSL_CERT is not"},
		{"empty password", map[string]string{"LOCKER_CONFIG": state, "AUTH_USER": "ci", "AUTH_PASS": ""}, "AUTH_USER is set but AUTH_PASS is empty: set both, or neither"},
		{"placeholder password", map[string]string{"LOCKER_CONFIG": state, "AUTH_USER": "ci", "AUTH_PASS": "change-me"},
			`AUTH_PASS is "change-me", the placeholder of an example file: anyone who has read it knows the password. Choose one of your own, e.g. AUTH_PASS=$(openssl rand -hex 16)`},
		{"another placeholder", map[string]string{"LOCKER_CONFIG": state, "AUTH_USER": "ci", "AUTH_PASS": "<CHANGEME>"}, `AUTH_PASS is "<CHANGEME>", the placeholder`},
		{"missing cert files", map[string]string{"LOCKER_CONFIG": state, "SSL_CERT": "/nonexistent/c.pem", "SSL_KEY": "/nonexistent/k.pem"}, "SSL_CERT/SSL_KEY"},
		{"default lease over the longest", map[string]string{"LOCKER_CONFIG": state, "LOCKER_DEFAULT_TTL": "200h"}, "LOCKER_DEFAULT_TTL (200h0m0s) is over LOCKER_MAX_TTL (168h0m0s)"},
		{"default lease under a second", map[string]string{"LOCKER_CONFIG": state, "LOCKER_DEFAULT_TTL": "10ms"}, "LOCKER_DEFAULT_TTL: 10ms is under the shortest lease, 1s"},
		{"unknown log format", map[string]string{"LOCKER_CONFIG": state, "LOG_FORMAT": "xml"}, `LOG_FORMAT: "xml" is not a log format`},
		{"Concourse without a user", map[string]string{"LOCKER_CONFIG": state, "LOCKER_CONCOURSE_URL": "https://ci.example.com"}, "LOCKER_CONCOURSE_URL is set without LOCKER_CONCOURSE_USER and LOCKER_CONCOURSE_PASSWORD"},
		{"a Concourse user without the URL", map[string]string{"LOCKER_CONFIG": state, "LOCKER_CONCOURSE_USER": "locker", "LOCKER_CONCOURSE_PASSWORD": "x"}, "set without LOCKER_CONCOURSE_URL"},
		{"Concourse not a URL", map[string]string{"LOCKER_CONFIG": state, "LOCKER_CONCOURSE_URL": "ci.example.com", "LOCKER_CONCOURSE_USER": "locker", "LOCKER_CONCOURSE_PASSWORD": "x"}, `LOCKER_CONCOURSE_URL: "ci.example.com" is not an http(s) URL`},
		{"trusted origin with a path", map[string]string{"LOCKER_CONFIG": state, "LOCKER_TRUSTED_ORIGINS": "https://dash.example.com/board"}, `LOCKER_TRUSTED_ORIGINS: "https://dash.example.com/board" is not an origin`},
		{"unknown log level", map[string]string{"LOCKER_CONFIG": state, "LOG_LEVEL": "loud"}, `LOG_LEVEL: "loud" is not a level`},
		{"max lease not a duration", map[string]string{"LOCKER_CONFIG": state, "LOCKER_MAX_TTL": "a week"}, `LOCKER_MAX_TTL: not a positive duration: "a week"`},
		{"state file that is plain text", map[string]string{"LOCKER_CONFIG": plain}, "LOCKER_CONFIG " + plain + ": not a valid Locker state file: yaml: unmarshal errors:\n  line 1: cannot unmarshal !!str `hello` into the top level, which holds version, seq, last_token, last_event, locks, pools, credentials, history and requests"},
		{"state file of the wrong shape", map[string]string{"LOCKER_CONFIG": wrongShape}, "LOCKER_CONFIG " + wrongShape + ": not a valid Locker state file: yaml: unmarshal errors:\n  line 1: hello is not a field of the top level, which holds version, seq, last_token, last_event, locks, pools, credentials, history and requests"},
		{"state file that is a directory", map[string]string{"LOCKER_CONFIG": dir}, "LOCKER_CONFIG " + dir + " cannot be read"},
		{"corrupt state file", map[string]string{"LOCKER_CONFIG": corrupt}, "LOCKER_CONFIG " + corrupt + `: lock "prod": holder "a" has a negative count`},
		{"state file in a missing directory", map[string]string{"LOCKER_CONFIG": filepath.Join(dir, "nope", "locks.yml")},
			"LOCKER_CONFIG " + filepath.Join(dir, "nope", "locks.yml") + ": the directory " + filepath.Join(dir, "nope") + " does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), nil, environ(tt.env), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("run = %v; want an error containing %q", err, tt.wantErr)
			}
		})
	}
	if got := testutil.ReadFile(t, corrupt); !bytes.Equal(got, corruptData) {
		t.Errorf("run changed the corrupt state file to %q", got)
	}
	if _, err := os.Stat(state); err == nil {
		t.Errorf("a refused configuration created the state file")
	}
}

// TestRunRefusesASecondServerOnTheSameStateFile starts a second server on
// a state file that one already serves: it must refuse at once, naming the
// file and the first one's process, and leave the first untouched.
func TestRunRefusesASecondServerOnTheSameStateFile(t *testing.T) {
	state := filepath.Join(t.TempDir(), "locks.yml")
	first := startRun(t, map[string]string{"LOCKER_CONFIG": state})
	if status, body := first.call(t, "PUT", "/lock/prod", `{"key": "a"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d %s", status, body)
	}
	env := map[string]string{"LOCKER_CONFIG": state, "PORT": "0"}
	err := run(context.Background(), nil, environ(env), io.Discard, io.Discard)
	want := fmt.Sprintf("LOCKER_CONFIG %s is in use by another locker server, process %d", state, os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second run = %v; want an error containing %q", err, want)
	}
	if status, body := first.call(t, "PUT", "/lock/prod", `{"key": "b"}`); status != http.StatusLocked {
		t.Errorf("PUT with another key on the first server = %d %s; want 423: it must still hold the lock", status, body)
	}
}

func TestRunHelpAndVersion(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"-h"}, []string{"LOCKER_CONFIG", "PORT", "AUTH_USER", "AUTH_PASS", "SSL_CERT", "SSL_KEY"}},
		{[]string{"--help"}, []string{"LOCKER_CONFIG"}},
		{[]string{"--version"}, []string{"locker " + version}},
		{[]string{"version"}, []string{"locker " + version}},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		// No environment at all: help and version need none.
		if err := run(context.Background(), tt.args, nil, &out, io.Discard); err != nil {
			t.Errorf("run %v = %v", tt.args, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("run %v printed %q; want it to mention %q", tt.args, out.String(), w)
			}
		}
	}
	err := run(context.Background(), []string{"--port=3000"}, nil, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "environment variables") {
		t.Errorf("run with an unknown flag = %v; want an error pointing at the environment", err)
	}
}

func TestRunServesHTTPSWithAuth(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, certPEM := testcert.Write(t, dir)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(certPEM))
	ls := startRun(t, map[string]string{
		"LOCKER_CONFIG": filepath.Join(dir, "locks.yml"),
		"SSL_CERT":      certFile, "SSL_KEY": keyFile,
		"AUTH_USER": "ci", "AUTH_PASS": "s3cret",
	})
	ls.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}

	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "k"}`); status != http.StatusUnauthorized {
		t.Errorf("PUT without credentials = %d %s; want 401", status, body)
	}
	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "k"}`, "ci", "s3cret"); status != http.StatusOK {
		t.Errorf("PUT over HTTPS with credentials = %d %s; want 200", status, body)
	}
	if got := ls.listLocks(t, "ci", "s3cret"); len(got) != 1 {
		t.Errorf("GET /locks = %v; want the one lock", got)
	}
}

// TestListenAddressAndOpenServerWarning checks LOCKER_LISTEN, and that a
// server without auth that listens beyond this machine says so at start.
func TestListenAddressAndOpenServerWarning(t *testing.T) {
	const warning = "auth is off and locker listens beyond this machine"
	tests := []struct {
		name        string
		env         map[string]string
		wantAddr    string // prefix of the address it listens on
		wantWarning bool
	}{
		{"every interface, no auth", map[string]string{}, "[::]:", true},
		{"every interface, auth", map[string]string{"AUTH_USER": "ci", "AUTH_PASS": "s3cret"}, "[::]:", false},
		{"loopback, no auth", map[string]string{"LOCKER_LISTEN": "127.0.0.1"}, "127.0.0.1:", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.env["LOCKER_CONFIG"] = filepath.Join(t.TempDir(), "locks.yml")
			ls := startRun(t, tt.env)
			m := listenAddr.FindStringSubmatch(ls.log.String())
			if m == nil || !strings.HasPrefix(m[1], tt.wantAddr) {
				t.Errorf("listening on %v; want %s...", m, tt.wantAddr)
			}
			if got := strings.Contains(ls.log.String(), warning); got != tt.wantWarning {
				t.Errorf("warned %v; want %v\n%s", got, tt.wantWarning, ls.log)
			}
		})
	}
}

// TestFailedLoginIsLogged checks that a failed login is logged with the
// user name tried, never the password, and that the client is told the
// same whatever was wrong.
func TestFailedLoginIsLogged(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "AUTH_USER": "ci", "AUTH_PASS": "s3cret"})
	_, wrongPass := ls.call(t, "GET", "/locks", "", "ci", "guess-1")
	_, wrongUser := ls.call(t, "GET", "/locks", "", "intruder", "s3cret")
	if !bytes.Equal(wrongPass, wrongUser) {
		t.Errorf("the replies differ by cause: %s / %s", wrongPass, wrongUser)
	}
	log := ls.log.String()
	for _, want := range []string{`msg="authentication failed" user=ci`, `msg="authentication failed" user=intruder`} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "guess-1") {
		t.Errorf("the log holds a password that was tried:\n%s", log)
	}
}

// TestHealthAndReadiness checks /healthz and /readyz, which answer without
// credentials: ready while the disk takes changes, 503 with the reason
// from a failed write until a write succeeds again.
func TestHealthAndReadiness(t *testing.T) {
	d := &faults.Faulty{}
	ls := startServe(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "AUTH_USER": "ci", "AUTH_PASS": "s3cret"}, d)
	for _, path := range []string{"/healthz", "/readyz"} {
		status, body := ls.call(t, "GET", path, "")
		if status != http.StatusOK || !json.Valid(body) {
			t.Errorf("GET %s without credentials = %d %s; want 200 and JSON", path, status, body)
		}
		if status, _ := ls.call(t, "HEAD", path, ""); status != http.StatusOK {
			t.Errorf("HEAD %s = %d; want 200", path, status)
		}
		// Unknown parameters are refused here as everywhere.
		if status, body := ls.call(t, "GET", path+"?x=1", ""); status != http.StatusBadRequest || !strings.Contains(string(body), `unknown query parameter \"x\"`) {
			t.Errorf("GET %s?x=1 = %d %s; want 400 naming x", path, status, body)
		}
	}
	if status, _ := ls.call(t, "GET", "/locks", ""); status != http.StatusUnauthorized {
		t.Errorf("GET /locks without credentials = %d; want 401: only the health checks are open", status)
	}

	d.Fail("jwrite")
	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "k"}`, "ci", "s3cret"); status != http.StatusInternalServerError {
		t.Fatalf("PUT with the disk failing = %d %s; want 500", status, body)
	}
	status, body := ls.call(t, "GET", "/readyz", "")
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), "not ready: the last change could not be saved") {
		t.Errorf("GET /readyz after a failed write = %d %s; want 503 with the reason", status, body)
	}
	if status, _ := ls.call(t, "GET", "/healthz", ""); status != http.StatusOK {
		t.Errorf("GET /healthz after a failed write = %d; want 200: the process still serves", status)
	}
	d.Fail("")
	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "k"}`, "ci", "s3cret"); status != http.StatusOK {
		t.Fatalf("PUT once the disk works = %d %s", status, body)
	}
	if status, body := ls.call(t, "GET", "/readyz", ""); status != http.StatusOK {
		t.Errorf("GET /readyz after a write succeeded = %d %s; want 200", status, body)
	}
}

// TestLogFormatAndLevel checks LOG_FORMAT=json (every line is a JSON
// object) and LOG_LEVEL=warn (request lines gone, warnings kept).
func TestLogFormatAndLevel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close() // run listens there now
	env := map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "PORT": port, "LOCKER_LISTEN": "127.0.0.1",
		"LOG_FORMAT": "json", "LOG_LEVEL": "warn"}
	var log testutil.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, environ(env), io.Discard, &log) }()
	url := "http://127.0.0.1:" + port
	testutil.WaitFor(t, "the server to serve", func() bool {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	testutil.HTTPDo(t, url, "PUT", "/lock/prod", `{"key": "k"}`)
	testutil.HTTPDo(t, url, "DELETE", "/lock/prod?force=true", "")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	warned := false
	for _, line := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Errorf("log line is not JSON: %q", line)
		}
		if v["level"] == "INFO" {
			t.Errorf("an info line with LOG_LEVEL=warn: %q", line)
		}
		warned = warned || v["msg"] == "lock force-released"
	}
	if !warned {
		t.Errorf("the forced release's warning is missing:\n%s", log.String())
	}
}

// TestMisspeltVariablesAreWarnedOf starts a server with a misspelt
// setting: it serves (the setting is not needed), and its log says which
// variable is ignored and which one was meant.
func TestMisspeltVariablesAreWarnedOf(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"),
		"LOCKER_MAXWAIT": "5m", "LOCKER_SOMETHING": "1", "LOCKER_URL": "http://x"})
	if status, body := ls.call(t, "PUT", "/lock/prod", `{"key": "k"}`); status != http.StatusOK {
		t.Fatalf("PUT = %d %s", status, body)
	}
	log := ls.log.String()
	for _, want := range []string{
		`level=WARN msg="LOCKER_MAXWAIT is not a setting of locker's, and is ignored; did you mean LOCKER_MAX_WAIT?"`,
		`level=WARN msg="LOCKER_SOMETHING is not a setting of locker's, and is ignored"`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %s:\n%s", want, log)
		}
	}
	if strings.Contains(log, "LOCKER_URL") {
		t.Errorf("the log warns of LOCKER_URL, the client's setting:\n%s", log)
	}
}
