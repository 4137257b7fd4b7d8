package cli

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/locker-ci/locker/client"
	"golang.org/x/term"
)

// holdFlags are the flags of the commands that change a hold.
type holdFlags struct {
	key, lockBy, note string
	ttl               durationFlag
	wait              durationFlag
	all               bool
	limit             int
	supersede         bool
	priority          int
}

func (e *env) keyFlags(h *holdFlags) {
	e.flags.StringVar(&h.key, "key", "", "")
	e.flags.StringVar(&h.lockBy, "lock-by", "", "")
}

// ttlFlag defines --ttl, with its default (none when "").
func (e *env) ttlFlag(h *holdFlags, def string) {
	h.ttl = durationFlag{name: "ttl"}
	e.durationVar(&h.ttl, def)
}

// waitFlag defines --wait: a duration, 0 not to wait, or forever; def is
// its default.
func (e *env) waitFlag(h *holdFlags, def string) {
	h.wait = durationFlag{name: "wait", forever: true, zero: true}
	e.durationVar(&h.wait, def)
}

// waitDeadline is when a wait of f ends: zero for forever, and for no
// wait, when a server that cannot be reached is given up on.
func waitDeadline(f durationFlag) time.Time {
	if f.endless {
		return time.Time{}
	}
	return time.Now().Add(cmp.Or(f.d, patience))
}

// request checks the hold flags and returns them as a request.
func (e *env) request(h holdFlags) (client.Request, int, bool) {
	if h.key == "" {
		return client.Request{}, e.usageError("--key is missing: holders with the same key share a lock, e.g. --key deploy-v1.4"), false
	}
	if h.limit < 0 {
		return client.Request{}, e.usageError("--limit is the most holds the lock may have at once, at least 1 (got %d)", h.limit), false
	}
	if code, ok := e.checkSupersede(h); !ok {
		return client.Request{}, code, false
	}
	return client.Request{Key: h.key, Requestor: h.lockBy, TTL: h.ttl.text, Note: h.note, All: h.all, Limit: h.limit, Supersede: h.supersede, Priority: h.priority}, exitOK, true
}

// supersedeFlag adds --supersede, the request taking the place of its
// requestor's earlier waiting ones, and --priority, its place among the
// waiters.
func (e *env) supersedeFlag(h *holdFlags) {
	e.flags.BoolVar(&h.supersede, "supersede", false, "")
	e.flags.IntVar(&h.priority, "priority", 0, "")
}

// checkSupersede refuses --supersede without a wait or a --lock-by to
// match the earlier requests by.
func (e *env) checkSupersede(h holdFlags) (int, bool) {
	switch {
	case !h.supersede:
	case h.wait.d == 0 && !h.wait.endless:
		return e.usageError("--supersede takes the place of your earlier waiting requests, so it waits: give --wait too, e.g. --wait 30m"), false
	case h.lockBy == "":
		return e.usageError("--supersede replaces the earlier waiting requests of the same --lock-by: give one, e.g. --lock-by deploy-prod"), false
	}
	return exitOK, true
}

// holdArgs reads the arguments of a command that changes a hold (one
// NAME or several, a set changed all at once, and the hold flags), and
// connects. ok is false when the command is done, with code.
func (e *env) holdArgs(args []string, h *holdFlags) (names []string, r client.Request, code int, ok bool) {
	names, code, ok = e.parseUpTo(args, defaultMaxNames)
	if !ok {
		return nil, r, code, false
	}
	if len(names) == 0 {
		return nil, r, e.usageError("NAME is missing"), false
	}
	if dup := duplicate(names); dup != "" {
		return nil, r, e.usageError("%q is named twice", dup), false
	}
	if r, code, ok = e.request(*h); !ok {
		return nil, r, code, false
	}
	if code := e.connect(); code != exitOK {
		return nil, r, code, false
	}
	return names, r, exitOK, true
}

// duplicate returns a name given more than once in names, or "".
func duplicate(names []string) string {
	sorted := slices.Sorted(slices.Values(names))
	for i := 1; i < len(sorted); i++ {
		if sorted[i] == sorted[i-1] {
			return sorted[i]
		}
	}
	return ""
}

// writeTokens prints each lock of a set taken at once, in name order,
// with its fencing token: "NAME TOKEN", a line each.
func writeTokens(w io.Writer, locks map[string]client.Lock) {
	for _, name := range slices.Sorted(maps.Keys(locks)) {
		fmt.Fprintf(w, "%s %d\n", name, locks[name].Token)
	}
}

const lockUsage = `Usage: locker lock NAME... --key K [--wait D] [--ttl D] [--note TEXT] [--lock-by R] [--limit N] [--priority P] [--supersede] [--conflict-exit-code N]

Takes the lock called NAME with key K and prints its fencing token.
Holders with the same key share the lock; another key is refused until
they have all let go. Give it back with locker unlock. With several
names, it takes them all in one change or none (waiting for all of
them), and prints each one's name and token, a line each.

  --key K       the key (required)
  --wait D      queue for the lock for up to D, e.g. 30m (default: do not wait)
  --ttl D       a lease: the lock is freed D after it is taken unless
                renewed (locker renew); default: the server's
  --note TEXT   shown to others, e.g. the build's URL
  --lock-by R   who holds it (default: the key); a holder may hold a
                lock more than once, and unlock gives back one count
  --limit N     at most N holds at once, a semaphore's permits (the
                first holder sets it; every hold counts, a holder's
                second too; the next past it waits, or is refused)
  --priority P  served before the waiters of lower priority, after
                those of the same or higher that came first (default 0)
  --supersede   take the place of the earlier waiting requests of the
                same --lock-by for the same lock or set: they are
                refused (only the newest build deploys); needs --wait
  --conflict-exit-code N
                the exit code when the lock is refused or the wait runs
                out (default 75)

Exit code: 0 taken; 75 (--conflict-exit-code) refused, or the wait ran
out; 2 for a usage or connection error.

Examples:
  token=$(locker lock prod --key deploy --wait 30m --ttl 2h --note "$BUILD_URL")
  locker unlock prod --key deploy
  locker lock prod-db prod-app --key deploy --wait 30m
  locker unlock prod-db prod-app --key deploy
` + connectionHelp

// cmdLock handles locker lock.
func cmdLock(e *env, args []string) int {
	var h holdFlags
	e.keyFlags(&h)
	e.waitFlag(&h, "0")
	e.ttlFlag(&h, "")
	e.flags.StringVar(&h.note, "note", "", "")
	e.flags.IntVar(&h.limit, "limit", 0, "")
	e.supersedeFlag(&h)
	e.conflictFlag()
	names, r, code, ok := e.holdArgs(args, &h)
	if !ok {
		return code
	}
	o := e.progress(waitDeadline(h.wait))
	o.Wait = h.wait.d > 0 || h.wait.endless
	if len(names) > 1 {
		locks, err := e.client.LockSet(e.ctx, names, r, o)
		if err != nil {
			return e.fail(err)
		}
		writeTokens(e.stdout, locks)
		return exitOK
	}
	l, err := e.client.Lock(e.ctx, names[0], r, o)
	if err != nil {
		return e.fail(err)
	}
	fmt.Fprintln(e.stdout, l.Token)
	return exitOK
}

const unlockUsage = `Usage: locker unlock NAME... --key K [--all] [--lock-by R]

Gives back one count of the lock called NAME held with key K (every
count with --all). Unlocking a lock you do not hold is an error (exit 1),
so that a misspelt key does not go unnoticed. With several names, it
gives them all back in one change: a set taken with locker lock, or the
members a locker pool claim took.

Examples:
  locker unlock prod --key deploy
  locker unlock prod --key deploy --lock-by job-42 --all
  locker unlock prod-db prod-app --key deploy
` + connectionHelp

// cmdUnlock handles locker unlock.
func cmdUnlock(e *env, args []string) int {
	var h holdFlags
	e.keyFlags(&h)
	e.flags.BoolVar(&h.all, "all", false, "")
	names, r, code, ok := e.holdArgs(args, &h)
	if !ok {
		return code
	}
	if len(names) > 1 {
		_, released, err := e.client.UnlockSet(e.ctx, names, r, e.progress(time.Now().Add(patience)))
		if err != nil {
			return e.fail(err)
		}
		var none []string
		for _, name := range names {
			if released[name] == 0 {
				none = append(none, strconv.Quote(name))
			}
		}
		if len(none) > 0 {
			fmt.Fprintf(e.stderr, "locker unlock: nothing given back of %s: %s held none of it; the others were given back\n", strings.Join(none, ", "), cmp.Or(r.Requestor, r.Key))
			return exitRefused
		}
		fmt.Fprintf(e.stderr, "locker unlock: gave back %s\n", strings.Join(slices.Sorted(slices.Values(names)), ", "))
		return exitOK
	}
	l, err := e.client.Unlock(e.ctx, names[0], r, e.progress(time.Now().Add(patience)))
	if err != nil {
		return e.fail(err)
	}
	if l.Released != nil && *l.Released == 0 {
		fmt.Fprintf(e.stderr, "locker unlock: nothing given back: %s\n", l.Response)
		return exitRefused
	}
	fmt.Fprintf(e.stderr, "locker unlock: %s\n", l.Response)
	return exitOK
}

const renewUsage = `Usage: locker renew NAME... --key K [--ttl D] [--lock-by R]

Extends your lease on the lock called NAME to D from now (default: the
server's default ttl). Prints when it now runs out. With several names,
it renews them all in one change, and prints each one's name and when
its lease runs out, a line each.

Example:
  locker renew prod --key deploy --ttl 30m
` + connectionHelp

// cmdRenew handles locker renew.
func cmdRenew(e *env, args []string) int {
	var h holdFlags
	e.keyFlags(&h)
	e.ttlFlag(&h, "")
	names, r, code, ok := e.holdArgs(args, &h)
	if !ok {
		return code
	}
	if len(names) > 1 {
		locks, err := e.client.RenewSet(e.ctx, names, r, e.progress(time.Now().Add(patience)))
		if err != nil {
			return e.fail(err)
		}
		for _, name := range slices.Sorted(maps.Keys(locks)) {
			fmt.Fprintf(e.stdout, "%s %s\n", name, locks[name].Holders[cmp.Or(r.Requestor, r.Key)].ExpiresAt.Format(time.RFC3339))
		}
		return exitOK
	}
	l, err := e.client.Renew(e.ctx, names[0], r, e.progress(time.Now().Add(patience)))
	if err != nil {
		return e.fail(err)
	}
	fmt.Fprintln(e.stdout, l.Holders[cmp.Or(r.Requestor, r.Key)].ExpiresAt.Format(time.RFC3339))
	return exitOK
}

const forceUsage = `Usage: locker force-unlock NAME --reason TEXT [--token N]

Frees the lock called NAME whoever holds it: for a lock left by a build
that will not come back. The lock's history, the stream and the server's
log keep who asked and why (--reason; at a terminal, asked for when not
given). Its holders are not told; if what the lock guards checks fencing
tokens, their writes are refused from now on.

  --reason TEXT  why the lock is forced free
  --token N      free it only while it is held at fencing token N, as
                 locker show printed it: if it changed hands since, the
                 next holder keeps it (exit 1)

Examples:
  locker show prod
  locker force-unlock prod --token 17 --reason "deploy 41 was aborted"
` + connectionHelp

// cmdForceUnlock handles locker force-unlock.
func cmdForceUnlock(e *env, args []string) int {
	var f client.Forcing
	e.flags.StringVar(&f.Reason, "reason", "", "")
	e.flags.Uint64Var(&f.Token, "token", 0, "")
	pos, code, ok := e.parse(args, "NAME")
	if !ok {
		return code
	}
	if f.Reason == "" {
		if f.Reason = e.ask(fmt.Sprintf("Why is %q to be forced free? (its history keeps the answer) ", pos[0])); f.Reason == "" {
			return e.usageError("--reason is missing: say why the lock is forced free, e.g. --reason \"deploy 41 was aborted\" (its history keeps it)")
		}
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	l, err := e.client.ForceUnlockWith(e.ctx, pos[0], f, e.progress(time.Now().Add(patience)))
	if err != nil {
		return e.fail(err)
	}
	fmt.Fprintf(e.stderr, "locker force-unlock: %s\n", l.Response)
	return exitOK
}

// ask asks a person at a terminal question, on stderr, and returns the
// line they answer, trimmed; "" when no one is at a terminal.
func (e *env) ask(question string) string {
	if e.stdin == nil || !term.IsTerminal(int(e.stdin.Fd())) {
		return ""
	}
	fmt.Fprint(e.stderr, question)
	line, _ := bufio.NewReader(e.stdin).ReadString('\n')
	return strings.TrimSpace(line)
}

const healthUsage = `Usage: locker health [--url URL]

Asks the server's GET /healthz and exits 0 if it answers 200, 1 if not.
Without --url or LOCKER_URL, it asks the server this environment
configures, on this machine: https when SSL_CERT is set (its certificate
is not checked: the address is the loopback), on PORT (default 3000).
For a container's HEALTHCHECK or a monit check.

Example:
  locker health --url https://locker.example.com:8910
` + connectionHelp

// cmdHealth handles locker health.
func cmdHealth(e *env, args []string) int {
	if _, code, ok := e.parse(args); !ok {
		return code
	}
	if e.conn.url == "" {
		scheme := "http"
		if e.getenv("SSL_CERT") != "" {
			scheme, e.conn.insecure = "https", true
		}
		e.conn.url = fmt.Sprintf("%s://127.0.0.1:%s", scheme, cmp.Or(e.getenv("PORT"), "3000"))
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	if _, err := e.client.Do(ctx, http.MethodGet, "/healthz", nil, nil, ""); err != nil {
		fmt.Fprintf(e.stderr, "locker health: %s: %v\n", e.conn.url, err)
		return exitRefused
	}
	return exitOK
}
