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

A pool is a set of interchangeable locks, its members: locker run --pool
POOL takes free ones, the ones claimed least recently first. set makes the
pool, or replaces its members (a member left out stays held until given
back); ls lists the pools; show shows each member, free or held (by whom,
since when), and the claims waiting; rm removes the pool, and leaves its
members as they are.

Examples:
  locker pool set staging staging-1 staging-2 staging-3
  locker run --pool staging -- sh -c './e2e.sh "$LOCKER_LOCK"'
  locker pool show staging
` + connectionHelp

// cmdPool handles locker pool.
func cmdPool(e *env, args []string) int {
	asJSON := e.flags.Bool("json", false, "")
	pos, code, ok := e.parseUpTo(args, 1<<20)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return e.usageError("set, ls, show or rm is missing, e.g. locker pool ls")
	}
	sub, rest := pos[0], pos[1:]
	want := map[string]int{"set": -1, "ls": 0, "show": 1, "rm": 1}
	n, known := want[sub]
	switch {
	case !known:
		return e.usageError("%q is not one of set, ls, show and rm%s", sub, didYouMean(sub, slices.Collect(maps.Keys(want))))
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
