package cli_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/testutil"
)

// shellCompletion runs the completion script locker completion prints in
// a real shell, for the words of a command line (the last one is what TAB
// completes), and prints the candidates a line each.
var shellCompletion = map[string]string{
	"bash": `source <(locker completion bash) || exit 1
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
_locker
for c in "${COMPREPLY[@]}"; do printf '%s\n' "$c"; done`,
	// zsh completes only inside its line editor; here the script's _locker
	// runs as the completion system would call it, with words and CURRENT
	// set, and compadd (a builtin of the editor's) a function printing
	// what it was given to add.
	"zsh": `compdef() { }
compadd() { [[ $1 == -a ]] || return 1; for c in "${(@P)2}"; do print -r -- "$c"; done }
source <(locker completion zsh) || exit 1
words=("$@"); CURRENT=$#
_locker`,
	// fish -c sets argv after the script: the line, in one word.
	"fish": `locker completion fish | source; or exit 1
complete --do-complete (string join ' ' -- $argv)`,
}

// TestShellsComplete sources the script locker completion prints, in a
// real bash, zsh and fish, and completes as a user's TAB would: commands,
// a command's flags, the lock names on the server (with its credentials
// from the environment), pool names, and nothing at all, quietly, when
// the server is away.
func TestShellsComplete(t *testing.T) {
	s := server(t)
	for _, name := range []string{"prod-deploy", "prod-db", "staging"} {
		put(t, s, "/lock/"+name, `{"key": "k", "lock_by": "job"}`)
	}
	put(t, s, "/pool/envs", `{"members": ["env-1", "env-2"]}`)
	away := "http://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	cases := []struct{ url, line, want string }{
		{s.URL, "locker lo", "lock"},
		{s.URL, "locker ", "completion credential force-unlock health help history lock ls migrate pool renew run serve show unlock version watch"},
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
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			path, err := exec.LookPath(shell)
			if err != nil {
				msg := fmt.Sprintf("no %s on this machine, so its completion was not tried; install it with `sudo apt-get install %s` (make test does so as root)", shell, shell)
				if os.Getenv("CI") != "" {
					t.Fatal(msg + " (CI is set, and CI must run it)")
				}
				t.Skip(msg)
			}
			for _, c := range cases {
				args := []string{"-c", shellCompletion[shell], shell}
				words := strings.Split(c.line, " ")
				switch shell {
				case "fish":
					args = append([]string{"--no-config"}, args[:2]...)
					args = append(args, c.line)
				default:
					args = append(args, words...)
				}
				cmd := exec.Command(path, args...)
				cmd.Env = []string{"PATH=" + filepath.Dir(lockerBin) + ":/usr/bin:/bin", "HOME=" + t.TempDir(),
					"LOCKER_URL=" + c.url, "LOCKER_USER=ci", "LOCKER_PASSWORD=s3cret"}
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("%s completing %q: %v\n%s", shell, c.line, err, out)
				}
				// A line each, and no line at all for no candidates: an
				// empty candidate is a bug (zsh would offer it).
				want := strings.ReplaceAll(c.want, " ", "\n") + "\n"
				if c.want == "" {
					want = ""
				}
				if string(out) != want {
					t.Errorf("LOCKER_URL=%s: %q<TAB> = %q; want %q", c.url, c.line, out, want)
				}
			}
		})
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
