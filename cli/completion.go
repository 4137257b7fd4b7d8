package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/client"
)

// Shell completion. The scripts locker completion prints are a few lines
// each: they hand the words typed so far to locker __complete, which
// prints the candidates for the last one, a line each. So bash, zsh and
// fish complete alike, and the logic is here, in Go, with the commands'
// own help as the list of their flags.

const completionUsage = `Usage: locker completion bash|zsh|fish

Prints a script that completes locker's commands and flags, and the names
of the locks and pools on the server ($LOCKER_URL, or the --url on the
line being completed). A server that does not answer within a second
completes no names; nothing is printed about it.

  bash:  source <(locker completion bash)     # in ~/.bashrc
  zsh:   source <(locker completion zsh)      # in ~/.zshrc, after compinit
  fish:  locker completion fish > ~/.config/fish/completions/locker.fish
`

// completeWord is the hidden first argument the scripts call locker with.
const completeWord = "__complete"

// completionTimeout is how long completion waits for the server's names.
const completionTimeout = time.Second

var scripts = map[string]string{
	"bash": `# locker's completion for bash: source <(locker completion bash)
_locker() {
	local IFS=$'\n'
	COMPREPLY=($(locker __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -F _locker locker
`,
	"zsh": `#compdef locker
# locker's completion for zsh: source <(locker completion zsh)
_locker() {
	local -a candidates
	candidates=(${(f)"$(locker __complete "${(@)words[2,CURRENT]}" 2>/dev/null)"})
	compadd -a candidates
}
compdef _locker locker
`,
	"fish": `# locker's completion for fish: locker completion fish > ~/.config/fish/completions/locker.fish
complete -c locker -f -a '(locker __complete (commandline -opc)[2..-1] (commandline -ct) 2>/dev/null)'
`,
}

// cmdCompletion handles locker completion SHELL.
func cmdCompletion(e *env, args []string) int {
	pos, code, ok := e.parseUpTo(args, 1)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return e.usageError("which shell? locker completion bash, zsh or fish")
	}
	script, ok := scripts[pos[0]]
	if !ok {
		return e.usageError("no completion for %q: bash, zsh or fish", pos[0])
	}
	fmt.Fprint(e.stdout, script)
	return exitOK
}

// namesOf are the commands whose first word after the command is a lock's
// name.
var namesOf = []string{"run", "lock", "unlock", "renew", "show", "history", "watch", "force-unlock"}

// usageFlag finds a flag in a usage line, and the word after it that
// says it takes a value.
var usageFlag = regexp.MustCompile(`--([a-z][a-z-]*)( [A-Z]+)?`)

// complete prints the candidates for the last of words, the command line
// after locker's name, that start with it, a line each; and never fails.
func complete(words []string, getenv func(string) string, stdout io.Writer) int {
	if len(words) == 0 {
		words = []string{""}
	}
	cur, before := words[len(words)-1], words[:len(words)-1]
	url := getenv("LOCKER_URL")
	var pos []string // the words before cur that are not flags or their values
	takesValue := map[string]bool{"url": true, "ca-cert": true}
	for i := 0; i < len(before); i++ {
		w := before[i]
		if w == "--" {
			return exitOK // what follows is a command to run
		}
		if !strings.HasPrefix(w, "-") || w == "-" {
			pos = append(pos, w)
			if len(pos) == 1 {
				maps.Copy(takesValue, flagsOf(w))
			}
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
		if !hasValue && takesValue[name] && i+1 < len(before) {
			i++
			value = before[i]
		}
		if name == "url" {
			url = value
		}
	}
	last := "" // the flag cur may be the value of
	if n := len(before); n > 0 && strings.HasPrefix(before[n-1], "-") && !strings.Contains(before[n-1], "=") {
		last = strings.TrimLeft(before[n-1], "-")
	}
	var candidates []string
	switch {
	case strings.HasPrefix(cur, "-"):
		if strings.Contains(cur, "=") {
			return exitOK
		}
		flags := map[string]bool{"url": true, "ca-cert": true, "insecure": false}
		if len(pos) > 0 {
			maps.Copy(flags, flagsOf(pos[0]))
		}
		for f := range flags {
			candidates = append(candidates, "--"+f)
		}
	case last == "pool":
		candidates = poolNames(url, getenv)
	case takesValue[last]:
		return exitOK // a flag's value: the shell completes files
	case len(pos) == 0:
		candidates = []string{"help", "serve", "migrate", "version"}
		for _, c := range commands {
			candidates = append(candidates, c.name)
		}
	case pos[0] == "help" && len(pos) == 1:
		for _, c := range commands {
			candidates = append(candidates, c.name)
		}
	case pos[0] == "completion" && len(pos) == 1:
		candidates = []string{"bash", "fish", "zsh"}
	case pos[0] == "pool" && len(pos) == 1:
		candidates = []string{"ls", "rm", "set", "show"}
	case pos[0] == "pool" && len(pos) == 2 && pos[1] != "ls":
		candidates = poolNames(url, getenv)
	case pos[0] == "pool" && pos[1] == "set":
		candidates = lockNames(url, cur, getenv)
	case slices.Contains(namesOf, pos[0]) && len(pos) == 1:
		candidates = lockNames(url, cur, getenv)
	}
	slices.Sort(candidates)
	for _, c := range candidates {
		if strings.HasPrefix(c, cur) {
			fmt.Fprintln(stdout, c)
		}
	}
	return exitOK
}

// flagsOf returns the flags of the command called name, as its help's
// usage lines give them, each with whether it takes a value.
func flagsOf(name string) map[string]bool {
	flags := map[string]bool{}
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		return flags
	}
	usage, _, _ := strings.Cut(commands[i].usage, "\n\n") // the usage lines, not the examples
	for _, m := range usageFlag.FindAllStringSubmatch(usage, -1) {
		flags[m[1]] = m[2] != ""
	}
	return flags
}

// completionClient is a client of the server at url with the
// credentials of the environment, or nil.
func completionClient(url string, getenv func(string) string) *client.Client {
	if url == "" {
		return nil
	}
	cfg := client.Config{URL: url, User: getenv("LOCKER_USER"), Password: getenv("LOCKER_PASSWORD"), Rewrite: terms.Replace}
	if path := getenv("LOCKER_CA_CERT"); path != "" {
		cfg.CACert, _ = os.ReadFile(path) // unreadable: the TLS handshake fails, quietly
	}
	c, err := client.New(cfg)
	if err != nil {
		return nil
	}
	return c
}

// lockNames returns the names of the locks held or waited for on the
// server at url that start with prefix, or none.
func lockNames(url, prefix string, getenv func(string) string) []string {
	c := completionClient(url, getenv)
	if c == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	locks, _, err := c.Page(ctx, prefix, "", 1000)
	if err != nil {
		return nil
	}
	names := make([]string, len(locks))
	for i, l := range locks {
		names[i] = l.Name
	}
	return names
}

// poolNames returns the names of the pools on the server at url, or none.
func poolNames(url string, getenv func(string) string) []string {
	c := completionClient(url, getenv)
	if c == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	pools, err := c.Pools(ctx)
	if err != nil {
		return nil
	}
	return slices.Collect(maps.Keys(pools))
}
