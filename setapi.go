package main

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/locker-ci/locker/internal/lock"
)

// The API's requests over several locks at once: PUT, PATCH and DELETE
// /locks, with the body's "locks" naming them. Each is one change over
// all of them, as the same request on /lock/<name> is over one.

// setReply is the answer to a request over several locks: each lock as
// lock.View shows it and, for a change, a sentence saying what happened.
type setReply struct {
	Locks    map[string]lock.View `json:"locks"`
	Released map[string]int       `json:"released,omitempty"` // DELETE: how many counts it gave back, by lock
	Response string               `json:"response,omitempty"`
}

// writeSet answers 200 with the locks in got.
func (s *server) writeSet(w http.ResponseWriter, r *http.Request, got map[string]Snapshot, released map[string]int, response string) {
	reply := setReply{Locks: make(map[string]lock.View, len(got)), Released: released, Response: response}
	for name, l := range got {
		reply.Locks[name] = l.View(name, l.Waiting)
		markReplay(w, l)
	}
	s.writeJSON(w, r, http.StatusOK, reply)
}

// handleLockSet handles PUT /locks: every lock named, in one change, or
// none; with ?wait=, one waiter in every lock's queue.
func (s *server) handleLockSet(w http.ResponseWriter, r *http.Request) {
	names, req, err := decodeSetRequest(w, r, s.maxLocks())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	asked, err := s.prepareAcquire(w, &req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	got, err := s.locks.AcquireSet(r.Context(), names, req.acquireRequest)
	if err != nil {
		s.writeError(w, r, s.waitCut(err, asked, req.Wait))
		return
	}
	s.writeSet(w, r, got, nil, fmt.Sprintf("locks %s acquired by %s", strings.Join(names, ", "), req.Requestor))
}

// handleRenewSet handles PATCH /locks: every lease renewed, or none.
func (s *server) handleRenewSet(w http.ResponseWriter, r *http.Request) {
	names, req, err := decodeSetRequest(w, r, s.maxLocks())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ttl, err := s.renewal(req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	got, err := s.locks.RenewSet(names, req.Key, req.Requestor, ttl, req.Idem)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeSet(w, r, got, nil, fmt.Sprintf("leases of %s on %s renewed for %v", req.Requestor, strings.Join(names, ", "), ttl))
}

// handleUnlockSet handles DELETE /locks: every lock given back in one
// change (with ?force=true, freed whoever holds it).
func (s *server) handleUnlockSet(w http.ResponseWriter, r *http.Request) {
	names, req, err := decodeSetRequest(w, r, s.maxLocks())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Force {
		old, got, err := s.locks.ForceReleaseSet(names, forcedBy(r), req.Idem)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		user, _, _ := r.BasicAuth()
		for name, l := range old {
			if !got[name].Replayed {
				s.log.Warn("lock force-released", "lock", name, "user", user, "remote", r.RemoteAddr,
					"key", l.Key, "holders", l.HoldersString(), "token", l.Token)
			}
		}
		s.writeSet(w, r, got, nil, fmt.Sprintf("locks %s force-released (%d of them were held)", strings.Join(names, ", "), len(old)))
		return
	}
	got, released, err := s.locks.ReleaseSet(names, req.Key, req.Requestor, req.All, req.Idem)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var gave, none []string
	for _, name := range names {
		if released[name] > 0 {
			gave = append(gave, name)
		} else {
			none = append(none, name)
		}
	}
	msg := fmt.Sprintf("locks %s released by %s", strings.Join(gave, ", "), req.Requestor)
	switch {
	case len(gave) == 0:
		msg = fmt.Sprintf("%s holds none of %s under key %q; nothing released", req.Requestor, strings.Join(names, ", "), req.Key)
	case len(none) > 0:
		msg += fmt.Sprintf("; it held nothing of %s", strings.Join(none, ", "))
	}
	s.writeSet(w, r, got, released, msg)
}
