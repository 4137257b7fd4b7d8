package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

const historyUsage = `Usage: locker history NAME [--limit N] [--before ID] [--json]

Shows who took and gave back the lock called NAME, newest first: each
taking with its key, token, wait and note; each release with how long it
was held; leases that ran out; and who forced it free. --limit says how
many events (default 20); when there are older ones, the last line says
how to see them (--before ID). --json prints the events as the server
sends them, one a line.

Example:
  locker history prod
` + connectionHelp

func cmdHistory(e *env, args []string) int {
	limit := e.flags.Int("limit", 20, "")
	before := e.flags.Uint64("before", 0, "")
	asJSON := e.flags.Bool("json", false, "")
	pos, code, ok := e.parse(args, "NAME")
	if !ok {
		return code
	}
	if *limit < 1 || *limit > 1000 {
		return e.usageError("--limit %d: give a number of events from 1 to 1000", *limit)
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	h, err := e.client.History(e.ctx, pos[0], *before, *limit)
	if err != nil {
		return e.fail(err)
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		for _, ev := range h.Events {
			if err := enc.Encode(ev); err != nil {
				return e.fail(err)
			}
		}
		return exitOK
	}
	if len(h.Events) == 0 && *before == 0 {
		fmt.Fprintf(e.stdout, "%s has no history: it was never taken, or not within the time the server keeps it (LOCKER_HISTORY_AGE)\n", oneLine(pos[0]))
		return exitOK
	}
	now := time.Now()
	for _, ev := range h.Events {
		writeEvent(e.stdout, ev, now)
	}
	if h.Before > 0 {
		fmt.Fprintf(e.stdout, "older events: locker history %s --before %d\n", shellWord(pos[0]), h.Before)
	}
	return exitOK
}

// writeEvent describes one event of a lock's history for a person, on
// one line.
func writeEvent(w io.Writer, ev lock.Event, now time.Time) {
	fmt.Fprintf(w, "%s  %-8s  %s  key %q", ev.At.Local().Format("2006-01-02 15:04:05"), ev.Kind, oneLine(ev.Holder), ev.Key)
	if ev.Token != 0 {
		fmt.Fprintf(w, "  token %d", ev.Token)
	}
	if ev.Counts > 1 {
		fmt.Fprintf(w, "  ×%d", ev.Counts)
	}
	if ev.Waited > 0 {
		fmt.Fprintf(w, "  waited %s", round(time.Duration(ev.Waited)))
	}
	if held := time.Duration(ev.Held); held >= time.Second {
		fmt.Fprintf(w, "  held %s", round(held))
	} else if held > 0 {
		fmt.Fprint(w, "  held <1s")
	}
	if ev.By != "" {
		fmt.Fprintf(w, "  by %s", oneLine(ev.By))
	}
	if ev.Note != "" {
		fmt.Fprintf(w, "  note: %s", oneLine(ev.Note))
	}
	fmt.Fprintf(w, "  (%s)\n", ago(now, ev.At))
}

// shellWord returns s as one word for a POSIX shell: bare when it is made
// of letters, digits and -_./:@ only, else in single quotes.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
