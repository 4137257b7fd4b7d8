package main

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/config"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/listing"
	"github.com/locker-ci/locker/internal/lock"
)

// The lock endpoints: GET /locks, and GET, PUT, PATCH and DELETE on
// /lock/<name> and on /locks (several locks at once). Each decodes its
// request (request.go), calls the engine and writes its reply.

// handleList handles GET /locks: the locks that are held or waited for,
// by name, that the caller may read. With ?limit= it answers one page,
// and a Link header to the next; without, every lock, written as it is
// read a page at a time.
func (s *server) handleList(w http.ResponseWriter, r *http.Request) {
	page, err := decodePage(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	lw := listing.New(w)
	add := func(l engine.Listed) {
		if callerOf(r).role(l.Name) >= access.Read {
			l.Snapshot = asSeen(r, l.Name, l.Snapshot)
			lw.Add(l.Name, l.Lock, l.Waiting)
		}
	}
	if page.Limit > 0 {
		locks, next, err := s.locks.List(r.Context(), page)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if next != "" {
			w.Header().Set("Link", nextPageLink(page, next))
		}
		for _, l := range locks {
			add(l)
		}
		lw.End()
		return
	}
	err = s.locks.Each(r.Context(), page.Prefix, page.After, func(l engine.Listed) error {
		add(l)
		return lw.Err()
	})
	switch {
	case err == nil:
		lw.End()
	case !lw.Started():
		s.writeError(w, r, err)
	default:
		// Part of the listing has gone out as a 200: cut the connection,
		// so that the client sees a broken reply, not a short one.
		s.log.Error("listing cut short", "err", err)
		panic(http.ErrAbortHandler)
	}
}

// handleGet handles GET /lock/{name}.
func (s *server) handleGet(w http.ResponseWriter, r *http.Request) {
	name, err := lockName(r)
	var untilFree time.Duration
	if err == nil {
		untilFree, err = decodeUntilFree(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Read, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	var l engine.Snapshot
	if untilFree > 0 {
		l, err = s.waitUntilFree(w, r, name, untilFree)
	} else {
		l, err = s.locks.Get(name)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	l = asSeen(r, name, l)
	s.writeLock(w, r, name, l, "")
}

// handleLock handles PUT /lock/{name}.
func (s *server) handleLock(w http.ResponseWriter, r *http.Request) {
	name, req, err := decodeLockRequest(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Lock, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	asked, err := s.prepareAcquire(w, &req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	l, err := s.locks.Acquire(r.Context(), name, req.Request)
	if err != nil {
		err = s.waitCut(err, asked, req.Wait)
		s.writeError(w, r, err)
		return
	}
	s.writeLock(w, r, name, l, "lock for "+name+" acquired by "+req.Requestor)
}

// prepareAcquire gives req the default lease, checks its lease, cuts its
// wait to LOCKER_MAX_WAIT, and keeps the server's timeouts from cutting
// the wait. It returns the wait asked for.
func (s *server) prepareAcquire(w http.ResponseWriter, req *lockRequest) (time.Duration, error) {
	if req.TTL == 0 {
		req.TTL = s.defaultTTL
	}
	if err := s.checkTTL(req.TTL); err != nil {
		return 0, err
	}
	asked := req.Wait
	req.Wait = min(req.Wait, s.maxWait)
	if req.Wait > 0 {
		// The wait must not be cut by the server's timeouts. A read deadline
		// matters too: when it passes, net/http cancels the request.
		deadline := time.Now().Add(req.Wait + s.writeTimeout)
		rc := http.NewResponseController(w)
		_ = rc.SetWriteDeadline(deadline) // only test recorders lack deadlines
		_ = rc.SetReadDeadline(deadline)
	}
	return asked, nil
}

// waitCut adds to a refusal after a wait cut to LOCKER_MAX_WAIT that the
// client should ask again.
func (s *server) waitCut(err error, asked, waited time.Duration) error {
	if errors.Is(err, engine.ErrHeld) && asked > waited {
		return fmt.Errorf("%w (the wait asked for, %v, was cut to LOCKER_MAX_WAIT, %v: ask again)", err, asked, s.maxWait)
	}
	return err
}

// renewal returns the lease a PATCH renews for: its ttl, or the default.
func (s *server) renewal(req lockRequest) (time.Duration, error) {
	ttl := cmp.Or(req.TTL, s.defaultTTL)
	if ttl == 0 {
		return 0, fmt.Errorf("%w: %s", errBadRequest, advice.RenewTTL)
	}
	return ttl, s.checkTTL(ttl)
}

// checkTTL refuses a lease longer than the server allows.
func (s *server) checkTTL(ttl time.Duration) error {
	if s.maxTTL > 0 && ttl > s.maxTTL {
		return fmt.Errorf("%w: ttl is %v, over LOCKER_MAX_TTL (%v); %s", errBadRequest, ttl, s.maxTTL, advice.ShorterTTL)
	}
	return nil
}

// handleRenew handles PATCH /lock/{name}: a lease heartbeat.
func (s *server) handleRenew(w http.ResponseWriter, r *http.Request) {
	name, req, err := decodeLockRequest(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Lock, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	ttl, err := s.renewal(req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	l, err := s.locks.Renew(r.Context(), name, req.Key, req.Requestor, ttl, req.Idem, changeOptions(req)...)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	h, _ := l.Holder(req.Requestor)
	s.writeLock(w, r, name, l, fmt.Sprintf("lease of %s on %s renewed until %s", req.Requestor, name, h.ExpiresAt.Format(time.RFC3339)))
}

// handleUnlock handles DELETE /lock/{name}.
func (s *server) handleUnlock(w http.ResponseWriter, r *http.Request) {
	name, req, err := decodeLockRequest(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.mayRelease(r, req.Force, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Force {
		s.forceRelease(w, r, name, req)
		return
	}
	l, released, err := s.locks.Release(r.Context(), name, req.Key, req.Requestor, req.All, req.Idem, changeOptions(req)...)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var msg string
	switch {
	case released == 0 && l.Free():
		msg = fmt.Sprintf("lock for %s was not held; nothing to release", name)
	case released == 0:
		msg = fmt.Sprintf("the requestor %q holds no count of %s; nothing released, still held by %s", req.Requestor, name, l.HoldersString())
	case l.Free():
		msg = fmt.Sprintf("lock for %s released by %s; it is now free", name, req.Requestor)
	default:
		msg = fmt.Sprintf("lock for %s released by %s; held by %s", name, req.Requestor, l.HoldersString())
	}
	s.writeRelease(w, r, name, l, released, msg)
}

// forceRelease handles DELETE /lock/{name}?force=true: a person clearing a
// stuck lock. It is logged with who asked, and why.
func (s *server) forceRelease(w http.ResponseWriter, r *http.Request, name string, req lockRequest) {
	old, now, err := s.locks.ForceRelease(r.Context(), name, forcedBy(r), req.Idem, changeOptions(req)...)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	msg := fmt.Sprintf("lock for %s was not held; nothing to release", name)
	if !old.Free() {
		msg = fmt.Sprintf("lock for %s force-released; it was held with key %q by %s", name, old.Key, old.HoldersString())
		if !now.Replayed {
			s.logForced(r, name, old, req.Reason)
		}
	}
	s.writeLock(w, r, name, now, msg)
}

// logForced logs a lock forced free: which, who asked, why, and what it
// was.
func (s *server) logForced(r *http.Request, name string, old lock.Lock, reason string) {
	user, _, _ := r.BasicAuth()
	s.log.Warn("lock force-released", "lock", name, "user", user, "remote", r.RemoteAddr, "reason", reason,
		"key", old.Key, "holders", old.HoldersString(), "token", old.Token)
}

// lockReply is the answer to a request about one lock: the lock as
// lock.View shows it and, for a change, a sentence saying what happened.
type lockReply struct {
	lock.View
	Released *int   `json:"released,omitempty"` // DELETE: how many counts it gave back
	Response string `json:"response,omitempty"`
}

// maxLocks is the most locks one request may name.
func (s *server) maxLocks() int { return cmp.Or(s.maxSet, config.DefaultMaxSet) }

// writeLock answers 200 with the lock called name and, for a change, a
// sentence saying what happened.
func (s *server) writeLock(w http.ResponseWriter, r *http.Request, name string, l engine.Snapshot, response string) {
	writeView(w, name, l, nil, response)
}

// writeView answers 200 with a lockReply of l, called name: written by
// lock.AppendView, the bytes encoding/json would write for it, without
// the reflection and the maps (TestWriteViewIsEncodingJSON).
func writeView(w http.ResponseWriter, name string, l engine.Snapshot, released *int, response string) {
	markReplay(w, l)
	setETag(w.Header(), l.Token)
	bp := viewBuffers.Get().(*[]byte)
	b := lock.AppendView((*bp)[:0], name, l.Lock, l.Waiting)
	b = b[:len(b)-1] // the view's closing brace: the reply's fields follow
	if released != nil {
		b = append(b, `,"released":`...)
		b = strconv.AppendInt(b, int64(*released), 10)
	}
	if response != "" {
		b = append(b, `,"response":`...)
		b = lock.AppendString(b, response)
	}
	b = append(b, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b) // a client that went away cannot be told
	if cap(b) <= 64<<10 {
		*bp = b
		viewBuffers.Put(bp)
	}
}

// viewBuffers recycles the buffers writeView writes replies into.
var viewBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// markReplay says in a header that the answer is a repeat of the first
// answer to the request's Idempotency-Key, and that nothing changed.
func markReplay(w http.ResponseWriter, l engine.Snapshot) {
	if l.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
}

// writeRelease answers a DELETE as writeLock does, and says how many
// counts it gave back: a client can tell "released" from "held nothing".
func (s *server) writeRelease(w http.ResponseWriter, r *http.Request, name string, l engine.Snapshot, released int, response string) {
	writeView(w, name, l, &released, response)
}

// setReply is the answer to a request over several locks: each lock as
// lock.View shows it and, for a change, a sentence saying what happened.
type setReply struct {
	Locks    map[string]lock.View `json:"locks"`
	Released map[string]int       `json:"released,omitempty"` // DELETE: how many counts it gave back, by lock
	Response string               `json:"response,omitempty"`
}

// writeSet answers 200 with the locks in got.
func (s *server) writeSet(w http.ResponseWriter, r *http.Request, got map[string]engine.Snapshot, released map[string]int, response string) {
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
	if err := s.allow(r, access.Lock, names...); err != nil {
		s.writeError(w, r, err)
		return
	}
	asked, err := s.prepareAcquire(w, &req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	got, err := s.locks.AcquireSet(r.Context(), names, req.Request)
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
	if err := s.allow(r, access.Lock, names...); err != nil {
		s.writeError(w, r, err)
		return
	}
	ttl, err := s.renewal(req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	got, err := s.locks.RenewSet(r.Context(), names, req.Key, req.Requestor, ttl, req.Idem, changeOptions(req)...)
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
	if err := s.mayRelease(r, req.Force, names...); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Force {
		old, got, err := s.locks.ForceReleaseSet(r.Context(), names, forcedBy(r), req.Idem, changeOptions(req)...)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		for name, l := range old {
			if !got[name].Replayed {
				s.logForced(r, name, l, req.Reason)
			}
		}
		s.writeSet(w, r, got, nil, fmt.Sprintf("locks %s force-released (%d of them were held)", strings.Join(names, ", "), len(old)))
		return
	}
	got, released, err := s.locks.ReleaseSet(r.Context(), names, req.Key, req.Requestor, req.All, req.Idem, changeOptions(req)...)
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
