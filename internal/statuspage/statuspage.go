// Package statuspage renders the status page: every lock, who holds it and
// who waits, for a person on a wall screen or a phone, and, for operators,
// the forms that act on a lock. It is rendered with html/template, which
// escapes every name, key and note, and refreshes itself: by a few lines of
// JavaScript that follow the stream of changes and fetch the page again,
// or, with JavaScript off, by a meta refresh. The forms call the API as
// any client does, from the page's own origin.
//
// It reads the engine and knows no HTTP: the server parses the query,
// says who asks, and writes what Render returns with Policy.
package statuspage

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/url"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/humane"
)

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

	// Policy is the page's Content-Security-Policy: it may run its own
	// script and style and nothing else, so that were a name ever to slip
	// past the escaping, no script in it would run. The hashes are of the
	// embedded files, as the page holds them. Its forms call the API with
	// fetch, on the page's own origin.
	Policy = fmt.Sprintf("default-src 'none'; script-src '%s'; style-src '%s'; connect-src 'self'; "+
		"form-action 'self'; base-uri 'none'; frame-ancestors 'none'", cspHash(statusJS), cspHash(statusCSS))
)

// Tuned for the status page.
const (
	// Refresh is how often, in seconds, the page reloads its list when it
	// cannot follow the stream: a wall screen is no more than this behind,
	// and a hundred open pages cost the server twenty renders a second.
	Refresh = 5
	// MaxLocks caps the locks one page shows, so that a table of 100,000
	// locks does not make a page of 100 MB every few seconds.
	MaxLocks = 500
	// maxPools caps the pools one page shows (each is read apart).
	maxPools = 50
	// DefaultHeldOver is how long a lock may be held before it stands
	// out, unless the query says otherwise; the sample alert in
	// docs/operating.md fires then too. DefaultHeldOverText says it.
	DefaultHeldOver     = 6 * time.Hour
	DefaultHeldOverText = "6h"
	// leaseSoon: a lease that ends sooner stands out, for a holder that
	// may be about to lose its lock.
	leaseSoon = 10 * time.Minute
	// recentEvents is how many of each lock's latest events the page
	// shows; GET /history has the rest.
	recentEvents = 3
	// ReservedBy starts the key of a reservation the page makes: a person
	// takes a free lock, with their name as the holder ("reserved by
	// alice"), and the page offers to give back the holds whose key starts
	// so. The key is the person's own: another person's reservation is
	// refused while theirs holds.
	ReservedBy = "reserved by "
)

// The urgencies by which the page orders the locks, most urgent first;
// locks of one urgency come by name.
const (
	urgencyHeldOver  = iota // held longer than the page's HeldOver
	urgencyQueue            // requests wait for it
	urgencyLeaseSoon        // a lease on it ends within leaseSoon
	urgencyNone
	urgencies
)

// cspHash returns the Content-Security-Policy source for an inline script
// or style whose text is s.
func cspHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// Viewer is who asks for the page.
type Viewer struct {
	Name string                                               // the credential; "" on an open server
	Role func(name string) access.Role                        // their role on a lock or pool
	View func(name string, s engine.Snapshot) engine.Snapshot // a lock as they may see it
	// Operator: they may operate on some names, so the page offers to
	// reserve a lock by its name.
	Operator bool
}

// Query is what the page's URL asks for.
type Query struct {
	Filter       string        // show only locks whose name, key, holders or queue contain it
	HeldOver     time.Duration // locks held longer than this stand out
	HeldOverText string        // HeldOver as the URL said it, e.g. "6h"
	HeldOverSet  bool          // the URL said it, so the filter form keeps it
	ByName       bool          // the locks by name, not by urgency
	OtherOrder   string        // the page's URL in the other order
}

// Page is what the status template shows.
type Page struct {
	Query
	Title       string
	SignedInAs  string // the credential the page was asked for with; "" on an open server
	Operator    bool   // the page offers to reserve a lock by name
	ReservedBy  string // ReservedBy, for the page's script
	who         Viewer
	Now         time.Time
	Held        int       // locks held, in the whole table
	Waiting     int       // requests waiting, in the whole table
	oldestWait  time.Time // since when the longest waiter has waited
	LongestWait string    // how long that is, for a person
	Matching    int       // locks that match Filter
	Hidden      int       // matching locks not shown (over MaxLocks)
	Locks       []lockCard
	byUrgency   [urgencies][]lockCard // the locks shown, until they are put in Locks
	Pools       []poolCard
	HiddenPools int // pools not shown (over maxPools)
	Refresh     int
	Version     string
	Style       template.CSS
	Script      template.JS
}

// Build reads the page for who, as q asks, from e.
func Build(ctx context.Context, e *engine.Engine, who Viewer, q Query, version string) (*Page, error) {
	p := &Page{Query: q, SignedInAs: who.Name, Operator: who.Operator, ReservedBy: ReservedBy, who: who, Now: e.Now().UTC(),
		Refresh: Refresh, Version: version, Style: template.CSS(statusCSS), Script: template.JS(statusJS)}
	if err := e.Each(ctx, "", "", p.add); err != nil {
		return nil, err
	}
	for _, locks := range p.byUrgency {
		p.Locks = append(p.Locks, locks...)
	}
	if err := p.addEvents(ctx, e); err != nil {
		return nil, err
	}
	p.Title = fmt.Sprintf("Locker: %d held, %d waiting", p.Held, p.Waiting)
	if err := p.addPools(e); err != nil {
		return nil, err
	}
	return p, nil
}

// Render returns the page as HTML.
func (p *Page) Render() ([]byte, error) {
	var buf bytes.Buffer
	if err := statusTemplate.Execute(&buf, p); err != nil {
		return nil, fmt.Errorf("rendering the status page: %w", err)
	}
	return buf.Bytes(), nil
}

// markArgs are what the "marked" template shows: a text, with what in it
// matches the filter marked.
type markArgs struct{ Text, Filter string }

// lockPath is the API path of the lock called name, as the page's forms
// call it.
func lockPath(name string) string { return "/lock/" + url.PathEscape(name) }

// reservation reports whether key is that of a reservation the page made.
func reservation(key string) bool { return strings.HasPrefix(key, ReservedBy) }
