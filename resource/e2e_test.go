package resource

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/client"
	"github.com/locker-ci/locker/internal/testcert"
	"github.com/locker-ci/locker/internal/testutil"
)

// End-to-end tests: the real locker server, built from this repository and
// run as its own process, and the resource's commands, both in-process and
// as the built binaries Concourse would run.

// bin holds the binaries TestMain builds: locker, check, in, out.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "locker-resource-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	code := build(dir)
	if code == 0 {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func build(dir string) int {
	for name, pkg := range map[string]string{
		"locker": "github.com/locker-ci/locker",
		"check":  "github.com/locker-ci/locker/resource/cmd/check",
		"in":     "github.com/locker-ci/locker/resource/cmd/in",
		"out":    "github.com/locker-ci/locker/resource/cmd/out",
	} {
		if out, err := testutil.GoBuild(filepath.Join(dir, name), pkg); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", name, err, out)
			return 1
		}
	}
	return 0
}

// lockerServer is the locker binary running on a loopback port.
type lockerServer struct {
	url string
}

// startLocker runs the locker binary with env added to a fresh state file
// and waits until it listens. It is stopped when the test ends.
func startLocker(tb testing.TB, env ...string) *lockerServer {
	tb.Helper()
	s := testutil.StartServer(tb, filepath.Join(bin, "locker"), append([]string{"LOCKER_CONFIG=" + filepath.Join(tb.TempDir(), "locks.yml")}, env...)...)
	tb.Cleanup(s.Stop)
	return &lockerServer{url: s.URL}
}

// result is what one run of a command printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

// runBinary runs the built command name with the request on stdin.
func runBinary(tb testing.TB, name string, req any, args ...string) result {
	tb.Helper()
	cmd := startBinary(tb, name, req, args...)
	return cmd.wait(tb)
}

type runningCmd struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
}

// startBinary starts the built command name in the background, as
// Concourse runs it (its BUILD_ variables set, BUILD_ID among them when
// the test set buildID).
func startBinary(tb testing.TB, name string, req any, args ...string) *runningCmd {
	tb.Helper()
	stdin, err := json.Marshal(req)
	if err != nil {
		tb.Fatal(err)
	}
	if s, ok := req.(string); ok {
		stdin = []byte(s) // a raw payload, possibly broken on purpose
	}
	rc := &runningCmd{cmd: exec.Command(filepath.Join(bin, name), args...), done: make(chan struct{})}
	rc.cmd.Stdin = bytes.NewReader(stdin)
	rc.cmd.Stdout, rc.cmd.Stderr = &rc.stdout, &rc.stderr
	rc.cmd.Env = []string{
		"ATC_EXTERNAL_URL=https://ci.example.com", "BUILD_TEAM_NAME=main", "BUILD_PIPELINE_NAME=deploy",
		"BUILD_JOB_NAME=" + name, "BUILD_NAME=1",
	}
	if buildID != "" {
		rc.cmd.Env = append(rc.cmd.Env, "BUILD_ID="+buildID)
	}
	if err := rc.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		_ = rc.cmd.Wait()
		close(rc.done)
	}()
	tb.Cleanup(func() {
		_ = rc.cmd.Process.Kill()
		<-rc.done
	})
	return rc
}

func (rc *runningCmd) finished() bool {
	select {
	case <-rc.done:
		return true
	default:
		return false
	}
}

func (rc *runningCmd) wait(tb testing.TB) result {
	tb.Helper()
	select {
	case <-rc.done:
	case <-time.After(30 * time.Second):
		tb.Fatalf("%s did not finish; stderr:\n%s", rc.cmd.Path, rc.stderr.String())
	}
	return result{code: rc.cmd.ProcessState.ExitCode(), stdout: rc.stdout.String(), stderr: rc.stderr.String()}
}

// getLock reads the lock called name straight from the server.
func (ls *lockerServer) getLock(tb testing.TB, name string, src Source) client.Reply {
	tb.Helper()
	src.LockName, src.BoshLock = name, ""
	l, _, err := getLock(context.Background(), src)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

func waitUntil(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func outReq(src Source, op, key, by string) OutRequest {
	return OutRequest{Source: src, Params: OutParams{LockOp: op, Key: key, LockedBy: by}}
}

func mustSucceed(tb testing.TB, what string, r result) Response {
	tb.Helper()
	if r.code != 0 {
		tb.Fatalf("%s exited %d; stderr:\n%s", what, r.code, r.stderr)
	}
	var resp Response
	if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil {
		tb.Fatalf("%s printed %q on stdout: %v", what, r.stdout, err)
	}
	return resp
}

func metadata(resp Response, name string) string {
	for _, m := range resp.Metadata {
		if m.Name == name {
			return m.Value
		}
	}
	return ""
}

func TestTwoJobsExcludeEachOther(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	first := mustSucceed(t, "first lock", runBinary(t, "out", outReq(src, "lock", "job-a", "job-a")))

	second := startBinary(t, "out", outReq(src, "lock", "job-b", "job-b"))
	waitUntil(t, "the second job to queue", func() bool { return len(ls.getLock(t, "prod", src).Waiting) == 1 })
	if second.finished() {
		t.Fatal("the second job got past its put while the first holds the lock")
	}

	mustSucceed(t, "first unlock", runBinary(t, "out", outReq(src, "unlock", "job-a", "job-a")))
	released := time.Now()
	got := mustSucceed(t, "second lock", second.wait(t))
	t.Logf("second job had the lock %v after the first unlocked", time.Since(released))
	if metadata(got, "key") != "job-b" || metadata(got, "lock_name") != "prod" || metadata(got, "token") <= metadata(first, "token") {
		t.Errorf("second job's metadata = %v; want key job-b and a newer token than %v", got.Metadata, first.Metadata)
	}
	// The note defaults to the build's URL.
	if note := ls.getLock(t, "prod", src).Holders["job-b"].Note; note != "https://ci.example.com/teams/main/pipelines/deploy/jobs/out/builds/1" {
		t.Errorf("note = %q; want the build's URL", note)
	}
}

func TestSharedKeyWhileAnotherWaits(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "staging"}
	for _, by := range []string{"test-1", "test-2", "test-3"} {
		mustSucceed(t, by, runBinary(t, "out", outReq(src, "lock", "tests", by)))
	}
	upgrade := startBinary(t, "out", outReq(src, "lock", "upgrade", "upgrade"))
	waitUntil(t, "the upgrade to queue", func() bool { return len(ls.getLock(t, "staging", src).Waiting) == 1 })
	for _, by := range []string{"test-1", "test-2"} {
		mustSucceed(t, by+" unlock", runBinary(t, "out", outReq(src, "unlock", "tests", by)))
	}
	if upgrade.finished() {
		t.Fatal("the upgrade got the lock while test-3 still holds it")
	}
	mustSucceed(t, "test-3 unlock", runBinary(t, "out", outReq(src, "unlock", "tests", "test-3")))
	mustSucceed(t, "upgrade", upgrade.wait(t))
	if l := ls.getLock(t, "staging", src); l.Key != "upgrade" {
		t.Errorf("lock is held with %q; want upgrade", l.Key)
	}
}

func TestLeaseFreesAnAbortedJobsLock(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	req := outReq(src, "lock", "aborted", "aborted")
	req.Params.TTL = "1s"
	mustSucceed(t, "lock with a lease", runBinary(t, "out", req)) // never unlocked
	start := time.Now()
	mustSucceed(t, "next job", runBinary(t, "out", outReq(src, "lock", "next", "next")))
	if waited := time.Since(start); waited > 30*time.Second { // without the lease: until its wait ran out
		t.Errorf("next job waited %v for a 1s lease", waited)
	}
}

func TestCheckAndInAfterPut(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	free := runBinary(t, "check", CheckRequest{Source: src})
	var freeVersions []Version
	if free.code != 0 || json.Unmarshal([]byte(free.stdout), &freeVersions) != nil || len(freeVersions) != 1 {
		t.Fatalf("check on a free lock = %d %q %s", free.code, free.stdout, free.stderr)
	}

	put := mustSucceed(t, "put", runBinary(t, "out", outReq(src, "lock", "k", "me")))
	var versions []Version
	r := runBinary(t, "check", CheckRequest{Source: src, Version: &freeVersions[0]})
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &versions) != nil {
		t.Fatalf("check = %d %q %s", r.code, r.stdout, r.stderr)
	}
	if len(versions) != 1 || versions[0] != put.Version || put.Version == freeVersions[0] {
		t.Errorf("check after put = %v; want [%v], the put's version (free was %v)", versions, put.Version, freeVersions[0])
	}

	dest := t.TempDir()
	got := mustSucceed(t, "in", runBinary(t, "in", InRequest{Source: src, Version: &put.Version}, dest))
	if got.Version != put.Version {
		t.Errorf("in answered version %v; want the put's %v", got.Version, put.Version)
	}
	if metadata(got, "locked") != "true" || metadata(got, "key") != "k" || metadata(got, "lock_name") != "prod" {
		t.Errorf("in metadata = %v", got.Metadata)
	}
	files := map[string]string{}
	for _, f := range []string{"lock", "name", "token"} {
		data, err := os.ReadFile(filepath.Join(dest, f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = string(data)
	}
	var entry struct {
		Key      string         `json:"key"`
		LockedBy map[string]int `json:"locked_by"`
	}
	if err := json.Unmarshal([]byte(files["lock"]), &entry); err != nil || entry.Key != "k" || entry.LockedBy["me"] != 1 {
		t.Errorf("lock file = %q; want the lock's JSON entry", files["lock"])
	}
	if files["name"] != "prod" || files["token"] != metadata(put, "token") {
		t.Errorf("name, token files = %q, %q; want prod, %s", files["name"], files["token"], metadata(put, "token"))
	}

	// After an unlock the version moves on again.
	unlocked := mustSucceed(t, "unlock", runBinary(t, "out", outReq(src, "unlock", "k", "me")))
	if unlocked.Version == put.Version {
		t.Errorf("unlock kept the version %v", put.Version)
	}
}

func TestBasicAuth(t *testing.T) {
	ls := startLocker(t, "AUTH_USER=ci", "AUTH_PASS=s3cret")
	src := Source{LockerURI: ls.url, LockName: "prod", Username: "ci", Password: "s3cret"}
	mustSucceed(t, "lock with credentials", runBinary(t, "out", outReq(src, "lock", "k", "")))

	src.Password = "wrong"
	start := time.Now()
	r := runBinary(t, "out", outReq(src, "lock", "k", ""))
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "401 Unauthorized: authentication required: set source.username and source.password to a locker credential's name and secret (or its AUTH_USER and AUTH_PASS)\n") {
		t.Errorf("lock with a wrong password = %d %q %q; want exit 1 with the server's message", r.code, r.stdout, r.stderr)
	}
	if d := time.Since(start); d > 30*time.Second { // retrying, it would go on for minutes
		t.Errorf("a 401 took %v; it must fail at once, not retry", d)
	}
}

func TestHTTPSWithCACert(t *testing.T) {
	certFile, keyFile, certPEM := testcert.Write(t, t.TempDir())
	ls := startLocker(t, "SSL_CERT="+certFile, "SSL_KEY="+keyFile)
	src := Source{LockerURI: ls.url, LockName: "prod", CACert: certPEM}
	mustSucceed(t, "lock over HTTPS", runBinary(t, "out", outReq(src, "lock", "k", "")))

	src.CACert = ""
	r := runBinary(t, "check", CheckRequest{Source: src})
	if r.code != 1 || !strings.Contains(r.stderr, "not signed by a CA this client trusts: set source.ca_cert") ||
		!strings.Contains(r.stderr, "source.skip_ssl_validation: true") {
		t.Errorf("check without the CA = %d %q; want a certificate error naming source.ca_cert and source.skip_ssl_validation", r.code, r.stderr)
	}
	src.SkipSSLValidation = true
	if r := runBinary(t, "check", CheckRequest{Source: src}); r.code != 0 {
		t.Errorf("check with skip_ssl_validation = %d %q", r.code, r.stderr)
	}
}

func TestBoshLockUsesTheDirectorsName(t *testing.T) {
	director := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/info" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `{"name":"prod/director","uuid":"x","version":"270.0.0"}`)
	}))
	defer director.Close()
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, BoshLock: director.URL}
	got := mustSucceed(t, "lock", runBinary(t, "out", outReq(src, "lock", "k", "")))
	if metadata(got, "lock_name") != "prod/director" {
		t.Errorf("lock_name = %q; want the director's name", metadata(got, "lock_name"))
	}
	if l := ls.getLock(t, "prod/director", Source{LockerURI: ls.url}); l.Key != "k" {
		t.Errorf("lock prod/director = %+v; want it held with k", l)
	}
}

func TestTimeoutGivesUp(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	mustSucceed(t, "holder", runBinary(t, "out", outReq(src, "lock", "holder", "")))
	req := outReq(src, "lock", "other", "")
	req.Params.Timeout = "1s"
	r := runBinary(t, "out", req)
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, `gave up on lock "prod" after 1s`) || !strings.Contains(r.stderr, `key "holder"`) {
		t.Errorf("lock with timeout 1s on a held lock = %d %q %q; want exit 1 saying it gave up and who holds it", r.code, r.stdout, r.stderr)
	}
	if n := len(ls.getLock(t, "prod", src).Waiting); n != 0 {
		t.Errorf("%d requests still queued after the put gave up", n)
	}
}

func TestUnlockWithAnotherKeyFails(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	mustSucceed(t, "lock", runBinary(t, "out", outReq(src, "lock", "mine", "")))
	r := runBinary(t, "out", outReq(src, "unlock", "yours", ""))
	if want := `error: "prod" is held with key "mine" by mine (1); params.key must be the key the lock was taken with`; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("unlock with another key = %d %q; want exit 1 with %q", r.code, r.stderr, want)
	}
}

// TestUnlockThatReleasesNothingFails: an unlock whose key or locked_by
// matches no holder (a typo in an ensure:) fails the step with the
// server's reason, unless allow_not_held says that is fine.
func TestUnlockThatReleasesNothingFails(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	mustSucceed(t, "lock", runBinary(t, "out", outReq(src, "lock", "deploy", "deploy-job")))
	r := runBinary(t, "out", outReq(src, "unlock", "deploy", "deploy-jbo"))
	if r.code != 1 || !strings.Contains(r.stderr, `unlock of "prod" gave back nothing: the requestor "deploy-jbo" holds no count of prod`) ||
		!strings.Contains(r.stderr, "params.allow_not_held: true") {
		t.Errorf("unlock by a requestor that holds nothing = %d %q; want exit 1 with the server's reason", r.code, r.stderr)
	}
	if l := ls.getLock(t, "prod", src); l.LockedBy["deploy-job"] != 1 {
		t.Errorf("the lock after the failed unlock = %v; want it still held", l.LockedBy)
	}
	allowed := outReq(src, "unlock", "deploy", "never-locked")
	allowed.Params.AllowNotHeld = true
	if r := runBinary(t, "out", allowed); r.code != 0 || !strings.Contains(r.stderr, "allowed by allow_not_held") {
		t.Errorf("unlock with allow_not_held = %d %q; want exit 0, saying so", r.code, r.stderr)
	}
	mustSucceed(t, "unlock by the holder", runBinary(t, "out", outReq(src, "unlock", "deploy", "deploy-job")))
}

// TestInWritesTheVersionsToken: after a lease ran out and another job took
// the lock, a get of the old version gets the old version's token, not the
// new holder's.
func TestInWritesTheVersionsToken(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	first := mustSucceed(t, "lock", runBinary(t, "out", outReq(src, "lock", "a", "")))
	mustSucceed(t, "unlock", runBinary(t, "out", outReq(src, "unlock", "a", "")))
	second := mustSucceed(t, "lock by another job", runBinary(t, "out", outReq(src, "lock", "b", "")))
	if metadata(first, "token") == metadata(second, "token") {
		t.Fatalf("both grants have token %s", metadata(first, "token"))
	}
	dest := t.TempDir()
	mustSucceed(t, "in", runBinary(t, "in", InRequest{Source: src, Version: &first.Version}, dest))
	if got, _ := os.ReadFile(filepath.Join(dest, "token")); string(got) != metadata(first, "token") {
		t.Errorf("in of the first version wrote token %q; want %s (the version's), not the current holder's %s",
			got, metadata(first, "token"), metadata(second, "token"))
	}
}

func TestUnreachableServerIsRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	req := outReq(Source{LockerURI: "http://" + addr, LockName: "prod"}, "lock", "k", "")
	req.Params.Timeout = "3s"
	r := runBinary(t, "out", req)
	if r.code != 1 || strings.Count(r.stderr, "trying again in") < 2 || !strings.Contains(r.stderr, "gave up on lock \"prod\" after 3s") {
		t.Errorf("lock against a closed port = %d %q; want retries said on stderr, then exit 1", r.code, r.stderr)
	}
}

func TestBadPayloads(t *testing.T) {
	src := Source{LockerURI: "http://127.0.0.1:1", LockName: "prod"}
	tests := []struct {
		name    string
		command string
		payload any
		args    []string
		want    string
	}{
		{"missing locker_uri", "check", CheckRequest{Source: Source{LockName: "prod"}}, nil, "source.locker_uri is missing"},
		{"neither lock_name nor bosh_lock", "check", CheckRequest{Source: Source{LockerURI: "http://x"}}, nil, "set one of source.lock_name"},
		{"both lock_name and bosh_lock", "in", InRequest{Source: Source{LockerURI: "http://x", LockName: "a", BoshLock: "http://b"}}, []string{"/tmp/x"}, "keep one"},
		{"unknown lock_op", "out", outReq(src, "grab", "k", ""), nil, `params.lock_op is "grab"`},
		{"missing key", "out", outReq(src, "lock", "", ""), nil, "params.key is missing"},
		{"malformed JSON", "out", `{"source": {`, nil, "the request on stdin is not valid"},
		{"misspelt source field", "check", `{"source": {"locker_uri": "http://x", "lock_nmae": "prod"}}`, nil,
			"error: source.lock_nmae is not a field of the resource's source; did you mean source.lock_name?\n"},
		{"misspelt param", "out", `{"source": {"locker_uri": "http://x", "lock_name": "p"}, "params": {"lock_op": "lock", "key": "k", "tll": "1h"}}`, nil,
			"error: params.tll is not a field of the resource's params; did you mean params.ttl?\n"},
		{"every unknown field at once", "out", `{"source": {"locker_uri": "http://x", "lock_name": "p", "usernme": "ci", "colour": "red"}, "params": {"lock_op": "lock", "key": "k", "tll": "1h"}}`, nil,
			"error: 3 problems:\n  - params.tll is not a field of the resource's params; did you mean params.ttl?\n" +
				"  - source.colour is not a field of the resource's source\n  - source.usernme is not a field of the resource's source; did you mean source.username?\n"},
		{"unknown top-level field", "out", `{"source": {"locker_uri": "http://x", "lock_name": "p"}, "parms": {}}`, nil, `unknown top-level field "parms"`},
		{"missing destination", "in", InRequest{Source: src}, nil, "in needs the destination directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runBinary(t, tt.command, tt.payload, tt.args...)
			if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("%s = exit %d, stdout %q, stderr %q; want exit 1, nothing on stdout, %q on stderr",
					tt.command, r.code, r.stdout, r.stderr, tt.want)
			}
		})
	}
}

// TestCommandsInProcess runs the commands as functions, with injected
// streams, against the real server.
func TestCommandsInProcess(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url + "/", LockName: "a lock/with odd%chars"}
	run := func(f func(context.Context, []string, io.Reader, io.Writer, io.Writer, func(string) string) int, req any, args ...string) (int, string, string) {
		stdin, _ := json.Marshal(req)
		var stdout, stderr bytes.Buffer
		code := f(context.Background(), args, bytes.NewReader(stdin), &stdout, &stderr, func(string) string { return "" })
		return code, stdout.String(), stderr.String()
	}
	code, stdout, stderr := run(RunOut, OutRequest{Source: src, Params: OutParams{LockOp: "lock", Key: "k", LockBy: "me", TTL: "1h", Note: "by hand"}})
	if code != 0 || !strings.Contains(stderr, `locked "a lock/with odd%chars"`) {
		t.Fatalf("RunOut lock = %d %q %q", code, stdout, stderr)
	}
	var put Response
	if err := json.Unmarshal([]byte(stdout), &put); err != nil || metadata(put, "locked_by") != "me" {
		t.Errorf("RunOut answered %q; want locked_by me", stdout)
	}
	l := ls.getLock(t, src.LockName, src)
	if h := l.Holders["me"]; h.Note != "by hand" || h.ExpiresAt.IsZero() {
		t.Errorf("holder = %+v; want the note and a lease", h)
	}

	code, stdout, _ = run(RunCheck, CheckRequest{Source: src})
	if code != 0 || !strings.Contains(stdout, put.Version.Ref) {
		t.Errorf("RunCheck = %d %q; want [%v]", code, stdout, put.Version)
	}
	code, stdout, _ = run(RunIn, InRequest{Source: src, Version: &put.Version}, t.TempDir())
	if code != 0 || !strings.Contains(stdout, `"locked","value":"true"`) {
		t.Errorf("RunIn = %d %q", code, stdout)
	}
	code, stdout, stderr = run(RunOut, OutRequest{Source: src, Params: OutParams{LockOp: "unlock", Key: "k", LockBy: "me", All: true}})
	if code != 0 || !strings.Contains(stderr, "unlocked") {
		t.Errorf("RunOut unlock = %d %q %q", code, stdout, stderr)
	}
	if l := ls.getLock(t, src.LockName, src); len(l.LockedBy) != 0 {
		t.Errorf("after unlock the lock is held by %v", l.LockedBy)
	}
}

// TestOutReportsWhileWaiting: a lock that waits says at once who holds it
// and its place in the queue, then again at every interval.
func TestOutReportsWhileWaiting(t *testing.T) {
	first, every := reportFirst, reportEvery
	reportFirst, reportEvery = 100*time.Millisecond, 200*time.Millisecond
	t.Cleanup(func() { reportFirst, reportEvery = first, every })

	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	holder := outReq(src, "lock", "deploy", "deploy-job")
	holder.Params.TTL, holder.Params.Note = "2h", "https://ci.example.com/builds/42"
	mustSucceed(t, "lock", runBinary(t, "out", holder))

	var stderr bytes.Buffer
	req := outReq(src, "lock", "upgrade", "upgrade-job")
	req.Params.Timeout = "1s"
	_, err := Out(context.Background(), req, "", func(string) string { return "" }, &stderr)
	if err == nil {
		t.Fatal("the lock was granted while another key held it")
	}
	reports := strings.Count(stderr.String(), `waiting for "prod": held with key "deploy" by deploy-job (1, since `)
	if reports < 3 || !strings.Contains(stderr.String(), "lease until ") || !strings.Contains(stderr.String(), "https://ci.example.com/builds/42") ||
		!strings.Contains(stderr.String(), "number 1 of 1 in the queue") {
		t.Errorf("stderr during a 1 s wait with reports every 200 ms (%d reports):\n%s", reports, stderr.String())
	}
}

// TestLostReplyIsNotCountedTwice puts a proxy in front of the server that
// loses the reply to the first lock: out tries again, with the same
// Idempotency-Key, and the unlock then leaves the lock free.
func TestLostReplyIsNotCountedTwice(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: testutil.DropFirstReply(t, ls.url, "PUT"), LockName: "prod"}
	r := runBinary(t, "out", outReq(src, "lock", "deploy", "deploy-job"))
	resp := mustSucceed(t, "lock through a proxy that loses the first reply", r)
	if !strings.Contains(r.stderr, "trying again") {
		t.Fatalf("out did not retry; the test needs the first reply lost:\n%s", r.stderr)
	}
	if l := ls.getLock(t, "prod", src); l.LockedBy["deploy-job"] != 1 {
		t.Fatalf("after the retry the lock is held %v; want deploy-job once", l.LockedBy)
	}
	if metadata(resp, "token") != "1" {
		t.Errorf("token = %s; want 1", metadata(resp, "token"))
	}
	mustSucceed(t, "unlock", runBinary(t, "out", outReq(src, "unlock", "deploy", "deploy-job")))
	if l := ls.getLock(t, "prod", src); len(l.LockedBy) != 0 {
		t.Errorf("after lock, lost reply, retry and unlock, the lock is held %v; want it free", l.LockedBy)
	}
}

// TestLockTakesALeaseByDefault: a lock without params.ttl takes a day's
// lease, so that an aborted job's lock frees itself; ttl: none takes none.
func TestLockTakesALeaseByDefault(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	r := runBinary(t, "out", outReq(src, "lock", "a", "job-a"))
	mustSucceed(t, "lock", r)
	l := ls.getLock(t, "prod", src)
	if left := time.Until(l.Holders["job-a"].ExpiresAt); left < 23*time.Hour || left > 25*time.Hour || !strings.Contains(r.stderr, "a lease of 24h, the default") {
		t.Errorf("a lock without ttl has %v of lease left, and said %q; want about 24h, said", left, r.stderr)
	}
	none := outReq(src, "lock", "a", "job-b")
	none.Params.TTL = "none"
	mustSucceed(t, "lock with ttl: none", runBinary(t, "out", none))
	if exp := ls.getLock(t, "prod", src).Holders["job-b"].ExpiresAt; !exp.IsZero() {
		t.Errorf("a lock with ttl: none has a lease until %v; want none", exp)
	}
}

// buildID, when set, is the BUILD_ID the commands run with (as in a
// Concourse build); "" runs them without one, as by hand.
var buildID string

// TestAHoldEndsWithItsBuild: a put in build 17 with end_with_build takes
// the lock bound to its build (GET /lock shows the build); the build is
// aborted, and the server, which looks builds up in Concourse, ends the
// hold: the next job's put, waiting meanwhile, gets the lock. Run by hand
// (no BUILD_ID), the same put takes the lock as it always did, bound to
// nothing.
func TestAHoldEndsWithItsBuild(t *testing.T) {
	fake := testutil.NewConcourse(t)
	fake.SetBuild(17, "started")
	ls := startLocker(t, "LOCKER_CONCOURSE_URL="+fake.URL, "LOCKER_CONCOURSE_USER="+fake.User, "LOCKER_CONCOURSE_PASSWORD="+fake.Password)
	src := Source{LockerURI: ls.url, LockName: "prod"}
	req := outReq(src, "lock", "deploy-17", "deploy/1")
	req.Params.EndWithBuild = EndWith{"aborted", "errored"}
	req.Params.TTL = "none"
	buildID = "17"
	mustSucceed(t, "put in build 17", runBinary(t, "out", req))
	buildID = ""
	got := ls.getLock(t, "prod", src)
	b := got.Holders["deploy/1"].Build
	if b == nil || b.ID != 17 || b.Job != "out" || b.Pipeline != "deploy" || b.Team != "main" || b.Name != "1" ||
		b.URL != "https://ci.example.com/teams/main/pipelines/deploy/jobs/out/builds/1" || !slices.Equal(b.EndWith, []string{"aborted", "errored"}) {
		t.Fatalf("the hold's build is %+v; want build 17 of main/deploy/out #1, ending with aborted or errored", b)
	}
	next := startBinary(t, "out", outReq(src, "lock", "deploy-18", "deploy/2"))
	waitUntil(t, "the next put to queue", func() bool { return len(ls.getLock(t, "prod", src).Waiting) == 1 })
	fake.SetBuild(17, "aborted")
	mustSucceed(t, "the next put, after build 17 was aborted", next.wait(t))
	if n := fake.Lookups(17); n < 1 {
		t.Errorf("build 17 was looked up %d times", n)
	}

	// By hand: no build, and end_with_build says it does nothing here.
	req = outReq(Source{LockerURI: ls.url, LockName: "by-hand"}, "lock", "k", "me")
	req.Params.EndWithBuild = EndWith{"aborted"}
	r := runBinary(t, "out", req)
	mustSucceed(t, "put by hand", r)
	if !strings.Contains(r.stderr, "runs outside a Concourse build") {
		t.Errorf("a put by hand with end_with_build says:\n%s\nwant that the hold does not end with a build", r.stderr)
	}
	if h := ls.getLock(t, "by-hand", src).Holders["me"]; h.Build != nil {
		t.Errorf("a put by hand recorded a build: %+v", h.Build)
	}
}
