package cli

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/locker-ci/locker/client"
)

const runUsage = `Usage: locker run NAME [--key K] [--ttl D] [--wait D] [--note TEXT] [--lock-by R] [--grace D] [--limit N] [--priority P] [--supersede] -- CMD [ARGS...]
       locker run NAME NAME... [flags] -- CMD [ARGS...]   (or --lock NAME, once per lock)
       locker run --pool POOL [--count N] [flags] -- CMD [ARGS...]

Takes the lock called NAME (queueing for it, and saying every 30 s who
holds it and where this run stands in the queue), runs CMD, and gives the
lock back when CMD ends. With several names (or --lock, once per lock),
it takes every lock at once, or waits for all of them; with --pool, it
takes --count free members of the pool (default 1). The lock has a lease of --ttl, renewed every third
of it while CMD runs, so that a run killed with kill -9, or on a machine
that died, frees the lock when the lease runs out.

If the lease cannot be renewed (the server unreachable until the lease
would run out, or the lock force-released), CMD is stopped: SIGTERM, then
SIGKILL after --grace. It never runs on without the lock. SIGINT and
SIGTERM sent to locker run are passed to CMD; the lock is given back after
CMD exits. CMD finds the fencing token in $LOCKER_TOKEN and the lock's name
in $LOCKER_LOCK when it holds one lock, and the names of all it holds in
$LOCKER_LOCKS, separated by spaces.

  --key K       the key; runs with the same key share the lock
                (default: a key of this run's own, so it runs alone)
  --ttl D       the lease (default 2m; at least 1s)
  --wait D      how long to queue for the lock: a duration, 0 not to
                wait, or forever (the default)
  --note TEXT   shown to others (default: the command line)
  --lock-by R   who holds it (default: HOST:PID)
  --grace D     between SIGTERM and SIGKILL when the lock is lost
                (default 10s, at most a quarter of the ttl)
  --lock NAME   a lock to take with the others (repeat it)
  --pool POOL   take free members of the pool instead of named locks
  --count N     with --pool: how many members (default 1)
  --limit N     let N runs hold the lock at once, a semaphore's permits
                (as consul lock -n N); runs must share the --key
  --priority P  served before the waiting runs of lower priority
                (default 0; a hotfix passes 10)
  --supersede   take the place of the earlier waiting runs of the same
                --lock-by for the same locks or pool: they exit 75 without
                running their command (only the newest build deploys)
  --conflict-exit-code N
                the exit code when the lock is refused or the wait runs
                out, CMD not run (default 75)

Exit code: CMD's (128+N if a signal N killed it); 75 (--conflict-exit-code)
if the lock was refused or the wait ran out, and CMD did not run; 2 for a
usage or connection error; 3 if the lock was lost while CMD ran.

Examples:
  locker run prod -- ./deploy.sh
  locker run staging --key tests --wait 30m --note "$BUILD_URL" -- make integration-test
  locker run --lock prod-db --lock prod-app -- ./deploy.sh
  locker run --pool staging -- sh -c './e2e.sh "$LOCKER_LOCK"'
` + connectionHelp

// Tuned for run.
const (
	defaultTTL = 2 * time.Minute // a run killed by kill -9 holds the lock this long
	minRunTTL  = time.Second     // the server's shortest lease; renewals come every third of it
	maxGrace   = 10 * time.Second
	maxNote    = 200 // bytes of the command line shown as the default note
	// releasePatience bounds the release after CMD: if the server cannot
	// be reached by then, the lease frees the lock.
	releasePatience = 30 * time.Second
)

// runFlags are locker run's settings.
type runFlags struct {
	holdFlags
	grace durationFlag
}

// cmdRun handles locker run.
func cmdRun(e *env, args []string) int {
	dash := slices.Index(args, "--")
	if dash < 0 && slices.ContainsFunc(args, func(a string) bool { return a == "-h" || a == "-help" || a == "--help" }) {
		fmt.Fprint(e.stdout, e.usage)
		return exitOK
	}
	if dash < 0 || dash == len(args)-1 {
		return e.usageError("the command to run goes after --, e.g. locker run prod -- ./deploy.sh")
	}
	command := args[dash+1:]
	var f runFlags
	e.keyFlags(&f.holdFlags)
	e.ttlFlag(&f.holdFlags, defaultTTL.String())
	e.waitFlag(&f.holdFlags, "forever")
	e.flags.StringVar(&f.note, "note", "", "")
	f.grace = durationFlag{name: "grace"}
	e.durationVar(&f.grace, "")
	var locks names
	e.flags.Var(&locks, "lock", "")
	pool := e.flags.String("pool", "", "")
	count := e.flags.Int("count", 1, "")
	e.flags.IntVar(&f.limit, "limit", 0, "")
	e.supersedeFlag(&f.holdFlags)
	e.conflictFlag()
	pos, code, ok := e.parseUpTo(args[:dash], defaultMaxNames)
	if !ok {
		return code
	}
	held := slices.Sorted(slices.Values(append(pos, locks...)))
	switch {
	case *pool != "" && len(held) > 0:
		return e.usageError("--pool takes members of a pool: give no NAME and no --lock with it")
	case *pool == "" && len(held) == 0:
		return e.usageError("NAME is missing: the lock to hold, e.g. locker run prod -- ./deploy.sh (or --lock for several, or --pool)")
	case *count < 1:
		return e.usageError("--count must be at least 1 (got %d)", *count)
	case len(slices.Compact(slices.Clone(held))) < len(held):
		return e.usageError("a lock is named twice: %q", held)
	case f.limit < 0:
		return e.usageError("--limit is the most holds the lock may have at once, at least 1 (got %d)", f.limit)
	case f.limit > 0 && *pool != "":
		return e.usageError("--limit caps a lock's holds; a pool's members are taken whole: give --count instead")
	case f.limit > 0 && f.key == "":
		return e.usageError("--limit lets the runs that share a --key hold the lock together: give one, e.g. --key e2e --limit %d", f.limit)
	}
	if code, ok := e.checkSupersede(f.holdFlags); !ok {
		return code
	}
	r, ttl, deadline, code := e.runRequest(&f, command)
	if code != exitOK {
		return code
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	return e.runHolding(runPlan{names: held, pool: *pool, count: *count, req: r, ttl: ttl, wait: f.wait.d > 0 || f.wait.endless,
		deadline: deadline, grace: f.grace.d, command: command})
}

// runRequest checks run's flags and fills in their defaults.
func (e *env) runRequest(f *runFlags, command []string) (r client.Request, ttl time.Duration, deadline time.Time, code int) {
	ttl = f.ttl.d
	if ttl < minRunTTL {
		return r, 0, deadline, e.usageError("--ttl must be at least %v, e.g. 2m (got %q): run renews it every third", minRunTTL, f.ttl.text)
	}
	// Without a wait, a server that cannot be reached is tried for a
	// while, as by locker lock, and then run gives up (exit 2).
	deadline = waitDeadline(f.wait)
	if !f.grace.set {
		f.grace.d = min(maxGrace, ttl/4)
	}
	if f.grace.d > ttl/4 {
		return r, 0, deadline, e.usageError("--grace must be at most a quarter of the ttl (%v), so that the command is stopped before the lease runs out (got %v)", ttl/4, f.grace.d)
	}
	if f.key == "" {
		f.key = "run-" + client.NewIdempotencyKey()[:16]
	}
	if f.lockBy == "" {
		host, _ := os.Hostname()
		f.lockBy = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if f.note == "" {
		f.note = strings.Join(command, " ")
		if len(f.note) > maxNote {
			f.note = strings.ToValidUTF8(f.note[:maxNote], "") + "…"
		}
	}
	return client.Request{Key: f.key, Requestor: f.lockBy, TTL: f.ttl.text, Note: f.note, Limit: f.limit, Supersede: f.supersede, Priority: f.priority}, ttl, deadline, exitOK
}

// defaultMaxNames is how many locks locker run may name: the server's
// default LOCKER_MAX_LOCKS_PER_REQUEST, which refuses more with its reason.
const defaultMaxNames = 64

// runPlan is what locker run was asked to do.
type runPlan struct {
	names    []string // the locks, or none for a pool
	pool     string   // the pool to claim count members of, or ""
	count    int
	req      client.Request
	ttl      time.Duration
	wait     bool      // queue for the lock
	deadline time.Time // of the wait, and of retries; zero for none (--wait forever)
	grace    time.Duration
	command  []string
}

// runHolding takes the lock, runs the command while keeping the lease
// alive, gives the lock back, and returns the exit code.
func (e *env) runHolding(p runPlan) int {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(signals)

	tokens, granted, code, ok := e.takeLock(p, signals)
	if !ok {
		return code
	}
	held := slices.Sorted(maps.Keys(tokens))
	var got []string
	for _, name := range held {
		got = append(got, fmt.Sprintf("%q (token %d)", name, tokens[name]))
	}
	fmt.Fprintf(e.stderr, "locker run: locked %s with key %q; running %s\n", strings.Join(got, ", "), p.req.Key, strings.Join(p.command, " "))
	cmd := exec.Command(p.command[0], p.command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, e.stdout, e.stderr
	cmd.Env = append(os.Environ(), "LOCKER_LOCKS="+strings.Join(held, " "))
	if len(held) == 1 {
		cmd.Env = append(cmd.Env, "LOCKER_TOKEN="+strconv.FormatUint(tokens[held[0]], 10), "LOCKER_LOCK="+held[0])
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(e.stderr, "locker run: starting %s: %v\n", p.command[0], err)
		e.release(held, p.req)
		return 127 // as a shell says of a command it cannot run
	}
	code, lost := e.supervise(p, held, cmd, granted, signals)
	if lost {
		fmt.Fprintf(e.stderr, "locker run: the command was stopped because the lock on %s was lost (it exited with %d)\n", quoteAll(held), code)
		return exitLockLost
	}
	e.release(held, p.req)
	return code
}

// quoteAll names locks for a message: "a", "b".
func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

// what names what p takes, for messages.
func (p runPlan) what() string {
	if p.pool != "" {
		return fmt.Sprintf("%d of the pool %q", p.count, p.pool)
	}
	return quoteAll(p.names)
}

// take takes what p says: one lock, several, or members of a pool, and
// returns the fencing token of each lock it holds.
func (e *env) take(ctx context.Context, p runPlan) (map[string]uint64, error) {
	var views map[string]client.Lock
	var err error
	prog := e.progress(p.deadline)
	prog.Wait = p.wait
	switch {
	case p.pool != "":
		views, err = e.client.Claim(ctx, p.pool, p.count, p.req, prog)
	case len(p.names) == 1:
		var l client.Reply
		l, err = e.client.Lock(ctx, p.names[0], p.req, prog)
		views = map[string]client.Lock{p.names[0]: l.Lock}
	default:
		views, err = e.client.LockSet(ctx, p.names, p.req, prog)
	}
	if err != nil {
		return nil, err
	}
	tokens := make(map[string]uint64, len(views))
	for name, v := range views {
		tokens[name] = v.Token
	}
	return tokens, nil
}

// takeLock takes the lock, queueing for it as p says; a signal meanwhile
// ends the wait, and the command is not run. ok is false when it is not
// to run, with the exit code.
func (e *env) takeLock(p runPlan, signals <-chan os.Signal) (tokens map[string]uint64, granted time.Time, code int, ok bool) {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	interrupted := make(chan os.Signal, 1)
	waiting, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case sig := <-signals:
			interrupted <- sig
			cancel()
		case <-waiting:
		}
	}()
	tokens, err := e.take(ctx, p)
	granted = time.Now()
	close(waiting)
	<-watched
	select {
	case sig := <-interrupted:
		fmt.Fprintf(e.stderr, "locker run: %v while waiting for %s; the command was not run\n", sig, p.what())
		if err == nil { // granted just as the signal came
			e.release(slices.Sorted(maps.Keys(tokens)), p.req)
		}
		return nil, granted, 128 + int(sig.(syscall.Signal)), false
	default:
	}
	if err != nil {
		return nil, granted, e.fail(err), false
	}
	return tokens, granted, exitOK, true
}

// supervise waits for cmd to exit, passing signals on and renewing the
// lease; if the lease is lost, it stops cmd (SIGTERM, then SIGKILL after
// the grace). It returns cmd's exit code, and whether the lock was lost.
func (e *env) supervise(p runPlan, held []string, cmd *exec.Cmd, granted time.Time, signals <-chan os.Signal) (code int, lost bool) {
	// The lease is counted from the grant, which came just before the
	// answer: a margin keeps the estimate on the safe side.
	lostc := make(chan error, 1)
	keepCtx, stopKeeping := context.WithCancel(context.Background())
	var kept sync.WaitGroup
	kept.Go(func() {
		e.keepAlive(keepCtx, held, p.req, p.ttl, granted.Add(p.ttl-min(p.ttl/10, time.Second)), p.grace, lostc)
	})
	defer func() {
		stopKeeping()
		kept.Wait()
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var killTimer <-chan time.Time
	for {
		select {
		case sig := <-signals:
			_ = cmd.Process.Signal(sig) // it may have exited already
		case err := <-lostc:
			lost = true
			fmt.Fprintf(e.stderr, "locker run: LOST THE LOCK on %s: %v; stopping the command (SIGTERM, then SIGKILL after %v)\n", quoteAll(held), err, p.grace)
			_ = cmd.Process.Signal(syscall.SIGTERM)
			killTimer = time.After(p.grace)
		case <-killTimer:
			fmt.Fprintf(e.stderr, "locker run: the command did not stop within %v of SIGTERM; killing it\n", p.grace)
			_ = cmd.Process.Kill()
		case <-exited:
			return exitCode(cmd.ProcessState), lost
		}
	}
}

// keepAlive renews the lease every third of ttl until ctx is done. A
// renewal that cannot land before the lease would run out, less grace
// for stopping the command, or that the server refuses (the lock was
// force-released, or expired), sends the reason on lost.
func (e *env) keepAlive(ctx context.Context, held []string, r client.Request, ttl time.Duration, expires time.Time, grace time.Duration, lost chan<- error) {
	renew := client.Request{Key: r.Key, Requestor: r.Requestor, TTL: r.TTL}
	t := time.NewTimer(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, expires.Add(-grace))
		var err error
		if len(held) == 1 {
			_, err = e.client.Renew(rctx, held[0], renew, e.progress(expires.Add(-grace)))
		} else {
			_, err = e.client.RenewSet(rctx, held, renew, e.progress(expires.Add(-grace)))
		}
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if errors.Is(err, context.DeadlineExceeded) || errors.As(err, new(*client.TimedOut)) {
				err = fmt.Errorf("the lease could not be renewed before it ran out (last: %w)", err)
			}
			lost <- err
			return
		}
		expires = sent.Add(ttl) // the server counts from when it got the renewal, after sent
		t.Reset(ttl / 3)
	}
}

// release gives back run's count of the locks it holds, in one change;
// if it cannot, the lease frees them, and it says so.
func (e *env) release(held []string, r client.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), releasePatience)
	defer cancel()
	unlock := client.Request{Key: r.Key, Requestor: r.Requestor}
	var err error
	if len(held) == 1 {
		_, err = e.client.Unlock(ctx, held[0], unlock, e.progress(time.Now().Add(releasePatience)))
	} else {
		_, _, err = e.client.UnlockSet(ctx, held, unlock, e.progress(time.Now().Add(releasePatience)))
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "locker run: could not give back %s (%v); its lease of %s frees it\n", quoteAll(held), err, r.TTL)
		return
	}
	fmt.Fprintf(e.stderr, "locker run: released %s\n", quoteAll(held))
}

// names is a flag given once per name.
type names []string

func (n *names) String() string     { return strings.Join(*n, ",") }
func (n *names) Set(v string) error { *n = append(*n, v); return nil }

// exitCode is a finished command's exit code, 128+N when signal N killed
// it, as shells report it.
func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
