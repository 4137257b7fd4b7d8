package cli

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

const poolUsage = `Usage: locker pool set POOL MEMBER...
       locker pool ls
       locker pool show POOL [--json]
       locker pool rm POOL
       locker pool claim POOL --key K [--count N] [--wait D] [--ttl D] [--note TEXT] [--lock-by R] [--conflict-exit-code N]

A pool is a set of interchangeable locks, its members: locker run --pool
POOL takes free ones, the ones claimed least recently first. set makes the
pool, or replaces its members (a member left out stays held until given
back); ls lists the pools; show shows each member, free or held (by whom,
since when), and the claims waiting; rm removes the pool, and leaves its
members as they are.

claim takes free members for a script whose steps span several commands
(locker pool claim -h).

Examples:
  locker pool set staging staging-1 staging-2 staging-3
  locker run --pool staging -- sh -c './e2e.sh "$LOCKER_LOCK"'
  locker pool show staging
` + connectionHelp

const poolClaimUsage = `Usage: locker pool claim POOL --key K [--count N] [--wait D] [--ttl D] [--note TEXT] [--lock-by R] [--priority P] [--supersede] [--conflict-exit-code N]

Takes --count free members of the pool POOL (default 1), the ones claimed
least recently first, with key K, and prints each one's name and fencing
token, a line each: for a script whose steps span several commands (for
one command, locker run --pool). Give them back with locker unlock
MEMBER... --key K.

  --key K       the key (required)
  --count N     how many members (default 1), all at once or none
  --wait D      queue for them for up to D, e.g. 30m, or forever
                (default: do not wait)
  --ttl D       a lease: each member is freed D after it is taken unless
                renewed (locker renew MEMBER...); default: the server's
  --note TEXT   shown to others, e.g. the build's URL
  --lock-by R   who holds them (default: the key)
  --priority P  served before the waiting claims of lower priority
  --supersede   take the place of the earlier waiting claims of the same
                --lock-by on the pool: they are refused; needs --wait
  --conflict-exit-code N
                the exit code when too few members are free or the wait
                runs out (default 75)

Examples:
  member=$(locker pool claim staging --key "$BUILD_ID" --wait 30m --ttl 2h | cut -d' ' -f1)
  locker unlock "$member" --key "$BUILD_ID"
` + connectionHelp

// cmdPool handles locker pool.
func cmdPool(e *env, args []string) int {
	if len(args) > 0 && args[0] == "claim" {
		return cmdPoolClaim(e, args[1:])
	}
	asJSON := e.flags.Bool("json", false, "")
	pos, code, ok := e.parseUpTo(args, 1<<20)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return e.usageError("set, ls, show, rm or claim is missing, e.g. locker pool ls")
	}
	sub, rest := pos[0], pos[1:]
	want := map[string]int{"set": -1, "ls": 0, "show": 1, "rm": 1}
	n, known := want[sub]
	switch {
	case sub == "claim":
		return e.usageError("locker pool claim's flags go after the word claim, e.g. locker pool claim staging --key k")
	case !known:
		return e.usageError("%q is not one of set, ls, show, rm and claim%s", sub, didYouMean(sub, append(slices.Collect(maps.Keys(want)), "claim")))
	case sub == "set" && len(rest) < 2:
		return e.usageError("locker pool set needs the pool's name and at least one member, e.g. locker pool set staging staging-1 staging-2")
	case n >= 0 && len(rest) != n:
		return e.usageError("locker pool %s takes %d argument(s), not %d", sub, n, len(rest))
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	switch sub {
	case "set":
		msg, err := e.client.SetPool(e.ctx, rest[0], rest[1:])
		if err != nil {
			return e.fail(err)
		}
		fmt.Fprintln(e.stdout, msg)
	case "ls":
		pools, err := e.client.Pools(e.ctx)
		if err != nil {
			return e.fail(err)
		}
		w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "POOL\tMEMBERS")
		for _, name := range slices.Sorted(maps.Keys(pools)) {
			fmt.Fprintf(w, "%s\t%s\n", oneLine(name), oneLine(strings.Join(pools[name], " ")))
		}
		_ = w.Flush()
	case "show":
		p, err := e.client.Pool(e.ctx, rest[0])
		if err != nil {
			return e.fail(err)
		}
		if *asJSON {
			_, _ = e.stdout.Write(p.Raw)
			return exitOK
		}
		now := time.Now()
		w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "MEMBER\tHOLDERS\tSINCE\tKEY")
		for _, m := range slices.Sorted(maps.Keys(p.Members)) {
			l := p.Members[m]
			var holders []string
			for _, h := range slices.Sorted(maps.Keys(l.Holders)) {
				holders = append(holders, fmt.Sprintf("%s×%d", h, l.Holders[h].Count))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", oneLine(m), cmp.Or(oneLine(strings.Join(holders, ",")), "free"), ago(now, l.AcquiredAt), cmp.Or(oneLine(l.Key), "-"))
		}
		_ = w.Flush()
		for i, q := range p.Waiting {
			fmt.Fprintf(e.stdout, "waiting %d: %s (key %q) for %d, since %s\n", i+1, oneLine(q.Requestor), q.Key, q.Count, ago(now, q.Since))
		}
	case "rm":
		if err := e.client.DeletePool(e.ctx, rest[0]); err != nil {
			return e.fail(err)
		}
		fmt.Fprintf(e.stdout, "pool %s removed; its members stay as they are\n", rest[0])
	}
	return exitOK
}

// cmdPoolClaim handles locker pool claim.
func cmdPoolClaim(e *env, args []string) int {
	e.name, e.usage = "pool claim", poolClaimUsage
	var h holdFlags
	e.keyFlags(&h)
	e.waitFlag(&h, "0")
	e.ttlFlag(&h, "")
	e.flags.StringVar(&h.note, "note", "", "")
	count := e.flags.Int("count", 1, "")
	e.supersedeFlag(&h)
	e.conflictFlag()
	pos, code, ok := e.parse(args, "POOL")
	if !ok {
		return code
	}
	if *count < 1 {
		return e.usageError("--count is how many members to claim, at least 1 (got %d)", *count)
	}
	r, code, ok := e.request(h)
	if !ok {
		return code
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	o := e.progress(waitDeadline(h.wait))
	o.Wait = h.wait.d > 0 || h.wait.endless
	locks, err := e.client.Claim(e.ctx, pos[0], *count, r, o)
	if err != nil {
		return e.fail(err)
	}
	writeTokens(e.stdout, locks)
	return exitOK
}
