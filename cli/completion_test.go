package cli_test

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestBashCompletes sources the script locker completion bash prints, in
// a real bash, and completes as a user's TAB would: commands, a command's
// flags, the lock names on the server (with its credentials from the
// environment), pool names, and nothing at all, quietly, when the server
// is away.
func TestBashCompletes(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is needed for this test (apt-get install bash)")
	}
	s := server(t)
	for _, name := range []string{"prod-deploy", "prod-db", "staging"} {
		put(t, s, "/lock/"+name, `{"key": "k", "lock_by": "job"}`)
	}
	put(t, s, "/pool/envs", `{"members": ["env-1", "env-2"]}`)
	complete := func(url, line string) string {
		t.Helper()
		words := strings.Split(line, " ") // the last one is what TAB completes
		script := `source <(locker completion bash) || exit 1
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
_locker
printf '%s\n' "${COMPREPLY[@]}"`
		cmd := exec.Command(bash, append([]string{"-c", script, "bash"}, words...)...)
		cmd.Env = []string{"PATH=" + filepath.Dir(lockerBin) + ":/usr/bin:/bin", "LOCKER_URL=" + url, "LOCKER_USER=ci", "LOCKER_PASSWORD=s3cret"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash completing %q: %v\n%s", line, err, out)
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	away := "http://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	for _, c := range []struct{ url, line, want string }{
		{s.URL, "locker lo", "lock"},
		{s.URL, "locker ", "completion force-unlock health help history lock ls migrate pool renew run serve show unlock version watch"},
		{s.URL, "locker unlock ", "prod-db prod-deploy staging"},
		{s.URL, "locker unlock prod-d", "prod-db prod-deploy"},
		{s.URL, "locker --url " + s.URL + " show st", "staging"},
		{away, "locker --url " + s.URL + " show st", "staging"},
		{s.URL, "locker unlock --", "--all --ca-cert --insecure --key --lock-by --url"},
		{s.URL, "locker unlock prod-db --key ", ""},
		{s.URL, "locker run --pool ", "envs"},
		{s.URL, "locker pool show ", "envs"},
		{s.URL, "locker run prod-db -- ", ""},
		{s.URL, "locker completion ", "bash fish zsh"},
		{away, "locker unlock ", ""},
		{away, "locker unl", "unlock"},
	} {
		if got := complete(c.url, c.line); got != c.want {
			t.Errorf("LOCKER_URL=%s: %q<TAB> = %q; want %q", c.url, c.line, got, c.want)
		}
	}
}

// TestCompletionScripts: each shell has one, and an unknown shell is a
// usage error saying which there are.
func TestCompletionScripts(t *testing.T) {
	for shell, want := range map[string]string{"bash": "complete -o default -F _locker locker", "zsh": "compdef _locker locker", "fish": "complete -c locker"} {
		out, err := exec.Command(lockerBin, "completion", shell).Output()
		if err != nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "__complete") {
			t.Errorf("locker completion %s = %v\n%s; want a script with %q", shell, err, out, want)
		}
	}
	cmd := exec.Command(lockerBin, "completion", "tcsh")
	out, _ := cmd.CombinedOutput()
	if code := exitCode(cmd.ProcessState); code != 2 || !strings.Contains(string(out), "bash, zsh or fish") {
		t.Errorf("locker completion tcsh = exit %d %s; want 2 and the shells there are", code, out)
	}
}
