// Package cli is the locker command line's client side: run a command
// while holding a lock (locker run), take and give back locks from
// scripts, and see them. It talks to the server through internal/client,
// as the Concourse resource does.
//
// Exit codes: 0 done; 1 refused or timed out (the lock is held by someone
// else, and the message says by whom); 2 a usage or connection error;
// locker run exits with its command's code, or 3 when it lost the lock
// while the command ran.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/locker-ci/locker/internal/client"
)

// Exit codes.
const (
	exitOK       = 0
	exitRefused  = 1 // the lock is held by another key, or the wait ran out
	exitUsage    = 2 // bad arguments, or the server could not be reached
	exitLockLost = 3 // run: the lease could not be renewed while the command ran
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
	{"pool", "make, list, show and remove pools of interchangeable locks", poolUsage, cmdPool},
	{"force-unlock", "free a stuck lock, whoever holds it", forceUsage, cmdForceUnlock},
	{"health", "check that a server serves (for container and monit health checks)", healthUsage, cmdHealth},
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
	stdout, stderr io.Writer
	name           string // the command's name, for messages
	usage          string // the command's help
	flags          *flag.FlagSet
	conn           connFlags
	client         *client.Client
}

// connFlags are the settings every command takes: which server, and how.
type connFlags struct {
	url, caCert string
	insecure    bool
}

// IsCommand reports whether arg names one of the client's commands (or
// asks for help), so that main knows the binary is run as a client.
func IsCommand(arg string) bool {
	return arg == "help" || slices.ContainsFunc(commands, func(c command) bool { return c.name == arg })
}

// Main runs the client command in args[0] with the rest of args, and
// returns the process's exit code. SIGINT and SIGTERM cancel what the
// command waits for; run passes them on to its command instead.
func Main(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" {
		if len(args) > 1 {
			if c, ok := find(args[1]); ok {
				fmt.Fprint(stdout, c.usage)
				return exitOK
			}
		}
		fmt.Fprint(stdout, help())
		return exitOK
	}
	c, ok := find(args[0])
	if !ok {
		fmt.Fprintf(stderr, "locker: unknown command %q; locker help lists them\n", args[0])
		return exitUsage
	}
	ctx, stop := context.Background(), func() {}
	if c.name != "run" { // run handles the signals itself
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	}
	defer stop()
	e := &env{ctx: ctx, getenv: getenv, stdout: stdout, stderr: stderr, name: c.name, usage: c.usage,
		flags: flag.NewFlagSet("locker "+c.name, flag.ContinueOnError)}
	e.flags.SetOutput(io.Discard) // errors are said once, by fail
	e.flags.Usage = func() {}
	e.flags.StringVar(&e.conn.url, "url", getenv("LOCKER_URL"), "")
	e.flags.StringVar(&e.conn.caCert, "ca-cert", getenv("LOCKER_CA_CERT"), "")
	e.flags.BoolVar(&e.conn.insecure, "insecure", false, "")
	return c.run(e, args[1:])
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
			return nil, e.usageError("%v", err), false
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

// usageError says what is wrong with the command line, and how it goes.
func (e *env) usageError(format string, args ...any) int {
	first, _, _ := strings.Cut(strings.TrimSpace(e.usage), "\n")
	fmt.Fprintf(e.stderr, "locker %s: %s\n%s\n(locker %s -h for more)\n", e.name, fmt.Sprintf(format, args...), first, e.name)
	return exitUsage
}

// connect makes the client from the connection settings.
func (e *env) connect() int {
	cfg := client.Config{URL: e.conn.url, User: e.getenv("LOCKER_USER"), Password: e.getenv("LOCKER_PASSWORD"),
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

// fail says what went wrong and returns the exit code for it: 1 for a
// refusal or a wait that ran out, 2 for anything else.
func (e *env) fail(err error) int {
	fmt.Fprintf(e.stderr, "locker %s: %v\n", e.name, err)
	var timedOut *client.TimedOut
	switch {
	case client.IsStatus(err, http.StatusLocked), errors.As(err, &timedOut) && client.IsStatus(timedOut.Last, http.StatusLocked):
		return exitRefused
	case client.IsStatus(err, http.StatusUnauthorized):
		fmt.Fprintln(e.stderr, "  (set LOCKER_USER and LOCKER_PASSWORD to the server's AUTH_USER and AUTH_PASS)")
	}
	return exitUsage
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
  locker                 serve the lock API (the same as locker serve;
                         locker serve -h lists its settings)
  locker COMMAND [ARGS]  talk to a locker server:

`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-13s %s\n", c.name, c.summary)
	}
	b.WriteString(connectionHelp + `
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
  LOCKER_USER, LOCKER_PASSWORD   the server's basic-auth credentials
`
