package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testutil"
)

// The tests here drive the real locker binary, as a server and as the
// client, over HTTP on loopback.

// lockerBin is the locker binary TestMain builds.
var lockerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "locker-cli")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lockerBin = filepath.Join(dir, "locker")
	if out, err := testutil.GoBuild(lockerBin, "github.com/locker-ci/locker"); err != nil {
		fmt.Fprintf(os.Stderr, "building locker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// server starts a locker server with basic auth for one test.
func server(t *testing.T) *testutil.Server {
	t.Helper()
	return testutil.StartServer(t, lockerBin, "LOCKER_CONFIG="+filepath.Join(t.TempDir(), "locks.yml"),
		"AUTH_USER=ci", "AUTH_PASS=s3cret")
}

// put sends PUT path with body to s as the user server gives it, and
// fails the test unless the answer is 200.
func put(t *testing.T, s *testutil.Server, path, body string) {
	t.Helper()
	if err := send(s, http.MethodPut, path, body); err != nil {
		t.Fatal(err)
	}
}

// client is the locker binary run as a client of one server.
type client struct {
	url string
	dir string // the commands' working directory
}

func newClient(t *testing.T, s *testutil.Server) client {
	return client{url: s.URL, dir: t.TempDir()}
}

// result is what one run of the client printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// command returns prog with args, not started, with the client's
// settings in its environment.
func (c client) command(prog string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	cmd := exec.Command(prog, args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LOCKER_URL="+c.url, "LOCKER_USER=ci", "LOCKER_PASSWORD=s3cret")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return cmd, &stdout, &stderr
}

// run runs the client with args and returns what it did.
func (c client) run(t *testing.T, args ...string) result {
	t.Helper()
	cmd, stdout, stderr := c.command(lockerBin, args...)
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("locker %q: %v", args, err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// started is a client command running in the background.
type started struct {
	cmd  *exec.Cmd
	done chan result
}

func (c client) start(t *testing.T, args ...string) *started {
	t.Helper()
	return c.startProgram(t, lockerBin, args...)
}

// shell starts sh -c script in the background.
func (c client) shell(t *testing.T, script string) *started {
	t.Helper()
	return c.startProgram(t, "/bin/sh", "-c", script)
}

func (c client) startProgram(t *testing.T, prog string, args ...string) *started {
	t.Helper()
	cmd, stdout, stderr := c.command(prog, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &started{cmd: cmd, done: make(chan result, 1)}
	go func() {
		_ = cmd.Wait()
		s.done <- result{code: exitCode(cmd.ProcessState), stdout: stdout.String(), stderr: stderr.String()}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return s
}

func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func (s *started) wait(t *testing.T, within time.Duration) result {
	t.Helper()
	select {
	case r := <-s.done:
		return r
	case <-time.After(within):
		t.Fatalf("locker %q did not exit within %v", s.cmd.Args[1:], within)
		return result{}
	}
}

// held reports whether the lock called name is held, by asking for it
// with another key, without waiting.
func (c client) held(t *testing.T, name string) bool {
	t.Helper()
	r := c.run(t, "lock", name, "--key", "probe")
	switch r.code {
	case 75:
		return true
	case 0:
		if u := c.run(t, "unlock", name, "--key", "probe"); u.code != 0 {
			t.Fatalf("unlock after a probe: %v", u)
		}
		return false
	}
	t.Fatalf("probing %q: %v", name, r)
	return false
}

// waitForFile waits for the command run runs to make a file in the
// client's directory: it has started.
func (c client) waitForFile(t *testing.T, name string) {
	t.Helper()
	waitUntil(t, "the command to start", 5*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(c.dir, name))
		return err == nil
	})
}

// waitUntil polls cond, every 50 ms, for up to within.
func waitUntil(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRunReturnsTheCommandsExitCode(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	for _, tc := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 1", 1},
		{"exit 42", 42},
		{"kill -TERM $$", 128 + int(syscall.SIGTERM)},
		{"kill -KILL $$", 128 + int(syscall.SIGKILL)},
	} {
		r := c.run(t, "run", "prod", "--", "sh", "-c", tc.script)
		if r.code != tc.want {
			t.Errorf("locker run prod -- sh -c %q = %v; want exit %d", tc.script, r, tc.want)
		}
		if c.held(t, "prod") {
			t.Errorf("after sh -c %q the lock is still held", tc.script)
		}
	}
	// The command sees the token and the lock's name.
	r := c.run(t, "run", "prod", "--", "sh", "-c", `echo "$LOCKER_LOCK $LOCKER_TOKEN"`)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "prod ") {
		t.Fatalf("run printing its environment: %v", r)
	}
	if token, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(r.stdout, "prod "))); err != nil || token < 6 {
		t.Errorf("LOCKER_TOKEN = %q; want the fencing token, 6 or more after five runs", r.stdout)
	}
	if r := c.run(t, "run", "prod", "--", "no-such-command-here"); r.code != 127 || !strings.Contains(r.stderr, "no-such-command-here") {
		t.Errorf("run of a missing command = %v; want 127 and the command named", r)
	}
	if c.held(t, "prod") {
		t.Errorf("after a command that could not start, the lock is still held")
	}
}

// TestRunsNeverOverlap runs two loops of locker run on one lock; each
// command writes its start and end to one file: no start ever follows
// another start.
func TestRunsNeverOverlap(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	log := filepath.Join(c.dir, "log")
	script := fmt.Sprintf(`echo "start $$" >> %[1]s; sleep 0.5; echo "end $$" >> %[1]s`, log)
	loop := fmt.Sprintf(`for i in 1 2 3; do %s run shared --ttl 2s -- sh -c '%s' || exit 1; done`, lockerBin, script)
	loops := []*started{c.shell(t, loop), c.shell(t, loop)}
	waits := 0
	for _, l := range loops {
		r := l.wait(t, 30*time.Second)
		if r.code != 0 {
			t.Fatalf("a loop of locker run failed: %v", r)
		}
		waits += strings.Count(r.stderr, `waiting for "shared": held with key "run-`)
	}
	lines := strings.Fields(strings.ReplaceAll(string(testutil.ReadFile(t, log)), "\n", " "))
	if len(lines) != 2*3*4 { // two loops of three runs, each "start PID end PID"
		t.Fatalf("log has %d words; want 6 runs of start and end:\n%s", len(lines), testutil.ReadFile(t, log))
	}
	for i := 0; i < len(lines); i += 4 {
		if lines[i] != "start" || lines[i+2] != "end" || lines[i+1] != lines[i+3] {
			t.Fatalf("runs overlapped:\n%s", testutil.ReadFile(t, log))
		}
	}
	if waits == 0 {
		t.Errorf("no run said, while it waited, who held the lock")
	}
}

// TestRunKeepsTheLockLongerThanItsTTL runs a command three times as long
// as the lease: the lock stays held throughout, renewed by run.
func TestRunKeepsTheLockLongerThanItsTTL(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	run := c.start(t, "run", "prod", "--ttl", "1s", "--", "sleep", "3")
	waitUntil(t, "run to take the lock", 5*time.Second, func() bool { return c.held(t, "prod") })
	finish := func(r result, probes int) {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("run = %v; want exit 0", r)
		}
		if probes < 5 {
			t.Errorf("only %d probes while the command ran", probes)
		}
		if c.held(t, "prod") {
			t.Error("the lock is held after run exited")
		}
	}
	for probes := 0; ; probes++ {
		select {
		case r := <-run.done:
			finish(r, probes)
			return
		case <-time.After(200 * time.Millisecond):
		}
		held := c.held(t, "prod")
		select {
		case r := <-run.done: // it ended meanwhile: the probe tells nothing
			finish(r, probes)
			return
		default:
		}
		if !held {
			t.Fatalf("the lock was free while the command ran (probe %d)", probes)
		}
	}
}

// TestSIGTERMToRunReachesTheCommandAndReleasesAfter sends SIGTERM to run:
// the command gets it, finishes (still holding the lock, as it checks),
// and run then gives the lock back and exits with the command's code.
func TestSIGTERMToRunReachesTheCommandAndReleasesAfter(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	script := fmt.Sprintf(`trap '%s lock prod --key other; echo "probe $?" > probe; exit 7' TERM; touch ready; while :; do sleep 0.05; done`, lockerBin)
	run := c.start(t, "run", "prod", "--ttl", "5s", "--", "sh", "-c", script)
	c.waitForFile(t, "ready")
	if err := run.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := run.wait(t, 10*time.Second)
	if r.code != 7 || !strings.Contains(r.stderr, `released "prod"`) {
		t.Errorf("run after SIGTERM = %v; want the command's exit code 7, and the lock released", r)
	}
	if probe := strings.TrimSpace(string(testutil.ReadFile(t, filepath.Join(c.dir, "probe")))); probe != "probe 75" {
		t.Errorf("while the command handled SIGTERM, locking with another key gave %q; want exit 75 (still held)", probe)
	}
	if c.held(t, "prod") {
		t.Error("the lock is held after run exited")
	}
}

// TestKilledRunFreesTheLockWhenItsLeaseRunsOut kills run with SIGKILL:
// nothing gives the lock back, and the lease frees it.
func TestKilledRunFreesTheLockWhenItsLeaseRunsOut(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	run := c.start(t, "run", "prod", "--ttl", "1s", "--", "sh", "-c", "echo $$ > pid; exec sleep 60")
	c.waitForFile(t, "pid")
	t.Cleanup(func() { // the command outlives run: kill -9 leaves it orphaned
		if pid, err := strconv.Atoi(strings.TrimSpace(string(testutil.ReadFile(t, filepath.Join(c.dir, "pid"))))); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if !c.held(t, "prod") {
		t.Fatal("the lock is not held while run runs")
	}
	if err := run.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitUntil(t, "the lease to free the lock", 5*time.Second, func() bool { return !c.held(t, "prod") })
	t.Logf("the lock was free %v after kill -9 (ttl 1s)", time.Since(killed).Round(10*time.Millisecond))
}

// TestForceUnlockStopsTheCommand force-releases the lock a run holds:
// run stops its command, which ignores SIGTERM, with SIGKILL after the
// grace period, and exits 3 saying the lock was lost.
func TestForceUnlockStopsTheCommand(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	run := c.start(t, "run", "prod", "--ttl", "2s", "--grace", "300ms", "--", "sh", "-c", `trap "" TERM; echo $$ > pid; exec sleep 60`)
	c.waitForFile(t, "pid")
	if r := c.run(t, "force-unlock", "prod", "--reason", "the deploy hung"); r.code != 0 {
		t.Fatalf("force-unlock = %v", r)
	}
	r := run.wait(t, 5*time.Second)
	if r.code != 3 || !strings.Contains(r.stderr, `LOST THE LOCK on "prod"`) || !strings.Contains(r.stderr, "killing it") {
		t.Errorf("run after a force release = %v; want exit 3, saying the lock was lost and the command killed", r)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(testutil.ReadFile(t, filepath.Join(c.dir, "pid")))))
	if err := syscall.Kill(pid, 0); err == nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("the command (pid %d) still runs after run lost the lock", pid)
	}
}

// TestForceUnlockSaysWhyAndWhichHolding: force-unlock needs a reason
// (asked for at a terminal), frees the lock only at the token given
// (a lock that changed hands since is left to its next holder: exit 1,
// saying how to look again), and the history keeps who and why.
func TestForceUnlockSaysWhyAndWhichHolding(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	r := c.run(t, "lock", "prod", "--key", "deploy-41")
	token, err := strconv.ParseUint(strings.TrimSpace(r.stdout), 10, 64)
	if r.code != 0 || err != nil {
		t.Fatalf("lock = %v", r)
	}
	if r := c.run(t, "force-unlock", "prod"); r.code != 2 || !strings.Contains(r.stderr, "--reason is missing") {
		t.Errorf("force-unlock without --reason, no terminal = %v; want exit 2 asking for --reason", r)
	}
	r = c.run(t, "force-unlock", "prod", "--token", strconv.FormatUint(token+5, 10), "--reason", "stale")
	if r.code != 1 || !strings.Contains(r.stderr, "412") || !strings.Contains(r.stderr, "see it again with locker show NAME, and give its token with --token") {
		t.Errorf("force-unlock at another token = %v; want exit 1, the 412 in the command line's words", r)
	}
	if !c.held(t, "prod") {
		t.Fatal("a refused force-unlock freed the lock")
	}
	if r := c.run(t, "force-unlock", "prod", "--token", strconv.FormatUint(token, 10), "--reason", "deploy 41 was aborted"); r.code != 0 {
		t.Fatalf("force-unlock at its token = %v", r)
	}
	// At a terminal (script(1) gives it one), the reason is asked for.
	if r := c.run(t, "lock", "prod", "--key", "deploy-42"); r.code != 0 {
		t.Fatalf("lock = %v", r)
	}
	cmd, stdout, stderr := c.command("script", "-qec", strconv.Quote(lockerBin)+" force-unlock prod", "/dev/null")
	cmd.Stdin = strings.NewReader("the build VM is gone\n")
	if err := cmd.Run(); err != nil || !strings.Contains(stdout.String(), "to be forced free?") {
		t.Fatalf("force-unlock at a terminal: %v; stdout %q, stderr %q", err, stdout, stderr)
	}
	r = c.run(t, "history", "prod")
	for _, want := range []string{"because: the build VM is gone", "because: deploy 41 was aborted"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("locker history prod:\n%s\nwant %q", r.stdout, want)
		}
	}
}

// TestTheLimitIsShown: locker show and ls say how many of a limit's
// holds are taken; one past it is refused (exit 1).
func TestTheLimitIsShown(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	for _, by := range []string{"e2e-1", "e2e-2"} {
		if r := c.run(t, "lock", "browsers", "--key", "e2e", "--lock-by", by, "--limit", "2"); r.code != 0 {
			t.Fatalf("lock = %v", r)
		}
	}
	if r := c.run(t, "lock", "browsers", "--key", "e2e", "--lock-by", "e2e-1"); r.code != 75 || !strings.Contains(r.stderr, "2 holds, as many as its limit of 2 allows") {
		t.Errorf("a third hold under a limit of 2 = %v; want exit 75 saying the limit", r)
	}
	if r := c.run(t, "show", "browsers"); !strings.Contains(r.stdout, ", 2 of its limit of 2 holds\n") {
		t.Errorf("locker show:\n%s\nwant the limit", r.stdout)
	}
	if r := c.run(t, "ls"); !strings.Contains(r.stdout, "e2e-1×1,e2e-2×1 (2/2)") {
		t.Errorf("locker ls:\n%s\nwant the limit", r.stdout)
	}
}

// TestEveryDurationFlagReadsAlike: --wait, --ttl, --grace and
// --expires-in read a duration one way, and say a mistake one way: a
// number without a unit, days, a negative one; forever is a wait's value
// for every command that waits.
func TestEveryDurationFlagReadsAlike(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lock", "prod", "--key", "k", "--wait", "5"}, `--wait must be a duration such as 30s, 10m or 2h, 0 not to wait, or forever (got "5": 5 has no unit: write 5s, 5m or 5h)`},
		{[]string{"run", "prod", "--wait", "5", "--", "true"}, `--wait must be a duration such as 30s, 10m or 2h, 0 not to wait, or forever (got "5": 5 has no unit: write 5s, 5m or 5h)`},
		{[]string{"lock", "prod", "--key", "k", "--ttl", "1d"}, `--ttl must be a positive duration such as 90s, 10m or 2h (got "1d": d is not a unit here: write 24h for 1d)`},
		{[]string{"run", "prod", "--ttl", "2d", "--", "true"}, `--ttl must be a positive duration such as 90s, 10m or 2h (got "2d": d is not a unit here: write 48h for 2d)`},
		{[]string{"renew", "prod", "--key", "k", "--ttl", "0"}, `--ttl must be a positive duration such as 90s, 10m or 2h (got "0": it must be more than 0)`},
		{[]string{"run", "prod", "--grace", "-1s", "--", "true"}, `--grace must be a positive duration such as 90s, 10m or 2h (got "-1s": -1s is negative)`},
		{[]string{"credential", "create", "ci", "--grant", "read:", "--expires-in", "1w"}, `--expires-in must be a positive duration such as 90s, 10m or 2h (got "1w": w is not a unit here: write 168h for 1w)`},
		{[]string{"lock", "prod", "--key", "k", "--ttl", "forever"}, `--ttl must be a positive duration such as 90s, 10m or 2h (got "forever"`},
	} {
		if r := c.run(t, tc.args...); r.code != 2 || !strings.Contains(r.stderr, "locker "+tc.args[0]+": "+tc.want) {
			t.Errorf("locker %q = %v; want exit 2 and %q", tc.args, r, tc.want)
		}
	}
	// --wait forever waits until granted, for locker lock as for run.
	if r := c.run(t, "lock", "prod", "--key", "a"); r.code != 0 {
		t.Fatalf("lock = %v", r)
	}
	// A refusal after a wait says the wait asked for, not what was left
	// of it when the last round was sent.
	if r := c.run(t, "lock", "prod", "--key", "b", "--wait", "1s"); r.code != 75 || !strings.Contains(r.stderr, "timed out after 1s waiting") {
		t.Errorf("lock --wait 1s on a held lock = %v; want exit 75, timed out after 1s", r)
	}
	waiter := c.start(t, "lock", "prod", "--key", "b", "--wait", "forever")
	waitUntil(t, "the waiter to queue", 5*time.Second, func() bool { return strings.Contains(c.run(t, "show", "prod").stdout, "waiting 1:") })
	if r := c.run(t, "unlock", "prod", "--key", "a"); r.code != 0 {
		t.Fatalf("unlock = %v", r)
	}
	if r := waiter.wait(t, 10*time.Second); r.code != 0 {
		t.Errorf("lock --wait forever = %v; want it granted when the lock was given back", r)
	}
}

// TestLockUnlockLsShow covers the commands for scripts: their output and
// exit codes.
func TestLockUnlockLsShow(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	r := c.run(t, "lock", "prod", "--key", "deploy", "--ttl", "10m", "--note", "https://ci.example.com/builds/7")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "1" {
		t.Fatalf("lock = %v; want exit 0 and token 1", r)
	}
	if r := c.run(t, "lock", "prod", "--key", "upgrade"); r.code != 75 || !strings.Contains(r.stderr, `held with key "deploy"`) {
		t.Errorf("lock with another key = %v; want exit 75 saying who holds it", r)
	}
	if r := c.run(t, "lock", "prod", "--key", "upgrade", "--wait", "300ms"); r.code != 75 || !strings.Contains(r.stderr, "timed out") {
		t.Errorf("lock --wait 300ms on a held lock = %v; want exit 75, timed out", r)
	}
	r = c.run(t, "ls")
	if r.code != 0 || !strings.Contains(r.stdout, "NAME") || !regexpMatch(`(?m)^prod\s+deploy×1\s+\S+ ago\s+in \S+\s+0\s+https://ci.example.com/builds/7$`, r.stdout) {
		t.Errorf("ls = %v; want a table row for prod", r)
	}
	if r := c.run(t, "ls", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"locked_by":{"deploy":1}`) {
		t.Errorf("ls --json = %v; want the server's JSON", r)
	}
	if r := c.run(t, "show", "prod"); r.code != 0 || !strings.Contains(r.stdout, `prod is held with key "deploy", token 1`) {
		t.Errorf("show = %v", r)
	}
	if r := c.run(t, "renew", "prod", "--key", "deploy", "--ttl", "1h"); r.code != 0 {
		t.Errorf("renew = %v", r)
	} else if until, err := time.Parse(time.RFC3339, strings.TrimSpace(r.stdout)); err != nil || time.Until(until) < 59*time.Minute {
		t.Errorf("renew printed %q; want the lease's end, an hour from now", r.stdout)
	}
	if r := c.run(t, "unlock", "prod", "--key", "upgrade"); r.code != 1 {
		t.Errorf("unlock with a key that does not hold it = %v; want exit 1", r)
	}
	if r := c.run(t, "unlock", "prod", "--key", "deploy"); r.code != 0 || !strings.Contains(r.stderr, "now free") {
		t.Errorf("unlock = %v; want exit 0, now free", r)
	}
	if r := c.run(t, "unlock", "prod", "--key", "deploy"); r.code != 1 || !strings.Contains(r.stderr, "nothing given back") {
		t.Errorf("unlock of a free lock = %v; want exit 1, nothing given back", r)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lock", "prod"}, "--key is missing"},
		{[]string{"lock", "--key", "k"}, "NAME is missing"},
		{[]string{"lock", "prod", "--key", "k", "--ttl", "soon"}, "--ttl must be a positive duration"},
		{[]string{"run", "prod", "sleep", "1"}, "the command to run goes after --"},
		{[]string{"run", "prod", "--ttl", "500ms", "--", "true"}, "--ttl must be at least 1s"},
		{[]string{"ls", "--url", "http://127.0.0.1:1"}, "connection refused"},
		{[]string{"ls", "--url", "ftp://x"}, "must be http:// or https://"},
		{[]string{"nonsense"}, `unknown command "nonsense" (locker help lists them)`},
	} {
		if r := c.run(t, tc.args...); r.code == 0 || r.code == 1 && tc.args[0] != "nonsense" || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("locker %q = %v; want exit 2 and %q", tc.args, r, tc.want)
		}
	}
	if r := c.run(t, "health"); r.code != 0 {
		t.Errorf("health = %v; want exit 0", r)
	}
	if r := c.run(t, "health", "--url", "http://127.0.0.1:1"); r.code != 1 || !strings.Contains(r.stderr, "connection refused") {
		t.Errorf("health of a closed port = %v; want exit 1", r)
	}
	if r := c.run(t, "help", "run"); r.code != 0 || !strings.Contains(r.stdout, "Examples:") {
		t.Errorf("help run = %v", r)
	}
}

// TestRunWithoutAWaitGivesUpOnAnUnreachableServer: locker run --wait 0
// against a server it cannot reach retries, says until when (a minute
// from its start, as locker lock), and is not retrying for ever.
func TestRunWithoutAWaitGivesUpOnAnUnreachableServer(t *testing.T) {
	c := client{url: "http://127.0.0.1:1", dir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cmd, _, stderr := c.command(lockerBin, "run", "prod", "--wait", "0", "--", "true")
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...) // stopped after its first retries
	cmd.Dir, cmd.Env, cmd.Stderr = c.dir, append(os.Environ(), "LOCKER_URL="+c.url), stderr
	start := time.Now()
	_ = cmd.Run()
	m := regexp.MustCompile(`trying again in \S+, and on until (\d\d:\d\d:\d\d)`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("locker run --wait 0 against a closed port said %q; want it to say until when it retries", stderr)
	}
	until, _ := time.ParseInLocation("15:04:05", m[1], time.Local)
	until = time.Date(start.Year(), start.Month(), start.Day(), until.Hour(), until.Minute(), until.Second(), 0, time.Local)
	if d := until.Sub(start); d < 55*time.Second || d > 65*time.Second {
		t.Errorf("locker run --wait 0 retries until %v after its start; want about a minute", d)
	}
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }

// TestRunStopsTheCommandWhenTheServerIsGone kills the server: run cannot
// renew the lease, and stops the command before the lease would run out
// (ttl 2 s, grace 500 ms), and exits 3.
func TestRunStopsTheCommandWhenTheServerIsGone(t *testing.T) {
	t.Parallel()
	s := server(t)
	c := newClient(t, s)
	run := c.start(t, "run", "prod", "--ttl", "2s", "--grace", "500ms", "--", "sh", "-c", "touch ready; exec sleep 60")
	c.waitForFile(t, "ready")
	s.Kill()
	gone := time.Now()
	r := run.wait(t, 10*time.Second)
	if r.code != 3 || !strings.Contains(r.stderr, "could not be renewed before it ran out") {
		t.Errorf("run after its server died = %v; want exit 3, the lease not renewed", r)
	}
	t.Logf("run stopped its command %v after the server died (ttl 2s)", time.Since(gone).Round(10*time.Millisecond))
}

// TestLsReadsPages: locker ls lists a table longer than its page, each
// lock once and in order, --prefix narrows it, and --json is the server's
// whole listing.
func TestLsReadsPages(t *testing.T) {
	t.Parallel()
	s := server(t)
	c := newClient(t, s)
	const n = 1203 // past one page of locker ls
	for i := range n {
		put(t, s, fmt.Sprintf("/lock/team-%d%%2Flock-%04d", i%2, i), `{"key": "k", "lock_by": "job"}`)
	}
	rows := func(out string) []string {
		var names []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if name, _, _ := strings.Cut(line, " "); name != "NAME" {
				names = append(names, name)
			}
		}
		return names
	}
	r := c.run(t, "ls")
	if got := rows(r.stdout); r.code != 0 || len(got) != n || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != n {
		t.Fatalf("ls: exit %d, %d rows (sorted %v); want the %d locks once each, in order\n%s", r.code, len(got), slices.IsSorted(got), n, r.stderr)
	}
	r = c.run(t, "ls", "--prefix", "team-1/")
	if got := rows(r.stdout); r.code != 0 || len(got) != n/2 || !strings.HasPrefix(got[0], "team-1/") {
		t.Errorf("ls --prefix team-1/: exit %d, %d rows; want %d, each team-1/", r.code, len(got), n/2)
	}
	r = c.run(t, "ls", "--json", "--prefix", "team-0/")
	var all map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &all); r.code != 0 || err != nil || len(all) != n-n/2 {
		t.Errorf("ls --json --prefix team-0/: exit %d, %d locks, %v; want %d", r.code, len(all), err, n-n/2)
	}
}

// TestLockWithALimit: locker lock --limit caps the holders that share a
// lock; the next one is refused, saying the limit.
func TestLockWithALimit(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	if r := c.run(t, "lock", "browsers", "--key", "e2e", "--lock-by", "e2e-1", "--limit", "1"); r.code != 0 {
		t.Fatalf("lock --limit 1 = %v; want exit 0", r)
	}
	if r := c.run(t, "lock", "browsers", "--key", "e2e", "--lock-by", "e2e-2"); r.code != 75 || !strings.Contains(r.stderr, "limit of 1") {
		t.Errorf("a second holder = %v; want exit 75 saying the limit", r)
	}
	if r := c.run(t, "lock", "browsers", "--key", "e2e", "--limit", "-1"); r.code != 2 || !strings.Contains(r.stderr, "--limit") {
		t.Errorf("lock --limit -1 = %v; want a usage error (exit 2)", r)
	}
}

// TestRunHoldsASetAndAClaim: locker run --lock takes several locks at once
// and gives them back after; locker run --pool claims a free member and
// tells the command which; locker pool set, ls, show and rm.
func TestRunHoldsASetAndAClaim(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	r := c.run(t, "run", "prod-db", "--lock", "prod-app", "--", "sh", "-c", `echo "$LOCKER_LOCKS"; `+lockerBin+` ls`)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "prod-app prod-db\n") || !regexpMatch(`(?m)^prod-app\s`, r.stdout) || !regexpMatch(`(?m)^prod-db\s`, r.stdout) {
		t.Fatalf("run prod-db --lock prod-app = %v; want both held while the command ran, named in $LOCKER_LOCKS", r)
	}
	if c.held(t, "prod-db") || c.held(t, "prod-app") {
		t.Error("after run --lock, a lock of the set is still held")
	}
	if r := c.run(t, "run", "a", "b", "--", "sh", "-c", `echo "$LOCKER_LOCKS"`); r.code != 0 || strings.TrimSpace(r.stdout) != "a b" {
		t.Errorf("run a b = %v; want both held, named in $LOCKER_LOCKS", r)
	}
	if r := c.run(t, "run", "prod", "--lock", "prod", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "named twice") {
		t.Errorf("run naming a lock twice = %v; want a usage error", r)
	}

	if r := c.run(t, "pool", "set", "staging", "staging-2", "staging-1"); r.code != 0 || !strings.Contains(r.stdout, "pool staging has 2 members: staging-1, staging-2") {
		t.Fatalf("pool set = %v", r)
	}
	if r := c.run(t, "pool", "ls"); r.code != 0 || !regexpMatch(`(?m)^staging\s+staging-1 staging-2$`, r.stdout) {
		t.Errorf("pool ls = %v", r)
	}
	holder := c.shell(t, lockerBin+` run --pool staging --key e2e -- sh -c 'echo "$LOCKER_LOCK"; sleep 2'`)
	testutil.WaitFor(t, "the claim", func() bool {
		r := c.run(t, "pool", "show", "staging", "--json")
		return r.code == 0 && strings.Contains(r.stdout, `"free":["staging-2"]`)
	})
	if r := c.run(t, "pool", "show", "staging"); r.code != 0 || !regexpMatch(`(?m)^staging-1\s+\S+×1\s+.*e2e$`, r.stdout) || !regexpMatch(`(?m)^staging-2\s+free`, r.stdout) {
		t.Errorf("pool show while staging-1 is claimed = %v", r)
	}
	if r := holder.wait(t, 20*time.Second); r.code != 0 || strings.TrimSpace(r.stdout) != "staging-1" {
		t.Errorf("run --pool = %v; want the claimed member, staging-1 (never claimed, first by name), in $LOCKER_LOCK", r)
	}
	if c.held(t, "staging-1") {
		t.Error("after run --pool, the member is still held")
	}
	if r := c.run(t, "run", "--pool", "staging", "--count", "3", "--wait", "0", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "has 2 members") {
		t.Errorf("run --pool --count 3 of 2 = %v; want exit 2 saying how many members", r)
	}
	if r := c.run(t, "pool", "rm", "staging"); r.code != 0 {
		t.Errorf("pool rm = %v", r)
	}
	if r := c.run(t, "pool", "show", "staging"); r.code != 2 || !strings.Contains(r.stderr, `no pool called "staging"`) {
		t.Errorf("pool show after rm = %v; want it not found", r)
	}
}

// send sends method path with body to s as the user server gives it, and
// says why unless the answer is 200.
func send(s *testutil.Server, method, path, body string) error {
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.SetBasicAuth("ci", "s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s = %d", method, path, resp.StatusCode)
	}
	return nil
}

// TestRunAsksAgainWhenItsLostGrantEnded: the answer to run's claim is
// lost, and before run sends it again the member it was granted is
// forced free and taken by another job: the claim sent again is refused
// (409, the hold ended), and run asks again with a new Idempotency-Key,
// waits for the member and runs its command then, never beside the
// other job. Its messages name the pool, not the claim's path.
func TestRunAsksAgainWhenItsLostGrantEnded(t *testing.T) {
	t.Parallel()
	s := server(t)
	c := newClient(t, s)
	if r := c.run(t, "pool", "set", "clip", "clip-1"); r.code != 0 {
		t.Fatalf("pool set = %v", r)
	}
	c.url = testutil.DropFirstReplyThen(t, s.URL, http.MethodPut, func([]byte) {
		for _, err := range []error{
			send(s, "DELETE", "/lock/clip-1?force=true", ""),
			send(s, "PUT", "/lock/clip-1", `{"key": "other-job", "ttl": "3s"}`),
		} {
			if err != nil {
				t.Error(err)
			}
		}
	})
	r := c.run(t, "run", "--pool", "clip", "--ttl", "6s", "--wait", "1m", "--", "sh", "-c", `echo "$LOCKER_LOCK"; `+lockerBin+` show clip-1 --json`)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "clip-1\n") || strings.Contains(r.stdout, "other-job") {
		t.Fatalf("run --pool whose lost grant ended = %v; want the command run once other-job's lease ran out, with clip-1 its own", r)
	}
	if !strings.Contains(r.stderr, `ended before its answer arrived`) || !strings.Contains(r.stderr, `the pool "clip"`) || strings.Contains(r.stderr, `"/pool/clip/claim"`) {
		t.Errorf("run's messages = %q; want it to say the grant ended and it asked again, naming the pool \"clip\" (not its path)", r.stderr)
	}
}

// TestCredentialsFromTheCommandLine: an admin makes a credential with a
// grant on team-a/, which the CLI then uses: it takes team-a/x, is
// refused team-b/x (saying why), is refused once rotated with its old
// secret and once revoked.
func TestCredentialsFromTheCommandLine(t *testing.T) {
	t.Parallel()
	admin := newClient(t, server(t))
	r := admin.run(t, "credential", "create", "team-a-ci", "--grant", "lock:team-a/", "--grant", "read:", "--expires-in", "2160h")
	m := regexp.MustCompile(`(?m)^secret: (lkr_\S+)$`).FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil || !strings.Contains(r.stdout, "lock on team-a/, read on every name") {
		t.Fatalf("credential create = %v; want the grants and the secret", r)
	}
	as := func(secret string, args ...string) result {
		cmd, stdout, stderr := admin.command(lockerBin, args...)
		cmd.Env = append(cmd.Env, "LOCKER_USER=team-a-ci", "LOCKER_PASSWORD="+secret)
		err := cmd.Run()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			t.Fatal(err)
		}
		return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	}
	if r := as(m[1], "lock", "team-a/x", "--key", "k"); r.code != 0 {
		t.Errorf("team-a-ci taking team-a/x = %v; want it taken", r)
	}
	if r := as(m[1], "lock", "team-b/x", "--key", "k"); r.code == 0 || !strings.Contains(r.stderr, `the credential "team-a-ci" has the role read on the lock "team-b/x"`) {
		t.Errorf("team-a-ci taking team-b/x = %v; want it refused, saying it has read there", r)
	}
	if r := admin.run(t, "credential", "ls"); r.code != 0 || !regexpMatch(`(?m)^team-a-ci\s+lock on team-a/, read on every name\s+api\s`, r.stdout) || strings.Contains(r.stdout, m[1]) {
		t.Errorf("credential ls = %v; want team-a-ci with its grants, and no secret", r)
	}
	r = admin.run(t, "credential", "rotate", "team-a-ci")
	rotated := regexp.MustCompile(`(?m)^secret: (lkr_\S+)$`).FindStringSubmatch(r.stdout)
	if r.code != 0 || rotated == nil || rotated[1] == m[1] {
		t.Fatalf("credential rotate = %v; want a new secret", r)
	}
	if r := as(m[1], "ls"); r.code == 0 || !strings.Contains(r.stderr, "401") {
		t.Errorf("the old secret after the rotation = %v; want 401", r)
	}
	if r := as(rotated[1], "ls"); r.code != 0 {
		t.Errorf("the new secret = %v; want it let in", r)
	}
	if r := admin.run(t, "credential", "rm", "team-a-ci"); r.code != 0 {
		t.Fatalf("credential rm = %v", r)
	}
	if r := as(rotated[1], "ls"); r.code == 0 || !strings.Contains(r.stderr, "401") {
		t.Errorf("the secret of a revoked credential = %v; want 401", r)
	}
	r = admin.run(t, "credential", "hash")
	if h := regexp.MustCompile(`(?m)^hash: (sha256:[0-9a-f]{64})$`).FindStringSubmatch(r.stdout); r.code != 0 || h == nil {
		t.Errorf("credential hash = %v; want a secret and its hash", r)
	}
	if r := admin.run(t, "credential", "create", "x", "--grant", "write:a/"); r.code != 2 || !strings.Contains(r.stderr, "read, lock, operate or admin") {
		t.Errorf("a grant of an unknown role = %v; want a usage error naming the roles", r)
	}
}

// TestSetsAndClaimsFromTheCommandLine: locker lock and unlock with
// several names take and give back a set, all or nothing; locker pool
// claim takes members for a script's later steps, waits saying where it
// stands, and they are given back with locker unlock.
func TestSetsAndClaimsFromTheCommandLine(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	if r := c.run(t, "lock", "db", "app", "--key", "deploy"); r.code != 0 || !regexp.MustCompile(`^app \d+\ndb \d+\n$`).MatchString(r.stdout) {
		t.Fatalf("locker lock db app = %v; want each lock's name and token, a line each", r)
	}
	if r := c.run(t, "lock", "app", "web", "--key", "other"); r.code != 75 || !strings.Contains(r.stderr, `"app" is held with key "deploy"`) {
		t.Errorf("a set with a held lock = %v; want exit 75 saying who holds it", r)
	}
	if r := c.run(t, "show", "web", "--json"); !strings.Contains(r.stdout, `"key":""`) && !strings.Contains(r.stdout, `"key": ""`) {
		t.Errorf("web after the refused set = %v; want it free (all or nothing)", r)
	}
	if r := c.run(t, "renew", "db", "app", "--key", "deploy", "--ttl", "1h"); r.code != 0 || !regexp.MustCompile(`^app \S+\ndb \S+\n$`).MatchString(r.stdout) {
		t.Errorf("locker renew db app = %v; want when each lease runs out", r)
	}
	if r := c.run(t, "unlock", "db", "app", "--key", "deploy"); r.code != 0 || r.stderr != "locker unlock: gave back app, db\n" {
		t.Errorf("locker unlock db app = %v; want both given back", r)
	}
	if r := c.run(t, "lock", "db", "db", "--key", "k"); r.code != 2 || !strings.Contains(r.stderr, `"db" is named twice`) {
		t.Errorf("a name given twice = %v; want a usage error", r)
	}

	if r := c.run(t, "pool", "set", "stage", "stage-1", "stage-2"); r.code != 0 {
		t.Fatal(r)
	}
	r := c.run(t, "pool", "claim", "stage", "--key", "build-1", "--count", "2", "--ttl", "10m")
	members := regexp.MustCompile(`(?m)^(stage-\d) \d+$`).FindAllStringSubmatch(r.stdout, -1)
	if r.code != 0 || len(members) != 2 {
		t.Fatalf("locker pool claim stage --count 2 = %v; want both members and their tokens", r)
	}
	if r := c.run(t, "pool", "claim", "stage", "--key", "build-2"); r.code != 75 || !strings.Contains(r.stderr, "pool") {
		t.Errorf("a claim on a pool with no free member = %v; want exit 75", r)
	}
	r = c.run(t, "pool", "claim", "stage", "--key", "build-2", "--wait", "2s")
	if r.code != 75 || !strings.Contains(r.stderr, `locker pool claim: waiting for 1 of the pool "stage": 0 of 2 members free; held: stage-1 by build-1 (1), stage-2 by build-1 (1); number 1 of 1 in the queue`+"\n") {
		t.Errorf("a claim that waits in vain = %v; want it to say who holds the members and its place, then exit 75", r)
	}
	waiting := c.start(t, "pool", "claim", "stage", "--key", "build-3", "--wait", "1m")
	waitUntil(t, "the claim to say where it stands", 20*time.Second, func() bool {
		r := c.run(t, "pool", "show", "stage")
		return strings.Contains(r.stdout, "waiting 1: build-3")
	})
	if r := c.run(t, "unlock", members[0][1], "--key", "build-1"); r.code != 0 {
		t.Fatal(r)
	}
	got := waiting.wait(t, 20*time.Second)
	if got.code != 0 || !regexp.MustCompile(`^`+members[0][1]+` \d+\n$`).MatchString(got.stdout) {
		t.Errorf("the waiting claim = %v; want %s, the member given back", got, members[0][1])
	}
	// A set is given back all or nothing: the member build-3 holds now
	// refuses it, and the other stays held.
	if r := c.run(t, "unlock", members[1][1], members[0][1], "--key", "build-1"); r.code != 1 || !strings.Contains(r.stderr, strconv.Quote(members[0][1])+` is held with key "build-3"`) {
		t.Errorf("unlock of a member another build holds now, with one still held = %v; want exit 1 naming it", r)
	}
	if r := c.run(t, "show", members[1][1]); !strings.Contains(r.stdout, "build-1") {
		t.Errorf("%s after the refused unlock = %v; want it still held by build-1", members[1][1], r)
	}
}

// TestRunSupersedesAndShares: locker run --supersede makes the older
// waiting runs of the same --lock-by exit 75 without running their
// command, and the newest runs; --limit lets runs with one --key hold
// the lock together; the flags' mistakes are usage errors.
func TestRunSupersedesAndShares(t *testing.T) {
	t.Parallel()
	c := newClient(t, server(t))
	if r := c.run(t, "lock", "prod", "--key", "hotfix"); r.code != 0 {
		t.Fatal(r)
	}
	old := c.start(t, "run", "prod", "--lock-by", "deploy-prod", "--", "sh", "-c", "echo build 55 ran")
	waitUntil(t, "build 55 to wait", 20*time.Second, func() bool {
		return strings.Contains(c.run(t, "show", "prod").stdout, "deploy-prod")
	})
	newest := c.start(t, "run", "prod", "--lock-by", "deploy-prod", "--supersede", "--", "sh", "-c", "echo build 57 ran")
	r := old.wait(t, 20*time.Second)
	if r.code != 75 || strings.Contains(r.stdout, "ran") || !strings.Contains(r.stderr, "superseded by a newer request from deploy-prod") {
		t.Errorf("build 55's run = %v; want exit 75, its command not run, saying it was superseded", r)
	}
	if r := c.run(t, "unlock", "prod", "--key", "hotfix"); r.code != 0 {
		t.Fatal(r)
	}
	if r := newest.wait(t, 20*time.Second); r.code != 0 || r.stdout != "build 57 ran\n" {
		t.Errorf("build 57's run = %v; want its command run", r)
	}

	// Two runs share the lock under --limit 2; a third with the key waits.
	first := c.start(t, "run", "browsers", "--key", "e2e", "--limit", "2", "--", "sh", "-c", "sleep 3")
	waitUntil(t, "the first run to hold browsers", 20*time.Second, func() bool {
		return strings.Contains(c.run(t, "show", "browsers").stdout, "e2e")
	})
	if r := c.run(t, "run", "browsers", "--key", "e2e", "--limit", "2", "--wait", "0", "--", "true"); r.code != 0 {
		t.Errorf("a second run under --limit 2 = %v; want it to run beside the first", r)
	}
	if r := first.wait(t, 20*time.Second); r.code != 0 {
		t.Errorf("the first run = %v", r)
	}

	// --priority puts a waiter before those of lower priority.
	if r := c.run(t, "lock", "prod", "--key", "hotfix"); r.code != 0 {
		t.Fatal(r)
	}
	low := c.start(t, "lock", "prod", "--key", "low", "--wait", "1m")
	waitUntil(t, "low to wait", 20*time.Second, func() bool { return strings.Contains(c.run(t, "show", "prod", "--json").stdout, `"low"`) })
	high := c.start(t, "lock", "prod", "--key", "high", "--priority", "5", "--wait", "1m")
	waitUntil(t, "high to wait", 20*time.Second, func() bool { return strings.Contains(c.run(t, "show", "prod", "--json").stdout, `"high"`) })
	if r := c.run(t, "show", "prod", "--json"); !regexp.MustCompile(`"waiting":\[\{"id":\d+,"key":"high","requestor":"high","since":"[^"]+","priority":5\},\{"id":\d+,"key":"low"`).MatchString(r.stdout) {
		t.Errorf("locker show prod --json = %v; want high (priority 5) before low", r)
	}
	if r := c.run(t, "unlock", "prod", "--key", "hotfix"); r.code != 0 {
		t.Fatal(r)
	}
	if r := high.wait(t, 20*time.Second); r.code != 0 {
		t.Errorf("the high-priority lock = %v; want it taken first", r)
	}
	if r := c.run(t, "unlock", "prod", "--key", "high"); r.code != 0 {
		t.Fatal(r)
	}
	if r := low.wait(t, 20*time.Second); r.code != 0 {
		t.Errorf("the low-priority lock = %v; want it taken after", r)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "prod", "--supersede", "--", "true"}, "give one, e.g. --lock-by deploy-prod"},
		{[]string{"lock", "prod", "--key", "k", "--lock-by", "x", "--supersede"}, "give --wait too"},
		{[]string{"run", "prod", "--limit", "2", "--", "true"}, "give one, e.g. --key e2e --limit 2"},
		{[]string{"run", "--pool", "p", "--key", "k", "--limit", "2", "--", "true"}, "give --count instead"},
	} {
		if r := c.run(t, tc.args...); r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("locker %s = %v; want a usage error saying %q", strings.Join(tc.args, " "), r, tc.want)
		}
	}
}
