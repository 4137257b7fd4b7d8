package main

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/jsonbody"
	"github.com/locker-ci/locker/internal/statuspage"
)

// The status page, GET /: every lock, who holds it and who waits, and for
// operators the forms that act on them (internal/statuspage renders it).

// handleStatus handles GET / : the status page.
func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) {
	query, err := checkQuery(r, "/")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q := statuspage.Query{Filter: strings.TrimSpace(query.Get("q")), HeldOver: statuspage.DefaultHeldOver, HeldOverText: statuspage.DefaultHeldOverText}
	if v, ok := query["held_over"]; ok {
		if q.HeldOver, err = jsonbody.ParseDuration("held_over", v[0], false); err != nil {
			s.writeError(w, r, err)
			return
		}
		q.HeldOverText, q.HeldOverSet = v[0], true
	}
	switch v := query.Get("sort"); v {
	case "name":
		q.ByName = true
	case "", "urgency":
	default:
		s.writeError(w, r, fmt.Errorf("%w: sort is urgency (the default) or name, not %q", errBadRequest, v))
		return
	}
	q.OtherOrder = otherOrder(query, q.ByName)
	c := callerOf(r)
	who := statuspage.Viewer{Name: c.name, Role: c.role, View: c.view,
		Operator: slices.ContainsFunc(c.grants, func(g access.Grant) bool { return g.Role >= access.Operate })}
	page, err := statuspage.Build(r.Context(), s.locks, who, q, version)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	body, err := page.Render()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", statuspage.Policy)
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer") // the filter is in the URL
	h.Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(body) // a client that went away cannot be told
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
