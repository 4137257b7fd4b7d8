// Package cli is the locker command line's client side: run a command
// while holding a lock (locker run), take and give back locks from
// scripts, and see them. It talks to the server through package client,
// as the Concourse resource does.
//
// Exit codes: 0 done; 1 refused or timed out (the lock is held by someone
// else, and the message says by whom); 2 a usage or connection error;
// locker run exits with its command's code, or 3 when it lost the lock
// while the command ran.
package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/locker-ci/locker/client"
	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/nearest"
)

// Exit codes.
const (
	exitOK       = 0
	exitRefused  = 1 // the lock is held by another key, or the wait ran out
	exitUsage    = 2 // bad arguments, or the server could not be reached
	exitLockLost = 3 // run: the lease could not be renewed while the command ran
	// exitConflict: lock and run, the lock refused or the wait ran out
	// (--conflict-exit-code; sysexits' EX_TEMPFAIL, "try again later"),
	// so that a script tells a run skipped from a command that failed.
	exitConflict = 75
)

// patience is how long a command keeps retrying a server it cannot reach
// (or that fails) before it gives up with exit code 2, when no --wait
// says otherwise: long enough for a server restart.
const patience = time.Minute

// commands lists the client's commands, in the order help shows them.
var commands = []command{
	{"run", "run a command while holding a lock", runUsage, cmdRun},
	{"lock", "take a lock, for scripts that span steps", lockUsage, cmdLock},
	{"unlock", "give a lock back", unlockUsage, cmdUnlock},
	{"renew", "extend your lease on a lock", renewUsage, cmdRenew},
	{"ls", "list the locks", lsUsage, cmdLs},
	{"show", "show one lock, its holders and its queue", showUsage, cmdShow},
	{"history", "show who took and gave back a lock, newest first", historyUsage, cmdHistory},
	{"watch", "show the changes to locks as they happen", watchUsage, cmdWatch},
	{"pool", "make, list, show and remove pools of interchangeable locks", poolUsage, cmdPool},
	{"credential", "make, list, rotate and revoke credentials with roles on name prefixes", credentialUsage, cmdCredential},
	{"force-unlock", "free a stuck lock, whoever holds it", forceUsage, cmdForceUnlock},
	{"health", "check that a server serves (for container and monit health checks)", healthUsage, cmdHealth},
	{"completion", "print the shell completion script for bash, zsh or fish", completionUsage, cmdCompletion},
}

// command is one of the client's commands.
type command struct {
	name, summary, usage string
	run                  func(e *env, args []string) int
}

// env is what a command runs with: its streams, settings and client.
type env struct {
	ctx            context.Context
	getenv         func(string) string
	stdin          *os.File // for a question to a person at a terminal
	stdout, stderr io.Writer
	name           string // the command's name, for messages
	usage          string // the command's help
	flags          *flag.FlagSet
	conn           connFlags
	client         *client.Client
	conflictExit   int // the exit code of a refusal, or a wait that ran out (0: exitRefused)
}

// connFlags are the settings every command takes: which server, and how.
type connFlags struct {
	url, caCert string
	insecure    bool
}

// serverWords are the first arguments that run the server, not the
// client: serve, migrate, version and --version (and none at all).
var serverWords = []string{"serve", "migrate", "version", "-v", "-version", "--version"}

// IsServer reports whether args, the command line after the program's
// name, run the server; everything else is the client's, help included.
func IsServer(args []string) bool {
	return len(args) == 0 || slices.Contains(serverWords, args[0])
}

// connection flags go anywhere on the command line, before the command
// as well as after it; the value says whether the flag takes one.
var connection = map[string]bool{"url": true, "ca-cert": true, "insecure": false}

// Main runs the client command in args (the command line after the
// program's name), and returns the process's exit code. SIGINT and SIGTERM
// cancel what the command waits for; run passes them on to its command
// instead.
func Main(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == completeWord {
		return complete(args[1:], getenv, stdout)
	}
	global, args, err := splitConnection(args)
	if err != nil {
		fmt.Fprintf(stderr, "locker: %v\n", err)
		return exitUsage
	}
	if len(args) == 0 {
		fmt.Fprintln(stderr, "locker: the command is missing, e.g. locker --url https://locker.example.com:8910 ls (locker help lists them)")
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		return helpFor(args[1:], stdout, stderr)
	case "serve", "migrate":
		fmt.Fprintf(stderr, "locker: --url, --ca-cert and --insecure are the client's; locker %s reads its settings from the environment (locker %s -h)\n", args[0], args[0])
		return exitUsage
	}
	c, ok := lookup("locker", args[0], stderr)
	if !ok {
		return exitUsage
	}
	args = append(global, args[1:]...)
	ctx, stop := context.Background(), func() {}
	if c.name != "run" { // run handles the signals itself
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	}
	defer stop()
	e := &env{ctx: ctx, getenv: getenv, stdin: os.Stdin, stdout: stdout, stderr: stderr, name: c.name, usage: c.usage,
		flags: flag.NewFlagSet("locker "+c.name, flag.ContinueOnError)}
	e.flags.SetOutput(io.Discard) // errors are said once, by fail
	e.flags.Usage = func() {}
	e.flags.StringVar(&e.conn.url, "url", getenv("LOCKER_URL"), "")
	e.flags.StringVar(&e.conn.caCert, "ca-cert", getenv("LOCKER_CA_CERT"), "")
	e.flags.BoolVar(&e.conn.insecure, "insecure", false, "")
	return c.run(e, args)
}

// splitConnection takes the connection flags that come before the command
// off args, and returns them apart.
func splitConnection(args []string) (flags, rest []string, err error) {
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-" {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[0], "-"), "=")
		takesValue, ok := connection[name]
		switch {
		case name == "h" || name == "help":
			return flags, args, nil
		case !ok:
			return nil, nil, fmt.Errorf("unknown flag %s before the command%s: the server reads its settings from the environment (locker serve -h lists them), and each command has its own flags (locker help COMMAND)",
				args[0], didYouMean(name, slices.Collect(maps.Keys(connection))))
		case takesValue && !hasValue && len(args) < 2:
			return nil, nil, fmt.Errorf("%s needs a value, e.g. --url https://locker.example.com:8910", args[0])
		case takesValue && !hasValue:
			flags, args = append(flags, args[0], args[1]), args[2:]
		default:
			flags, args = append(flags, args[0]), args[1:]
		}
	}
	return flags, args, nil
}

// helpFor prints the help the arguments of locker help ask for: the
// client's commands, or one command's usage.
func helpFor(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stdout, help())
		return exitOK
	}
	if args[0] == "serve" || args[0] == "migrate" {
		fmt.Fprintf(stdout, "locker %s has its own help: locker %s -h\n", args[0], args[0])
		return exitOK
	}
	c, ok := lookup("locker help", args[0], stderr)
	if !ok {
		return exitUsage
	}
	fmt.Fprint(stdout, c.usage)
	return exitOK
}

// lookup finds the command called name, or says on stderr, after prefix,
// that there is none, and which is nearest.
func lookup(prefix, name string, stderr io.Writer) (command, bool) {
	c, ok := find(name)
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown command %q%s (locker help lists them)\n", prefix, name, didYouMean(name, commandNames()))
	}
	return c, ok
}

// commandNames are the words that may start a command line.
func commandNames() []string {
	names := []string{"help", "serve", "migrate"}
	for _, c := range commands {
		names = append(names, c.name)
	}
	return names
}

// didYouMean returns "; did you mean X?" for the candidate nearest to
// word, or "" when none is near.
func didYouMean(word string, candidates []string) string {
	slices.Sort(candidates) // the same answer every time
	if near, ok := nearest.Word(word, candidates); ok {
		return fmt.Sprintf("; did you mean %s?", near)
	}
	return ""
}

func find(name string) (command, bool) {
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		return command{}, false
	}
	return commands[i], true
}

// parse reads the command's flags, which may come before, between or
// after its positional arguments, and checks that there are want of those
// (names them in the message). -h prints the command's help.
func (e *env) parse(args []string, want ...string) ([]string, int, bool) {
	positional, code, ok := e.parseUpTo(args, len(want))
	if ok && len(positional) < len(want) {
		return nil, e.usageError("%s is missing", want[len(positional)]), false
	}
	return positional, code, ok
}

// parseUpTo reads the command's flags, as parse does, and at most max
// positional arguments.
func (e *env) parseUpTo(args []string, max int) ([]string, int, bool) {
	var positional []string
	for {
		if err := e.flags.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(e.stdout, e.usage)
				return nil, exitOK, false
			}
			return nil, e.usageError("%s", e.flagError(err)), false
		}
		args = e.flags.Args()
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	if len(positional) > max {
		return nil, e.usageError("too many arguments: %q", positional[max:]), false
	}
	return positional, exitOK, true
}

// flagError says err, the flag package's, in the command's terms: an
// unknown flag with the nearest one the command has.
func (e *env) flagError(err error) string {
	if rest, ok := strings.CutPrefix(err.Error(), "invalid value "); ok {
		// A value's own error names its flag (durationFlag); the rest,
		// flag's "invalid value "x" for flag -n: parse error", in ours.
		_, why, _ := strings.Cut(rest, ": ")
		if strings.HasPrefix(why, "--") {
			return why
		}
		return strings.Replace(err.Error(), " for flag -", " for --", 1)
	}
	name, unknown := strings.CutPrefix(err.Error(), "flag provided but not defined: -")
	if !unknown {
		return strings.Replace(err.Error(), ": -", ": --", 1) // "flag needs an argument: --ttl"
	}
	var names []string
	e.flags.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	msg := fmt.Sprintf("unknown flag --%s", name)
	if near, ok := nearest.Word(name, names); ok {
		msg += fmt.Sprintf("; did you mean --%s?", near)
	}
	return msg
}

// usageError says what is wrong with the command line, and how it goes.
func (e *env) usageError(format string, args ...any) int {
	first, _, _ := strings.Cut(strings.TrimSpace(e.usage), "\n")
	fmt.Fprintf(e.stderr, "locker %s: %s\n%s\n(locker %s -h for more)\n", e.name, fmt.Sprintf(format, args...), first, e.name)
	return exitUsage
}

// terms say the advice in the server's messages in the command line's words.
var terms = advice.Terms{
	advice.Wait:        "--wait 5m waits for it",
	advice.WaitForThem: "--wait 5m waits for them",
	advice.Take:        "take it again with locker lock",
	advice.ReleaseKey:  "--key must be the key the lock was taken with",
	advice.Auth:        "set LOCKER_USER and LOCKER_PASSWORD to a credential's name and secret (or the server's AUTH_USER and AUTH_PASS)",
	advice.RenewTTL:    "the server has no default lease (LOCKER_DEFAULT_TTL), so say how long: --ttl, e.g. --ttl 10m",
	advice.ShorterTTL:  "ask for a shorter --ttl, and renew it with locker renew",
	advice.Limit:       "pass --limit ",
	advice.Pools:       "locker pool ls lists them, and locker pool set POOL MEMBER... makes one",
	advice.Resume:      "locker watch goes on from the last event it showed",
	advice.ReadAgain:   "see it again with locker show NAME, and give its token with --token",
}

// connect makes the client from the connection settings.
func (e *env) connect() int {
	cfg := client.Config{URL: e.conn.url, User: e.getenv("LOCKER_USER"), Password: e.getenv("LOCKER_PASSWORD"), Rewrite: terms.Replace,
		Insecure: e.conn.insecure, TLSAdvice: "pass --ca-cert FILE (or set LOCKER_CA_CERT) with the CA's certificate, or --insecure to trust any (not recommended)"}
	if cfg.URL == "" {
		fmt.Fprintf(e.stderr, "locker %s: which server? Set LOCKER_URL (e.g. export LOCKER_URL=https://locker.example.com:8910) or pass --url\n", e.name)
		return exitUsage
	}
	if e.conn.caCert != "" {
		pem, err := os.ReadFile(e.conn.caCert)
		if err != nil {
			fmt.Fprintf(e.stderr, "locker %s: reading the CA certificate: %v\n", e.name, err)
			return exitUsage
		}
		cfg.CACert = pem
	}
	c, err := client.New(cfg)
	if err != nil {
		fmt.Fprintf(e.stderr, "locker %s: %v\n", e.name, err)
		return exitUsage
	}
	e.client = c
	return exitOK
}

// fail says what went wrong and returns the exit code for it: for a
// refusal or a wait that ran out, the command's conflict code (1 unless
// it takes --conflict-exit-code), 2 for anything else.
func (e *env) fail(err error) int {
	if errors.Is(err, context.Canceled) {
		err = errors.New("interrupted before the locker answered")
	}
	fmt.Fprintf(e.stderr, "locker %s: %v\n", e.name, err)
	var timedOut *client.TimedOut
	switch {
	case client.IsStatus(err, http.StatusLocked), client.IsStatus(err, http.StatusPreconditionFailed),
		errors.As(err, &timedOut) && client.IsStatus(timedOut.Last, http.StatusLocked),
		client.IsStatus(err, http.StatusConflict) && takenOutOfTheQueue(err):
		return cmp.Or(e.conflictExit, exitRefused)
	}
	return exitUsage
}

// takenOutOfTheQueue reports whether err, a 409, says the request was
// taken out of the queue: by an operator, or by a newer request of its
// requestor (--supersede). The run did not get the lock, as for a refusal.
func takenOutOfTheQueue(err error) bool {
	return strings.Contains(err.Error(), "removed from the queue by") || strings.Contains(err.Error(), "superseded by a newer request from")
}

// conflictFlag adds --conflict-exit-code, the exit code of a refusal or
// a wait that ran out (default exitConflict).
func (e *env) conflictFlag() {
	e.conflictExit = exitConflict
	e.flags.Func("conflict-exit-code", "", func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 255 {
			return fmt.Errorf("--conflict-exit-code must be an exit code from 1 to 255, e.g. %d (got %q; 0 would say the lock was taken)", exitConflict, s)
		}
		e.conflictExit = n
		return nil
	})
}

// progress returns client options that tell stderr what is happening,
// with deadline (zero for none).
func (e *env) progress(deadline time.Time) client.Options {
	return client.Options{Deadline: deadline, ReportFirst: 100 * time.Millisecond, // at once, once in the queue
		Progress: func(msg string) { fmt.Fprintf(e.stderr, "locker %s: %s\n", e.name, msg) }}
}

func help() string {
	var b strings.Builder
	b.WriteString(`locker: named locks for CI pipelines.

Usage:
  locker serve           serve the lock API (locker with no arguments does
                         too); locker serve -h lists its settings
  locker migrate         copy the locks between a state file and
                         PostgreSQL (locker migrate -h)
  locker version         say which version this is (also --version)
  locker COMMAND [ARGS]  talk to a locker server:

`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-13s %s\n", c.name, c.summary)
	}
	b.WriteString(connectionHelp + `
  The connection flags go before the command or after it.
  locker help COMMAND, or locker COMMAND -h, says more, with examples.

Exit codes: 0 done; 1 refused or timed out (the lock is held, and the
message says by whom); 2 a usage or connection error; locker run exits with
its command's code, or 3 if it lost the lock while the command ran.
`)
	return b.String()
}

// connectionHelp is part of every command's help.
const connectionHelp = `
Connection (every command):
  --url URL        the server, e.g. https://locker.example.com:8910
                   (default $LOCKER_URL)
  --ca-cert FILE   trust this CA's certificate (PEM) as well as the
                   system's (default $LOCKER_CA_CERT)
  --insecure       trust any certificate (not recommended)
  LOCKER_USER, LOCKER_PASSWORD   a credential's name and secret (or the
                                 server's AUTH_USER and AUTH_PASS)
`
