package cli_test

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestHistoryAndWatch takes and gives back a lock while locker watch
// follows it, then reads its history with locker history.
func TestHistoryAndWatch(t *testing.T) {
	c := newClient(t, server(t))
	if r := c.run(t, "lock", "prod", "--key", "k1", "--lock-by", "a", "--note", "https://ci/1"); r.code != 0 {
		t.Fatal(r)
	}
	// --last shows what came before it connects (one, two or all three of
	// the events), and it follows on from there: three in all, once each.
	w := c.start(t, "watch", "prod", "--last", "10", "--count", "3")
	if r := c.run(t, "unlock", "prod", "--key", "k1", "--lock-by", "a"); r.code != 0 {
		t.Fatal(r)
	}
	if r := c.run(t, "lock", "prod", "--key", "k2", "--lock-by", "b"); r.code != 0 {
		t.Fatal(r)
	}
	r := w.wait(t, 20*time.Second)
	want := []string{
		`taken +a +key "k1" +token 1 +note: https://ci/1$`,
		`released +a +key "k1" +token 1 +held \S+$`,
		`taken +b +key "k2" +token 2$`,
	}
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); r.code != 0 || len(lines) != len(want) {
		t.Fatalf("locker watch prod --last 10 --count 3: %v; want %d lines", r, len(want))
	}
	for i, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if !regexp.MustCompile(want[i]).MatchString(line) {
			t.Errorf("watch line %d = %q; want it to match %s", i+1, line, want[i])
		}
	}

	r = c.run(t, "history", "prod")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 3 || !strings.Contains(lines[0], "taken     b") || !strings.Contains(lines[2], "taken     a") || !strings.HasSuffix(lines[0], " ago)") {
		t.Errorf("locker history prod: %v; want its three events, newest first, each saying how long ago", r)
	}
	r = c.run(t, "history", "prod", "--limit", "1")
	if m := regexp.MustCompile(`older events: locker history prod --before (\d+)\n$`).FindStringSubmatch(r.stdout); r.code != 0 || m == nil {
		t.Errorf("locker history prod --limit 1: %v; want one event and how to see the older ones", r)
	} else if r := c.run(t, "history", "prod", "--before", m[1]); r.code != 0 || strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("locker history prod --before %s: %v; want the two older events", m[1], r)
	}
	if r := c.run(t, "history", "never-taken"); r.code != 0 || !strings.Contains(r.stdout, "never-taken has no history") {
		t.Errorf("locker history never-taken: %v; want it to say there is none", r)
	}
	for _, args := range [][]string{{"history", "prod", "--limit", "0"}, {"watch", "prod", "--pool", "p"}, {"watch", "--last", "1001"}} {
		if r := c.run(t, args...); r.code != 2 || !strings.Contains(r.stderr, "Usage: locker "+args[0]) {
			t.Errorf("locker %s: %v; want a usage error", strings.Join(args, " "), r)
		}
	}
}

// TestWatchNamesTheLocks: locker watch without a name, and with --pool,
// says which lock each event is about, and --last works with both.
func TestWatchNamesTheLocks(t *testing.T) {
	c := newClient(t, server(t))
	if r := c.run(t, "pool", "set", "stage", "stage-1", "stage-2"); r.code != 0 {
		t.Fatal(r)
	}
	for _, name := range []string{"stage-1", "other", "stage-2"} {
		if r := c.run(t, "lock", name, "--key", "k", "--lock-by", "a"); r.code != 0 {
			t.Fatal(r)
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"watch", "--last", "2", "--count", "2"}, []string{`taken +other +a +key "k"`, `taken +stage-2 +a +key "k"`}},
		{[]string{"watch", "--pool", "stage", "--last", "2", "--count", "2"}, []string{`taken +stage-1 +a +key "k"`, `taken +stage-2 +a +key "k"`}},
		{[]string{"watch", "stage-1", "--last", "1", "--count", "1"}, []string{`taken +a +key "k"`}},
	} {
		r := c.run(t, tc.args...)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != len(tc.want) {
			t.Errorf("locker %s: %v; want %d lines", strings.Join(tc.args, " "), r, len(tc.want))
			continue
		}
		for i, line := range lines {
			if !regexp.MustCompile(`^\S+ \S+  ` + tc.want[i]).MatchString(line) {
				t.Errorf("locker %s, line %d = %q; want it to match %s", strings.Join(tc.args, " "), i+1, line, tc.want[i])
			}
		}
	}
}

// TestWatchGoesOnAfterARestart: locker watch follows a lock while its
// server stops and starts again on the same port, and shows the changes
// on both sides of the restart, none twice and none missed.
func TestWatchGoesOnAfterARestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "locks.yml")
	port := strconv.Itoa(testutil.FreePort(t))
	start := func() *testutil.Server {
		return testutil.StartServer(t, lockerBin, "LOCKER_CONFIG="+state, "PORT="+port, "AUTH_USER=ci", "AUTH_PASS=s3cret")
	}
	s := start()
	c := newClient(t, s)
	if r := c.run(t, "lock", "a", "--key", "k"); r.code != 0 {
		t.Fatal(r)
	}
	// It shows what happened so far, then goes on from it: what happens
	// while it connects is not missed, nor shown twice.
	w := c.start(t, "watch", "a", "--last", "10", "--count", "3")
	if r := c.run(t, "unlock", "a", "--key", "k"); r.code != 0 {
		t.Fatal(r)
	}
	time.Sleep(300 * time.Millisecond) // most often it is following by now, and sees the server stop
	s.Stop()
	start()
	if r := c.run(t, "lock", "a", "--key", "k"); r.code != 0 {
		t.Fatal(r)
	}
	r := w.wait(t, 30*time.Second)
	if r.code != 0 || !regexp.MustCompile(`^[^\n]*taken +k +key "k" +token 1\n[^\n]*released +k +key "k" +token 1 [^\n]*\n[^\n]*taken +k +key "k" +token 2\n$`).MatchString(r.stdout) {
		t.Errorf("locker watch a across a restart: %v; want the taking, the release, and the taking after the restart, once each", r)
	}
}
