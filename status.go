package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/humane"
	"github.com/locker-ci/locker/internal/jsonbody"
	"github.com/locker-ci/locker/internal/lock"
)

// The status page, GET /: every lock, who holds it and who waits, for a
// person on a wall screen or a phone. It is rendered here with
// html/template, which escapes every name, key and note, and refreshes
// itself: by a few lines of JavaScript that fetch the page again, or, with
// JavaScript off, by a meta refresh.

var (
	//go:embed web/status.html
	statusHTML string
	//go:embed web/status.css
	statusCSS string
	//go:embed web/status.js
	statusJS string

	statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
		"plural": func(n int, one, many string) string {
			if n == 1 {
				return one
			}
			return many
		},
		"mark": humane.Mark,
		// args passes a text and the filter to the "marked" template.
		"args": func(text, filter string) markArgs { return markArgs{text, filter} },
	}).Parse(statusHTML))

	// statusPolicy lets the page run its own script and style and nothing
	// else: were a name ever to slip past the escaping, no script in it
	// would run. The hashes are of the embedded files, as the page holds them.
	statusPolicy = fmt.Sprintf("default-src 'none'; script-src '%s'; style-src '%s'; connect-src 'self'; "+
		"form-action 'self'; base-uri 'none'; frame-ancestors 'none'", cspHash(statusJS), cspHash(statusCSS))
)

// Tuned for the status page.
const (
	// statusRefresh is how often, in seconds, the page reloads its list: a
	// wall screen is no more than this behind, and a hundred open pages
	// cost the server twenty renders a second.
	statusRefresh = 5
	// statusMaxLocks caps the locks one page shows, so that a table of
	// 100,000 locks does not make a page of 100 MB every few seconds.
	statusMaxLocks = 500
	// statusMaxPools caps the pools one page shows (each is read apart).
	statusMaxPools = 50
	// statusHeldOver is how long a lock may be held before it stands out,
	// unless ?held_over= says otherwise; the sample alert in docs/operating.md fires then too.
	statusHeldOver = 6 * time.Hour
	// statusHeldOverText is statusHeldOver as the page says it.
	statusHeldOverText = "6h"
	// statusLeaseSoon: a lease that ends sooner stands out, for a holder
	// that may be about to lose its lock.
	statusLeaseSoon = 10 * time.Minute
	// statusEvents is how many of each lock's latest events the page
	// shows; GET /history has the rest.
	statusEvents = 3
)

// The urgencies by which the page orders the locks, most urgent first;
// locks of one urgency come by name.
const (
	urgencyHeldOver  = iota // held longer than the page's HeldOver
	urgencyQueue            // requests wait for it
	urgencyLeaseSoon        // a lease on it ends within statusLeaseSoon
	urgencyNone
	urgencies
)

// cspHash returns the Content-Security-Policy source for an inline script
// or style whose text is s.
func cspHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// statusPage is what the status template shows.
type statusPage struct {
	Title       string
	SignedInAs  string  // the credential the page was asked for with; "" on an open server
	who         *caller // who asked: the page shows what it may read
	Now         time.Time
	Filter      string        // ?q=: show only locks whose name, key, holders or queue contain it
	HeldOver    string        // locks held longer than this stand out, e.g. "6h"
	HeldOverSet bool          // ?held_over= was given, so the filter form keeps it
	heldOver    time.Duration // HeldOver, parsed
	Held        int           // locks held, in the whole table
	Waiting     int           // requests waiting, in the whole table
	oldestWait  time.Time     // since when the longest waiter has waited
	LongestWait string        // how long that is, for a person
	Matching    int           // locks that match Filter
	Hidden      int           // matching locks not shown (over statusMaxLocks)
	ByName      bool          // ?sort=name: the locks by name, not by urgency
	OtherOrder  string        // the page's URL in the other order
	Locks       []statusLock
	byUrgency   [urgencies][]statusLock // the locks shown, until they are put in Locks
	Pools       []statusPool
	HiddenPools int // pools not shown (over statusMaxPools)
	Refresh     int
	Version     string
	Style       template.CSS
	Script      template.JS
}

// statusLock is one lock as the status page shows it.
type statusLock struct {
	Name, Key  string
	Token      uint64
	Limit      int    // the most holds at once; 0 for none
	Holds      int    // its holders' counts
	AcquiredAt string // RFC 3339, or "" when the state file did not say
	HeldFor    string // how long ago AcquiredAt was, e.g. "12 min"
	Long       bool   // held longer than the page's HeldOver
	LeaseSoon  string // how soon the first lease ends, when within statusLeaseSoon
	Holders    []statusHolder
	Queue      []statusWaiter
	Events     []statusEvent // the latest, newest first
}

// statusEvent is one event of a lock's history, for a person.
type statusEvent struct {
	Kind string // the event's kind, for its style
	At   string // RFC 3339
	Ago  string // how long ago, e.g. "12 min"
	Text string // what happened, e.g. "released by deploy-42 after 2 h"
}

// statusHolder is one holder of a lock.
type statusHolder struct {
	Name    string
	Count   int
	Since   string // how long ago it took its first count, e.g. "3 min"
	Lease   string // how long until its lease ends; "" for no lease
	Note    string
	NoteURL string // Note, when it is an http(s) URL to link to
}

// statusPool is a pool as the status page shows it: each member free or
// held, at a glance.
type statusPool struct {
	Name    string
	Members []statusMember
	Free    int
	Waiting int // claims waiting
}

// statusMember is a member of a pool.
type statusMember struct {
	Name   string
	Holder string // who holds it, e.g. "e2e-77"; "" when free
	Since  string // how long ago it was taken
}

// statusWaiter is one request in a lock's queue.
type statusWaiter struct {
	Requestor, Key, Waited string
	Priority               int
}

// handleStatus handles GET / : the status page.
func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) {
	query, err := checkQuery(r, "/")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	page := statusPage{SignedInAs: callerOf(r).name, who: callerOf(r), HeldOver: statusHeldOverText, heldOver: statusHeldOver, Filter: strings.TrimSpace(query.Get("q")),
		Refresh: statusRefresh, Version: version, Style: template.CSS(statusCSS), Script: template.JS(statusJS)}
	if v, ok := query["held_over"]; ok {
		if page.heldOver, err = jsonbody.ParseDuration("held_over", v[0], false); err != nil {
			s.writeError(w, r, err)
			return
		}
		page.HeldOver, page.HeldOverSet = v[0], true
	}
	switch v := query.Get("sort"); v {
	case "name":
		page.ByName = true
	case "", "urgency":
	default:
		s.writeError(w, r, fmt.Errorf("%w: sort is urgency (the default) or name, not %q", errBadRequest, v))
		return
	}
	page.OtherOrder = otherOrder(query, page.ByName)
	page.Now = s.locks.Now().UTC()
	if err := s.locks.Each(r.Context(), "", "", page.add); err != nil {
		s.writeError(w, r, err)
		return
	}
	for _, locks := range page.byUrgency {
		page.Locks = append(page.Locks, locks...)
	}
	if err := page.addEvents(r.Context(), s.locks); err != nil {
		s.writeError(w, r, err)
		return
	}
	page.Title = fmt.Sprintf("Locker: %d held, %d waiting", page.Held, page.Waiting)
	if err := page.addPools(s.locks); err != nil {
		s.writeError(w, r, err)
		return
	}

	var buf bytes.Buffer
	if err := statusTemplate.Execute(&buf, page); err != nil {
		s.writeError(w, r, fmt.Errorf("rendering the status page: %w", err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", statusPolicy)
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer") // the filter is in the URL
	h.Set("X-Content-Type-Options", "nosniff")
	_, _ = buf.WriteTo(w) // a client that went away cannot be told
}

// add counts l, which the table's locks come to in name order, and shows
// it if it matches p.Filter and the page has room: room for the
// statusMaxLocks most urgent (or, by name, the first).
func (p *statusPage) add(l engine.Listed) error {
	if p.who.role(l.Name) < access.Read {
		return nil
	}
	l.Snapshot = p.who.view(l.Name, l.Snapshot)
	if !l.Free() {
		p.Held++
	}
	p.Waiting += len(l.Waiting)
	for _, w := range l.Waiting {
		if p.oldestWait.IsZero() || w.Since.Before(p.oldestWait) {
			p.oldestWait = w.Since
			p.LongestWait = humane.Duration(p.Now.Sub(w.Since))
		}
	}
	if !matches(l.Name, l.Snapshot, p.Filter) {
		return nil
	}
	p.Matching++
	u := p.urgency(l.Snapshot)
	if p.ByName {
		u = 0 // one list
	}
	worst := urgencies - 1
	for worst > 0 && len(p.byUrgency[worst]) == 0 {
		worst--
	}
	if p.Matching-p.Hidden > statusMaxLocks {
		p.Hidden++
		if u >= worst {
			return nil // after every lock shown
		}
		p.byUrgency[worst] = p.byUrgency[worst][:len(p.byUrgency[worst])-1] // the last by name of the least urgent
	}
	p.byUrgency[u] = append(p.byUrgency[u], p.lock(l.Name, l.Snapshot))
	return nil
}

// urgency says how soon a person should look at l.
func (p *statusPage) urgency(l engine.Snapshot) int {
	first := l.FirstLease()
	switch {
	case !l.Free() && !l.AcquiredAt.IsZero() && p.Now.Sub(l.AcquiredAt) > p.heldOver:
		return urgencyHeldOver
	case len(l.Waiting) > 0:
		return urgencyQueue
	case !first.IsZero() && first.Sub(p.Now) < statusLeaseSoon:
		return urgencyLeaseSoon
	}
	return urgencyNone
}

// otherOrder returns the page's URL, its query as given, in the order it
// is not in.
func otherOrder(query url.Values, byName bool) string {
	q := url.Values{}
	maps.Copy(q, query)
	if byName {
		delete(q, "sort")
	} else {
		q.Set("sort", "name")
	}
	if len(q) == 0 {
		return "/"
	}
	return "/?" + q.Encode()
}

// markArgs are what the "marked" template shows: a text, with what in it
// matches the filter marked.
type markArgs struct{ Text, Filter string }

// addPools adds the pools, by name, up to statusMaxPools.
func (p *statusPage) addPools(e *engine.Engine) error {
	pools, err := e.Pools()
	if err != nil {
		return err
	}
	names := slices.DeleteFunc(slices.Sorted(maps.Keys(pools)), func(name string) bool { return p.who.role(name) < access.Read })
	if len(names) > statusMaxPools {
		p.HiddenPools, names = len(names)-statusMaxPools, names[:statusMaxPools]
	}
	for _, name := range names {
		v, err := e.Pool(name)
		if errors.Is(err, engine.ErrNoPool) {
			continue // removed since
		}
		if err != nil {
			return err
		}
		sp := statusPool{Name: name, Waiting: len(v.Waiting)}
		for _, m := range v.Members {
			l := v.Locks[m]
			sm := statusMember{Name: m, Holder: l.HoldersString()}
			if l.Free() {
				sm.Holder = ""
				sp.Free++
			} else if !l.AcquiredAt.IsZero() {
				sm.Since = humane.Duration(p.Now.Sub(l.AcquiredAt))
			}
			sp.Members = append(sp.Members, sm)
		}
		p.Pools = append(p.Pools, sp)
	}
	return nil
}

// lock returns l, called name, as the page shows it.
func (p *statusPage) lock(name string, l engine.Snapshot) statusLock {
	sl := statusLock{Name: name, Key: l.Key, Token: l.Token, Limit: l.Limit, Holds: l.Holds()}
	if !l.AcquiredAt.IsZero() {
		sl.AcquiredAt = l.AcquiredAt.UTC().Format(time.RFC3339)
		sl.HeldFor = humane.Duration(p.Now.Sub(l.AcquiredAt))
		sl.Long = !l.Free() && p.Now.Sub(l.AcquiredAt) > p.heldOver
	}
	for _, h := range l.Holders {
		sh := statusHolder{Name: h.Name, Count: h.Count, Note: h.Note, NoteURL: humane.Link(h.Note)}
		if !h.Since.IsZero() {
			sh.Since = humane.Duration(p.Now.Sub(h.Since))
		}
		if !h.ExpiresAt.IsZero() {
			sh.Lease = humane.Duration(h.ExpiresAt.Sub(p.Now))
		}
		sl.Holders = append(sl.Holders, sh)
	}
	if first := l.FirstLease(); !first.IsZero() && first.Sub(p.Now) < statusLeaseSoon {
		sl.LeaseSoon = humane.Duration(first.Sub(p.Now))
	}
	for _, q := range l.Waiting {
		sl.Queue = append(sl.Queue, statusWaiter{Requestor: q.Requestor, Key: q.Key, Waited: humane.Duration(p.Now.Sub(q.Since)), Priority: q.Priority})
	}
	return sl
}

// addEvents adds the latest events of each lock shown.
func (p *statusPage) addEvents(ctx context.Context, e *engine.Engine) error {
	names := make([]string, len(p.Locks))
	for i, l := range p.Locks {
		names[i] = l.Name
	}
	recent, err := e.Recent(ctx, names, statusEvents)
	if err != nil {
		return err
	}
	for i := range p.Locks {
		for _, ev := range recent[p.Locks[i].Name] {
			p.Locks[i].Events = append(p.Locks[i].Events, statusEvent{Kind: string(ev.Kind), At: ev.At.UTC().Format(time.RFC3339),
				Ago: humane.Duration(p.Now.Sub(ev.At)), Text: humane.Event(ev)})
		}
	}
	return nil
}

// matches reports whether filter, case aside, is part of the lock's name,
// key, a holder's name or note, or a waiter's name or key. An empty
// filter matches every lock.
func matches(name string, l engine.Snapshot, filter string) bool {
	if filter == "" {
		return true
	}
	filter = strings.ToLower(filter)
	has := func(s string) bool { return strings.Contains(strings.ToLower(s), filter) }
	if has(name) || (!l.Free() && has(l.Key)) {
		return true
	}
	return slices.ContainsFunc(l.Holders, func(h lock.Holder) bool { return has(h.Name) || has(h.Note) }) ||
		slices.ContainsFunc(l.Waiting, func(w lock.Waiting) bool { return has(w.Requestor) || has(w.Key) })
}

// hiddenKey stands for a lock's key in what a caller without the lock
// role on it is shown: with the key, it could give back someone else's
// hold.
const hiddenKey = "(hidden)"

// asSeen returns s as r's caller may see the lock called name (view).
func asSeen(r *http.Request, name string, s engine.Snapshot) engine.Snapshot {
	return callerOf(r).view(name, s)
}

// view returns s as c may see the lock called name: its key, and its
// waiters' keys, hidden unless c may lock it.
func (c *caller) view(name string, s engine.Snapshot) engine.Snapshot {
	if c.role(name) >= access.Lock {
		return s
	}
	if !s.Free() {
		s.Key = hiddenKey
	}
	if len(s.Waiting) > 0 {
		s.Waiting = slices.Clone(s.Waiting)
		for i := range s.Waiting {
			s.Waiting[i].Key = hiddenKey
		}
	}
	return s
}
