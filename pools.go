package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/jsonbody"
	"github.com/locker-ci/locker/internal/lock"
)

// The API's pools: PUT, GET and DELETE /pool/<pool>, GET /pools, and
// PUT /pool/<pool>/claim.

// poolExample is a body for PUT /pool/<pool>, for error messages.
const poolExample = `{"members": ["staging-1", "staging-2", "staging-3"]}`

// poolName returns the pool's name from r's path: printable text, named
// like a lock (a slash in it is written %2F), so that a grant on a prefix
// covers a team's pools as it covers its locks.
func poolName(r *http.Request) (string, error) {
	name, err := url.PathUnescape(mux.Vars(r)["pool"])
	switch {
	case err != nil:
		return "", fmt.Errorf("%w: the pool name is not valid URL encoding (%v)", errBadRequest, err)
	case !utf8.ValidString(name):
		return "", fmt.Errorf("%w: the pool name is not valid UTF-8", errBadRequest)
	case name == "":
		return "", fmt.Errorf("%w: the pool name is empty; every pool has a name", errBadRequest)
	case len(name) > maxFieldBytes:
		return "", fmt.Errorf("%w: the pool name is %d bytes long; the limit is %d", errBadRequest, len(name), maxFieldBytes)
	}
	return name, printable("the pool name", name)
}

// poolQuery returns the pool's name from r's path, and refuses any query
// parameter: GET, PUT and DELETE /pool/<pool> take none.
func poolQuery(r *http.Request) (string, error) {
	name, err := poolName(r)
	if err == nil {
		_, err = checkQuery(r, "/pool/<pool>")
	}
	return name, err
}

// poolReply is a pool as the API shows it.
type poolReply struct {
	Name    string               `json:"name"`
	Members map[string]lock.View `json:"members"`
	Free    []string             `json:"free"`
	Waiting []engine.PoolWaiter  `json:"waiting"`
}

// poolSummary is a pool in GET /pools.
type poolSummary struct {
	Members []string `json:"members"`
}

// handlePools handles GET /pools: every pool and its members.
func (s *server) handlePools(w http.ResponseWriter, r *http.Request) {
	if _, err := checkQuery(r, "/pools"); err != nil {
		s.writeError(w, r, err)
		return
	}
	pools, err := s.locks.Pools()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make(map[string]poolSummary, len(pools))
	for name, p := range pools {
		if callerOf(r).role(name) >= access.Read {
			out[name] = poolSummary{Members: p.Members}
		}
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// handlePool handles GET /pool/{pool}: each member free or held, and the
// claims waiting.
func (s *server) handlePool(w http.ResponseWriter, r *http.Request) {
	name, err := poolQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Read, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := s.locks.Pool(name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	reply := poolReply{Name: name, Members: map[string]lock.View{}, Free: []string{}, Waiting: v.Waiting}
	if reply.Waiting == nil {
		reply.Waiting = []engine.PoolWaiter{}
	}
	if callerOf(r).role(name) < access.Lock {
		reply.Waiting = slices.Clone(reply.Waiting)
		for i := range reply.Waiting {
			reply.Waiting[i].Key = hiddenKey
		}
	}
	for _, m := range v.Members {
		l := v.Locks[m]
		if callerOf(r).role(name) < access.Lock {
			l = asSeen(r, m, l) // a member's key, to those who may lock the pool or the member
		}
		reply.Members[m] = l.View(m, l.Waiting)
		if l.Free() {
			reply.Free = append(reply.Free, m)
		}
	}
	s.writeJSON(w, r, http.StatusOK, reply)
}

// handleSetPool handles PUT /pool/{pool}: makes the pool, or replaces its
// members.
func (s *server) handleSetPool(w http.ResponseWriter, r *http.Request) {
	name, err := poolQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Operate, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	fields, _, err := jsonbody.Read(w, r, maxBodyBytes, bodyExample, false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if f, ok := jsonbody.FirstUnknown(fields, []string{"members"}); ok {
		s.writeError(w, r, fmt.Errorf("%w: unknown field %q in the body; PUT /pool/<pool> accepts \"members\", e.g. %s", errBadRequest, f, poolExample))
		return
	}
	members, err := nameList("members", poolExample, fields["members"], s.maxLocks())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	p, err := s.locks.SetPool(name, members)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"name": name, "members": p.Members,
		"response": fmt.Sprintf("pool %s has %s: %s", name, advice.Plural(len(p.Members), "member", "members"), strings.Join(p.Members, ", "))})
}

// handleDeletePool handles DELETE /pool/{pool}.
func (s *server) handleDeletePool(w http.ResponseWriter, r *http.Request) {
	name, err := poolQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Operate, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.locks.DeletePool(name); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]string{"name": name,
		"response": fmt.Sprintf("pool %s removed; its members stay as they are (a held one until it is given back)", name)})
}

// handleClaim handles PUT /pool/{pool}/claim: count free members in one
// change, or, with ?wait=, first come, first served for the pool.
func (s *server) handleClaim(w http.ResponseWriter, r *http.Request) {
	name, err := poolName(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Lock, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	count := 1
	req, err := decodeChange(w, r, claimPath, func(fields map[string]json.RawMessage) ([]string, error) {
		if raw, ok := fields["count"]; ok {
			if err := json.Unmarshal(raw, &count); err != nil || count < 1 {
				return nil, fmt.Errorf("%w: \"count\" is how many members to claim, a whole number from 1 up (got %s)", errBadRequest, raw)
			}
		}
		return []string{"/pool/" + name + "/claim"}, nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	asked, err := s.prepareAcquire(w, &req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req.Count = count
	got, err := s.locks.Claim(r.Context(), name, req.Request)
	if err != nil {
		s.writeError(w, r, s.waitCut(err, asked, req.Wait))
		return
	}
	names := slices.Sorted(maps.Keys(got))
	s.writeSet(w, r, got, nil, fmt.Sprintf("%s claimed from pool %s by %s", strings.Join(names, ", "), name, req.Requestor))
}

// The queue's own endpoints: an operator takes a waiter out (DELETE
// /waiters/<id>), a gate waits until a lock is free (GET
// /lock/<name>?free=true).

// removeExample is a body for DELETE /waiters/<id>, for messages.
const removeExample = `{"reason": "build 55 is superseded by 57"}`

// handleRemoveWaiter handles DELETE /waiters/{id}: takes a waiting request
// out of every queue it is in (a set's or a claim's: several). The
// request is answered 409 saying who removed it and why; those behind it
// move up. It needs operate on each of its locks, or on a claim's pool.
func (s *server) handleRemoveWaiter(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(mux.Vars(r)["id"], 10, 64)
	if err != nil || id <= 0 {
		s.writeError(w, r, fmt.Errorf("%w: %q is not a waiter's ID: each waiter in GET /lock/<name>'s \"waiting\" list has one, a number such as 42", errBadRequest, mux.Vars(r)["id"]))
		return
	}
	if len(r.URL.Query()) > 0 {
		s.writeError(w, r, fmt.Errorf("%w: DELETE /waiters/<id> takes no query parameters; say why in the body, e.g. %s", errBadRequest, removeExample))
		return
	}
	fields, _, err := jsonbody.Read(w, r, maxBodyBytes, removeExample, true)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if f, ok := jsonbody.FirstUnknown(fields, []string{"reason"}); ok {
		s.writeError(w, r, fmt.Errorf("%w: unknown field %q in the body; DELETE /waiters/<id> accepts \"reason\", e.g. %s", errBadRequest, f, removeExample))
		return
	}
	var reason string
	if err := jsonbody.String(fields, "reason", removeExample, &reason); err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(reason) > maxFieldBytes {
		s.writeError(w, r, fmt.Errorf("%w: \"reason\" is %d bytes long; the limit is %d", errBadRequest, len(reason), maxFieldBytes))
		return
	}
	if err := printable(`"reason"`, reason); err != nil {
		s.writeError(w, r, err)
		return
	}
	names, pool, err := s.locks.Waiter(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Operate, names...); err != nil && (pool == "" || s.allow(r, access.Operate, pool) != nil) {
		s.writeError(w, r, err)
		return
	}
	why := "removed from the queue by " + forcedBy(r)
	if reason != "" {
		why += ": " + reason
	}
	if err := s.locks.RemoveWaiter(r.Context(), id, names, why); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"id": id, "locks": names,
		"response": fmt.Sprintf("waiter %d taken out of the queue of %s; its request is answered: %s", id, joinList(quoted(names), "and"), why)})
}

// decodeUntilFree reads GET /lock/<name>'s query: ?free=true&wait=D
// waits up to D for the lock to be free (0: no wait).
func decodeUntilFree(r *http.Request) (time.Duration, error) {
	query, err := checkQuery(r, "/lock/<name>")
	if err != nil || query == nil {
		return 0, err
	}
	free, wait := query.Get("free"), query.Get("wait")
	switch {
	case free != "true" && free != "":
		return 0, fmt.Errorf("%w: ?free= is true or left out, e.g. ?free=true&wait=5m (got %q)", errBadRequest, free)
	case (free == "") != (wait == ""):
		return 0, fmt.Errorf("%w: a GET waits only until the lock is free: give ?free=true and ?wait= together, e.g. ?free=true&wait=5m", errBadRequest)
	case wait == "":
		return 0, nil
	}
	return jsonbody.ParseDuration("wait", wait, false)
}

// waitUntilFree answers as soon as the lock called name is free, or with
// the lock as it is when wait (cut to LOCKER_MAX_WAIT) runs out: for a
// gate that only watches. It hears of the lock's changes on the stream,
// and looks every second besides (a server that keeps no history has no
// events).
func (s *server) waitUntilFree(w http.ResponseWriter, r *http.Request, name string, wait time.Duration) (engine.Snapshot, error) {
	wait = min(wait, s.maxWait)
	rc := http.NewResponseController(w)
	deadline := time.Now().Add(wait + s.writeTimeout)
	_ = rc.SetWriteDeadline(deadline)
	_ = rc.SetReadDeadline(deadline)
	sub := s.hub.Subscribe([]string{name}, s.streamBuffer)
	defer func() { sub.Close() }()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		l, err := s.locks.Get(name)
		if err != nil || l.Free() {
			return l, err
		}
		select {
		case <-sub.Ready:
			sub.Take()
		case <-sub.Cut: // fell behind on one lock's events: look, and hear again
			sub.Close()
			sub = s.hub.Subscribe([]string{name}, s.streamBuffer)
		case <-tick.C:
		case <-timer.C:
			return s.locks.Get(name)
		case <-r.Context().Done():
			return engine.Snapshot{}, engine.ErrClientGone
		}
	}
}

// setExample is a body for PUT /locks, for error messages.
const setExample = `{"locks": ["prod-db", "prod-app"], "key": "deploy-42"}`

// setNames reads the body's "locks": a list of 1 to max lock names, each
// given once, returned sorted.
func setNames(raw json.RawMessage, max int) ([]string, error) {
	return nameList("locks", setExample, raw, max)
}

// nameList reads the body's field, a list of 1 to max lock names, each
// given once, and returns it sorted; example is a body that has it.
func nameList(field, example string, raw json.RawMessage, max int) ([]string, error) {
	if raw == nil {
		return nil, fmt.Errorf("%w: the body needs %q, a list of lock names, e.g. %s", errBadRequest, field, example)
	}
	var names []string
	if err := json.Unmarshal(raw, &names); err != nil || names == nil {
		return nil, fmt.Errorf("%w: %q must be a list of lock names (strings), e.g. %s", errBadRequest, field, example)
	}
	switch {
	case len(names) == 0:
		return nil, fmt.Errorf("%w: %q is empty; name at least one lock, e.g. %s", errBadRequest, field, example)
	case len(names) > max:
		return nil, fmt.Errorf("%w: %q names %d locks; at most %d (LOCKER_MAX_LOCKS_PER_REQUEST)", errBadRequest, field, len(names), max)
	}
	for _, name := range names {
		switch {
		case name == "":
			return nil, fmt.Errorf("%w: %q holds an empty name; every lock has a name", errBadRequest, field)
		case len(name) > maxFieldBytes:
			return nil, fmt.Errorf("%w: a lock name in %q is %d bytes long; the limit is %d", errBadRequest, field, len(name), maxFieldBytes)
		}
		if err := printable(fmt.Sprintf("the lock name %q", name), name); err != nil {
			return nil, err
		}
	}
	sorted := slices.Sorted(slices.Values(names))
	for i := 1; i < len(sorted); i++ {
		if sorted[i] == sorted[i-1] {
			return nil, fmt.Errorf("%w: %q names %q twice; name each lock once", errBadRequest, field, sorted[i])
		}
	}
	return sorted, nil
}
