package blackbox

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLockerAloneAtATerminalPrintsTheHelp: a person who types "locker"
// at a terminal, with no store configured, is shown the help (script(1)
// gives the binary a terminal); a service started with no arguments and
// no store (no terminal) still stops with the start-up error naming
// LOCKER_CONFIG, and one with a store serves, at a terminal or not.
func TestLockerAloneAtATerminalPrintsTheHelp(t *testing.T) {
	bin := buildLocker(t)
	env := withoutStore(os.Environ())
	atTerminal := exec.Command("script", "-qec", strconv.Quote(bin), "/dev/null")
	atTerminal.Env = env
	out, err := atTerminal.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "locker: named locks for CI pipelines.") || !strings.Contains(string(out), "locker serve") {
		t.Errorf("locker at a terminal: %v\n%s\nwant the help", err, out)
	}

	service := exec.Command(bin)
	service.Env = env
	out, err = service.CombinedOutput()
	if code := service.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "LOCKER_CONFIG is not set") {
		t.Errorf("locker with no terminal and no store: exit %d, %v\n%s\nwant exit 1 naming LOCKER_CONFIG", code, err, out)
	}

	serving := exec.Command("script", "-qec", strconv.Quote(bin), "/dev/null")
	serving.Env = append(env, "LOCKER_CONFIG="+filepath.Join(t.TempDir(), "locks.yml"), "PORT=0")
	stdout, err := serving.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := serving.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = serving.Process.Kill(); _ = serving.Wait() }()
	listening := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "locker listening") {
				listening <- true
				return
			}
		}
		listening <- false
	}()
	select {
	case ok := <-listening:
		if !ok {
			t.Error("locker with LOCKER_CONFIG at a terminal ended without serving")
		}
	case <-time.After(30 * time.Second):
		t.Error("locker with LOCKER_CONFIG at a terminal did not serve within 30 s")
	}
}

// withoutStore is env without LOCKER_CONFIG and LOCKER_DATABASE_URL.
func withoutStore(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "LOCKER_CONFIG=") && !strings.HasPrefix(kv, "LOCKER_DATABASE_URL=") {
			out = append(out, kv)
		}
	}
	return out
}
