package statuspage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/humane"
	"github.com/locker-ci/locker/internal/lock"
)

// lockCard is one lock as the page shows it.
type lockCard struct {
	Name, Key  string
	Path       string // the lock's API path, for the operators' forms
	Token      uint64
	ETag       string // Token as an If-Match wants it: "17"
	Operate    bool   // the viewer may operate on it: the page offers its forms
	Limit      int    // the most holds at once; 0 for none
	Holds      int    // its holders' counts
	AcquiredAt string // RFC 3339, or "" when the state file did not say
	HeldFor    string // how long ago AcquiredAt was, e.g. "12 min"
	Long       bool   // held longer than the page's HeldOver
	LeaseSoon  string // how soon the first lease ends, when within leaseSoon
	Holders    []holderLine
	Queue      []waiterLine
	Events     []eventLine // the latest, newest first
}

// eventLine is one event of a lock's history, for a person.
type eventLine struct {
	Kind string // the event's kind, for its style
	At   string // RFC 3339
	Ago  string // how long ago, e.g. "12 min"
	Text string // what happened, e.g. "released by deploy-42 after 2 h"
}

// holderLine is one holder of a lock.
type holderLine struct {
	Name        string
	Count       int
	Since       string // how long ago it took its first count, e.g. "3 min"
	Lease       string // how long until its lease ends; "" for no lease
	Note        string
	NoteURL     string // Note, when it is an http(s) URL to link to
	Reservation bool   // a person's reservation, which the page offers to give back
	Build       string // the CI build it belongs to, e.g. "build 17", or ""
	BuildURL    string // the build's page, when it is an http(s) URL
	EndsWith    string // the build outcomes that end it, e.g. "aborted or errored"
}

// waiterLine is one request in a lock's queue.
type waiterLine struct {
	ID                     int64 // for DELETE /waiters/<id>
	Requestor, Key, Waited string
	Priority               int
}

// poolCard is a pool as the page shows it: each member free or held, at
// a glance.
type poolCard struct {
	Name    string
	Members []memberLine
	Free    int
	Waiting int // claims waiting
}

// memberLine is a member of a pool.
type memberLine struct {
	Name    string
	Path    string // the member's lock's API path
	Holder  string // who holds it, e.g. "e2e-77"; "" when free
	Since   string // how long ago it was taken
	Operate bool   // the viewer may operate on it: a free member may be reserved
}

// add counts l, which the table's locks come to in name order, and shows
// it if it matches p.Filter and the page has room: room for the MaxLocks
// most urgent (or, by name, the first).
func (p *Page) add(l engine.Listed) error {
	if p.who.Role(l.Name) < access.Read {
		return nil
	}
	l.Snapshot = p.who.View(l.Name, l.Snapshot)
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
	if p.Matching-p.Hidden > MaxLocks {
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
func (p *Page) urgency(l engine.Snapshot) int {
	first := l.FirstLease()
	switch {
	case !l.Free() && !l.AcquiredAt.IsZero() && p.Now.Sub(l.AcquiredAt) > p.HeldOver:
		return urgencyHeldOver
	case len(l.Waiting) > 0:
		return urgencyQueue
	case !first.IsZero() && first.Sub(p.Now) < leaseSoon:
		return urgencyLeaseSoon
	}
	return urgencyNone
}

// addPools adds the pools, by name, up to maxPools.
func (p *Page) addPools(e *engine.Engine) error {
	pools, err := e.Pools()
	if err != nil {
		return err
	}
	names := slices.DeleteFunc(slices.Sorted(maps.Keys(pools)), func(name string) bool { return p.who.Role(name) < access.Read })
	if len(names) > maxPools {
		p.HiddenPools, names = len(names)-maxPools, names[:maxPools]
	}
	for _, name := range names {
		v, err := e.Pool(name)
		if errors.Is(err, engine.ErrNoPool) {
			continue // removed since
		}
		if err != nil {
			return err
		}
		pc := poolCard{Name: name, Waiting: len(v.Waiting)}
		for _, m := range v.Members {
			l := v.Locks[m]
			ml := memberLine{Name: m, Path: lockPath(m), Holder: l.HoldersString(), Operate: p.who.Role(m) >= access.Operate}
			if l.Free() {
				ml.Holder = ""
				pc.Free++
			} else if !l.AcquiredAt.IsZero() {
				ml.Since = humane.Duration(p.Now.Sub(l.AcquiredAt))
			}
			pc.Members = append(pc.Members, ml)
		}
		p.Pools = append(p.Pools, pc)
	}
	return nil
}

// lock returns l, called name, as the page shows it.
func (p *Page) lock(name string, l engine.Snapshot) lockCard {
	c := lockCard{Name: name, Key: l.Key, Path: lockPath(name), Token: l.Token, ETag: strconv.Quote(strconv.FormatUint(l.Token, 10)),
		Operate: p.who.Role(name) >= access.Operate, Limit: l.Limit, Holds: l.Holds()}
	if !l.AcquiredAt.IsZero() {
		c.AcquiredAt = l.AcquiredAt.UTC().Format(time.RFC3339)
		c.HeldFor = humane.Duration(p.Now.Sub(l.AcquiredAt))
		c.Long = !l.Free() && p.Now.Sub(l.AcquiredAt) > p.HeldOver
	}
	for _, h := range l.Holders {
		hl := holderLine{Name: h.Name, Count: h.Count, Note: h.Note, NoteURL: humane.Link(h.Note), Reservation: reservation(l.Key)}
		if b := h.Build; b != nil {
			hl.Build, hl.BuildURL, hl.EndsWith = fmt.Sprintf("build %d", b.ID), humane.Link(b.URL), strings.Join(b.EndWith, " or ")
		}
		if !h.Since.IsZero() {
			hl.Since = humane.Duration(p.Now.Sub(h.Since))
		}
		if !h.ExpiresAt.IsZero() {
			hl.Lease = humane.Duration(h.ExpiresAt.Sub(p.Now))
		}
		c.Holders = append(c.Holders, hl)
	}
	if first := l.FirstLease(); !first.IsZero() && first.Sub(p.Now) < leaseSoon {
		c.LeaseSoon = humane.Duration(first.Sub(p.Now))
	}
	for _, q := range l.Waiting {
		c.Queue = append(c.Queue, waiterLine{ID: q.ID, Requestor: q.Requestor, Key: q.Key, Waited: humane.Duration(p.Now.Sub(q.Since)), Priority: q.Priority})
	}
	return c
}

// addEvents adds the latest events of each lock shown.
func (p *Page) addEvents(ctx context.Context, e *engine.Engine) error {
	names := make([]string, len(p.Locks))
	for i, l := range p.Locks {
		names[i] = l.Name
	}
	recent, err := e.Recent(ctx, names, recentEvents)
	if err != nil {
		return err
	}
	for i := range p.Locks {
		for _, ev := range recent[p.Locks[i].Name] {
			p.Locks[i].Events = append(p.Locks[i].Events, eventLine{Kind: string(ev.Kind), At: ev.At.UTC().Format(time.RFC3339),
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
