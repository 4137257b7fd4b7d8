package main

// An operator's tool on the queue: DELETE /waiters/<id>.

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/jsonbody"
)

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
