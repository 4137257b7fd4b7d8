package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/client"
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
		for _, ev := range h.Events {
			if err := writeJSONLine(e.stdout, ev.Raw); err != nil {
				return e.fail(err)
			}
		}
		return exitOK
	}
	if len(h.Events) == 0 && *before == 0 {
		fmt.Fprintf(e.stdout, "%s has no history: it was never taken, or not within the time the server keeps it (LOCKER_HISTORY_AGE)\n", oneLine(pos[0]))
		return exitOK
	}
	for _, ev := range h.Events {
		writeEvent(e.stdout, ev, true, false)
	}
	if h.Before > 0 {
		fmt.Fprintf(e.stdout, "older events: locker history %s --before %d\n", shellWord(pos[0]), h.Before)
	}
	return exitOK
}

// writeEvent describes one event of a lock's history for a person, on
// one line, naming its lock if withLock is set, and saying how long ago
// it was if withAge is.
func writeEvent(w io.Writer, ev client.Event, withAge, withLock bool) {
	fmt.Fprintf(w, "%s  %-8s  ", ev.At.Local().Format("2006-01-02 15:04:05"), ev.Kind)
	if withLock {
		fmt.Fprintf(w, "%s  ", oneLine(ev.Lock))
	}
	fmt.Fprintf(w, "%s  key %q", oneLine(ev.Holder), ev.Key)
	if ev.Token != 0 {
		fmt.Fprintf(w, "  token %d", ev.Token)
	}
	if ev.Counts > 1 {
		fmt.Fprintf(w, "  ×%d", ev.Counts)
	}
	if ev.Waited > 0 {
		fmt.Fprintf(w, "  waited %s", round(ev.Waited))
	}
	if held := ev.Held; held >= time.Second {
		fmt.Fprintf(w, "  held %s", round(held))
	} else if held > 0 {
		fmt.Fprint(w, "  held <1s")
	}
	if ev.By != "" {
		fmt.Fprintf(w, "  by %s", oneLine(ev.By))
	}
	if ev.Reason != "" {
		fmt.Fprintf(w, "  because: %s", oneLine(ev.Reason))
	}
	if ev.Note != "" {
		fmt.Fprintf(w, "  note: %s", oneLine(ev.Note))
	}
	if withAge {
		fmt.Fprintf(w, "  (%s)", ago(time.Now(), ev.At))
	}
	fmt.Fprintln(w)
}

// writeJSONLine writes the JSON raw, as the server sent it, on one line.
func writeJSONLine(w io.Writer, raw []byte) error {
	var line bytes.Buffer
	if err := json.Compact(&line, raw); err != nil {
		return err
	}
	line.WriteByte('\n')
	_, err := w.Write(line.Bytes())
	return err
}

// shellWord returns s as one word for a POSIX shell: bare when it is made
// of letters, digits and -_./:@ only, else in single quotes.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

const watchUsage = `Usage: locker watch [NAME] [--pool POOL] [--last N] [--count N] [--json]

Shows the changes to locks as they happen, one a line: every lock's, or
only NAME's, or only the members' of POOL (each line then names its
lock). --last N first shows the last N events (of NAME, of POOL's
members, or of every lock), then follows on from them, as tail -f does. When the
connection breaks (the server restarts, or a node dies), it connects
again and goes on from the last event it showed, missing none the server
still keeps. It runs until interrupted (Ctrl-C), or until it has shown
--count events (the --last ones count). --json prints the events as the
server sends them, one a line.

Examples:
  locker watch
  locker watch prod --last 5
  locker watch prod --count 1     # wait for the next change to prod
` + connectionHelp

func cmdWatch(e *env, args []string) int {
	pool := e.flags.String("pool", "", "")
	last := e.flags.Int("last", 0, "")
	count := e.flags.Int("count", 0, "")
	asJSON := e.flags.Bool("json", false, "")
	pos, code, ok := e.parseUpTo(args, 1)
	if !ok {
		return code
	}
	if *count < 0 {
		return e.usageError("--count N stops after N events; give a number above 0")
	}
	filter := client.Filter{Pool: *pool}
	switch {
	case len(pos) == 1 && *pool != "":
		return e.usageError("give a lock NAME or --pool, not both")
	case len(pos) == 1:
		filter.Lock = pos[0]
	}
	if *last < 0 || *last > 1000 {
		return e.usageError("--last N shows the last N (up to 1000) events; give a number from 1 to 1000")
	}
	if code := e.connect(); code != exitOK {
		return code
	}
	write := func(ev client.Event) { writeEvent(e.stdout, ev, false, filter.Lock == "") }
	if *asJSON {
		write = func(ev client.Event) { _ = writeJSONLine(e.stdout, ev.Raw) }
	}
	ctx, done := context.WithCancel(e.ctx)
	defer done()
	shown := 0
	show := func(ev client.Event) {
		if *count > 0 && shown == *count {
			return
		}
		write(ev)
		if shown++; shown == *count {
			done()
		}
	}
	var from uint64
	if *last > 0 {
		events, err := lastEvents(ctx, e.client, filter, *last)
		if err != nil {
			return e.fail(err)
		}
		for _, ev := range slices.Backward(events) {
			show(ev)
		}
		if len(events) > 0 {
			from = events[0].ID
		}
	}
	notice := func(n client.Notice) { fmt.Fprintf(e.stderr, "locker watch: %s\n", n.Message) }
	for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
		var err error
		before := from
		from, err = e.client.Follow(ctx, filter, from, show, notice)
		if ctx.Err() != nil {
			return exitOK
		}
		if client.IsStatus(err, http.StatusBadRequest) || client.IsStatus(err, http.StatusNotFound) || client.IsStatus(err, http.StatusUnauthorized) {
			return e.fail(err)
		}
		if from != before {
			backoff = time.Second // it got somewhere: start again from a short wait
		}
		fmt.Fprintf(e.stderr, "locker watch: %v; connecting again in %v\n", cmp.Or[error](err, errStreamEnded), backoff)
		select {
		case <-ctx.Done():
			return exitOK
		case <-time.After(backoff):
		}
	}
}

// lastEvents returns the last n events that filter follows, newest
// first: a lock's, every lock's, or the newest n of a pool's members'.
func lastEvents(ctx context.Context, c *client.Client, filter client.Filter, n int) ([]client.Event, error) {
	if filter.Pool == "" {
		h, err := c.History(ctx, filter.Lock, 0, n)
		return h.Events, err
	}
	p, err := c.Pool(ctx, filter.Pool)
	if err != nil {
		return nil, err
	}
	var events []client.Event
	for name := range p.Members {
		h, err := c.History(ctx, name, 0, n)
		if err != nil {
			return nil, err
		}
		events = append(events, h.Events...)
	}
	slices.SortFunc(events, func(a, b client.Event) int { return cmp.Compare(b.ID, a.ID) })
	return events[:min(n, len(events))], nil
}

// errStreamEnded: the server ended the stream without an error.
var errStreamEnded = errors.New("the stream ended")
