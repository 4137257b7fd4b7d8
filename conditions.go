package main

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/lock"
)

// Conditional changes: a reply that shows one lock carries its fencing
// token as an ETag, and a release, a renewal or a forced release with
// If-Match is made only while each lock's token is still one given.

// etag is the ETag of a lock at token: the token, quoted.
func etag(token uint64) string { return `"` + strconv.FormatUint(token, 10) + `"` }

// setETag sets h's ETag to that of a lock at token, spelt as RFC 9110
// spells it (net/http's canonical form would be "Etag").
func setETag(h http.Header, token uint64) { h["ETag"] = []string{etag(token)} }

// ifMatchExample is shown in errors about If-Match.
const ifMatchExample = `If-Match: "17" (the ETag of GET /lock/<name>), or If-Match: *`

// ifMatch reads r's If-Match headers: nil without one; else the
// condition every lock of the change must meet. Only PATCH and DELETE
// take it.
func ifMatch(r *http.Request) (*engine.Precondition, error) {
	values := r.Header.Values("If-Match")
	if len(values) == 0 {
		return nil, nil
	}
	if r.Method != http.MethodPatch && r.Method != http.MethodDelete {
		return nil, fmt.Errorf("%w: If-Match makes a PATCH or a DELETE conditional; %s takes none", errBadRequest, r.Method)
	}
	var p engine.Precondition
	for _, v := range values {
		for _, tag := range strings.Split(v, ",") {
			tag = strings.TrimSpace(tag)
			switch {
			case tag == "*":
				p.Held = true
				continue
			case strings.HasPrefix(tag, "W/"):
				return nil, fmt.Errorf("%w: If-Match compares strong ETags; %s is weak. Send the ETag of GET /lock/<name> as it came, e.g. %s", errBadRequest, tag, ifMatchExample)
			}
			inner, ok := strings.CutPrefix(tag, `"`)
			inner, closed := strings.CutSuffix(inner, `"`)
			token, err := strconv.ParseUint(inner, 10, 64)
			if !ok || !closed || err != nil {
				return nil, fmt.Errorf("%w: If-Match holds %q, which is not a lock's ETag (its fencing token, quoted); e.g. %s", errBadRequest, tag, ifMatchExample)
			}
			p.Tokens = append(p.Tokens, token)
		}
	}
	if p.Held && len(p.Tokens) > 0 {
		return nil, fmt.Errorf("%w: If-Match is * or a list of ETags, not both; e.g. %s", errBadRequest, ifMatchExample)
	}
	return &p, nil
}

// changeOptions are the engine's options for req's conditional change.
func changeOptions(req lockRequest) []engine.Option {
	var opts []engine.Option
	if req.IfMatch != nil {
		opts = append(opts, engine.IfMatch(*req.IfMatch))
	}
	if req.Reason != "" {
		opts = append(opts, engine.Because(req.Reason))
	}
	return opts
}

// preconditionReply is the answer to a change whose precondition failed:
// the error, and the lock (or, for a set, every lock) as it is now.
type preconditionReply struct {
	Error string               `json:"error"`
	Lock  *lock.View           `json:"lock,omitempty"`
	Locks map[string]lock.View `json:"locks,omitempty"`
}

// writePrecondition answers 412 for err, with the locks as r's caller may
// see them.
func (s *server) writePrecondition(w http.ResponseWriter, r *http.Request, err *engine.PreconditionError) {
	set := r.URL.Path == "/locks"
	reply := preconditionReply{Error: err.Error()}
	views := make(map[string]lock.View, len(err.Locks))
	for name, l := range err.Locks {
		l = asSeen(r, name, l)
		views[name] = l.View(name, l.Waiting)
		if !set {
			setETag(w.Header(), l.Token)
		}
	}
	if set {
		reply.Locks = views
	} else {
		for _, v := range views {
			reply.Lock = &v
		}
	}
	s.writeJSON(w, r, http.StatusPreconditionFailed, reply)
}
