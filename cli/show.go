package cli

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/locker-ci/locker/client"
)

// The commands that read the locks: ls and show, and how they say
// times and text for a person.

const lsUsage = `Usage: locker ls [--prefix TEXT] [--json]

Lists the locks that are held or waited for, by name: holders (with their
counts), how long ago it was taken, the soonest lease to run out, how many
wait, and the notes. --prefix lists only the locks whose names start with
TEXT. --json prints the server's answer as it is. A long listing is read
and printed a page at a time.

Examples:
  locker ls
  locker ls --prefix prod-
` + connectionHelp

// lsPage is how many locks locker ls reads and prints at a time.
const lsPage = 1000

// cmdLs handles locker ls.
func cmdLs(e *env, args []string) int {
	asJSON := e.flags.Bool("json", false, "")
	prefix := e.flags.String("prefix", "", "")
	if _, code, ok := e.parse(args); !ok {
		return code
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	if *asJSON {
		if err := e.client.ListTo(e.ctx, *prefix, e.stdout); err != nil {
			return e.fail(err)
		}
		return exitOK
	}
	now := time.Now()
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	for after := ""; ; {
		locks, next, err := e.client.Page(e.ctx, *prefix, after, lsPage)
		if err != nil {
			_ = w.Flush()
			return e.fail(err)
		}
		if after == "" {
			fmt.Fprintln(w, "NAME\tHOLDERS\tSINCE\tLEASE\tQUEUE\tNOTE")
		}
		for _, l := range locks {
			lsRow(w, now, l)
		}
		_ = w.Flush() // columns line up within a page
		if next == "" {
			return exitOK
		}
		after = next
	}
}

// lsRow writes one lock's line of locker ls.
func lsRow(w io.Writer, now time.Time, l client.Lock) {
	var holders, notes []string
	var lease time.Time
	for _, h := range slices.Sorted(maps.Keys(l.Holders)) {
		hold := l.Holders[h]
		holders = append(holders, fmt.Sprintf("%s×%d", h, hold.Count))
		if hold.Note != "" {
			notes = append(notes, hold.Note)
		}
		if !hold.ExpiresAt.IsZero() && (lease.IsZero() || hold.ExpiresAt.Before(lease)) {
			lease = hold.ExpiresAt
		}
	}
	held := cmp.Or(oneLine(strings.Join(holders, ",")), "-")
	if l.Limit > 0 {
		held += fmt.Sprintf(" (%d/%d)", holds(l), l.Limit)
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", oneLine(l.Name), held,
		ago(now, l.AcquiredAt), until(now, lease), len(l.Waiting), oneLine(strings.Join(notes, " ")))
}

// holds returns how many holds l has: its holders' counts, which its
// limit caps.
func holds(l client.Lock) int {
	n := 0
	for _, h := range l.Holders {
		n += h.Count
	}
	return n
}

const showUsage = `Usage: locker show NAME [--json]

Shows the lock called NAME: its key and fencing token, each holder with
its count, lease and note, and the queue in order. Exit code 0 whether it
is held or free.

Example:
  locker show prod
` + connectionHelp

// cmdShow handles locker show.
func cmdShow(e *env, args []string) int {
	asJSON := e.flags.Bool("json", false, "")
	pos, code, ok := e.parse(args, "NAME")
	if !ok {
		return code
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	l, err := e.client.Get(e.ctx, pos[0])
	if err != nil {
		return e.fail(err)
	}
	if *asJSON {
		_, _ = e.stdout.Write(l.Raw)
		return exitOK
	}
	writeLock(e.stdout, pos[0], l.Lock, time.Now())
	return exitOK
}

// writeLock describes a lock for a person.
func writeLock(w io.Writer, name string, l client.Lock, now time.Time) {
	if len(l.Holders) == 0 {
		fmt.Fprintf(w, "%s is free\n", oneLine(name))
	} else {
		fmt.Fprintf(w, "%s is held with key %q, token %d, taken %s", oneLine(name), l.Key, l.Token, ago(now, l.AcquiredAt))
		if l.Limit > 0 {
			fmt.Fprintf(w, ", %d of its limit of %d holds", holds(l), l.Limit)
		}
		fmt.Fprintln(w)
	}
	for _, h := range slices.Sorted(maps.Keys(l.Holders)) {
		hold := l.Holders[h]
		fmt.Fprintf(w, "  holder %s ×%d, since %s, lease %s", oneLine(h), hold.Count, ago(now, hold.Since), until(now, hold.ExpiresAt))
		if hold.Note != "" {
			fmt.Fprintf(w, ", note: %s", oneLine(hold.Note))
		}
		if b := hold.Build; b != nil {
			fmt.Fprintf(w, ", build %d", b.ID)
			if len(b.EndWith) > 0 {
				fmt.Fprintf(w, " (ends if the build is %s)", strings.Join(b.EndWith, " or "))
			}
			if b.URL != "" && b.URL != hold.Note {
				fmt.Fprintf(w, ": %s", oneLine(b.URL))
			}
		}
		fmt.Fprintln(w)
	}
	for i, q := range l.Waiting {
		fmt.Fprintf(w, "  waiting %d: %s with key %q, for %s\n", i+1, oneLine(q.Requestor), q.Key, round(now.Sub(q.Since)))
	}
}

// ago says how long ago t was, e.g. "12m ago"; "-" for an unknown time.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return round(now.Sub(t)) + " ago"
}

// until says how long until t, e.g. "in 4m10s"; "none" for no lease.
func until(now, t time.Time) string {
	if t.IsZero() {
		return "none"
	}
	return "in " + round(t.Sub(now))
}

// round says d to the second, and to the minute above an hour.
func round(d time.Duration) string {
	d = max(d, 0)
	if d >= time.Hour {
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Second).String()
}

// oneLine keeps a table one line a lock, whatever a name or note holds:
// a string with a control character or a quote is shown quoted.
func oneLine(s string) string {
	if q := strconv.Quote(s); q[1:len(q)-1] != s {
		return q
	}
	return s
}
