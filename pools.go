package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
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
