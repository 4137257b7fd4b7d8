package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"
)

// maxBodyBytes limits request bodies. A lock request is a few hundred bytes;
// the limit only has to stop a client from filling memory.
const maxBodyBytes = 64 << 10

// maxFieldBytes limits lock names, keys and requestors: each one is kept in
// memory, in every listing and in the state file.
const maxFieldBytes = 1024

// bodyExample is shown in errors about request bodies.
const bodyExample = `{"key": "prod-cf", "lock_by": "my-job"}`

// Errors about the request itself; errorStatuses maps them to HTTP statuses.
var (
	errBadRequest   = errors.New("bad request")
	errBodyTooLarge = errors.New("request body too large")
	errUnauthorized = errors.New("authentication required: send the locker's username and password with HTTP basic auth (curl -u USER:PASS)")
	errNotFound     = errors.New("no such endpoint; the API is GET /locks and GET, PUT, DELETE /lock/<name>")
	errMethod       = errors.New("method not allowed")
)

// errorStatuses maps each error a handler can return to its HTTP status.
// An error that is none of these is a bug and answers 500.
var errorStatuses = []struct {
	err    error
	status int
}{
	{errBadRequest, http.StatusBadRequest},
	{errUnauthorized, http.StatusUnauthorized},
	{errNotFound, http.StatusNotFound},
	{errMethod, http.StatusMethodNotAllowed},
	{errBodyTooLarge, http.StatusRequestEntityTooLarge},
	{errLockHeld, http.StatusLocked},
	{errUncertain, http.StatusInternalServerError},
	{errSave, http.StatusInternalServerError},
}

// server answers the lock API.
type server struct {
	locks *table
	log   *slog.Logger
	auth  *credentials // nil when the API is open
}

// routes returns the whole API, wrapped in authentication and request logs.
func (s *server) routes() http.Handler {
	r := mux.NewRouter()
	// Lock names are taken from the path as sent, then unescaped, so that
	// "a%2Fb" names the lock "a/b" and nothing is cleaned away.
	r.UseEncodedPath()
	r.SkipClean(true)

	r.HandleFunc("/locks", s.handleList).Methods(http.MethodGet)
	r.HandleFunc("/lock/{name:.+}", s.handleGet).Methods(http.MethodGet)
	r.HandleFunc("/lock/{name:.+}", s.handleLock).Methods(http.MethodPut)
	r.HandleFunc("/lock/{name:.+}", s.handleUnlock).Methods(http.MethodDelete)

	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, errNotFound)
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		allowed := allowedMethods(r, req)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		s.writeError(w, req, fmt.Errorf("%w: %s %s; this path takes %s",
			errMethod, req.Method, req.URL.EscapedPath(), joinList(allowed, "or")))
	})
	return s.logRequests(s.requireAuth(r))
}

// allowedMethods lists the methods that router serves for req's path.
func allowedMethods(router *mux.Router, req *http.Request) []string {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		probe := req.Clone(req.Context())
		probe.Method = m
		var match mux.RouteMatch
		if router.Match(probe, &match) && match.MatchErr == nil {
			allowed = append(allowed, m)
		}
	}
	return allowed
}

// lockView is one lock as the API shows it. The original clients read key
// and locked_by with jq; both keep their shape.
type lockView struct {
	Name     string         `json:"name"`
	Key      string         `json:"key"`
	LockedBy map[string]int `json:"locked_by"`
}

func viewOf(name string, l Lock) lockView {
	v := lockView{Name: name, Key: l.Key, LockedBy: l.LockedBy}
	if v.LockedBy == nil {
		v.LockedBy = map[string]int{} // a free lock shows {}, not null
	}
	return v
}

// lockReply answers a PUT or DELETE: the lock as it now is, and a sentence.
type lockReply struct {
	lockView
	Response string `json:"response"`
}

// handleList handles GET /locks.
func (s *server) handleList(w http.ResponseWriter, r *http.Request) {
	locks := s.locks.List()
	out := make(map[string]lockView, len(locks))
	for name, l := range locks {
		out[name] = viewOf(name, l)
	}
	s.writeJSON(w, http.StatusOK, out)
}

// handleGet handles GET /lock/{name}.
func (s *server) handleGet(w http.ResponseWriter, r *http.Request) {
	name, err := lockName(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, viewOf(name, s.locks.Get(name)))
}

// handleLock handles PUT /lock/{name}.
func (s *server) handleLock(w http.ResponseWriter, r *http.Request) {
	name, err := lockName(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := decodeLockRequest(w, r, false)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	l, err := s.locks.Acquire(name, req.Key, req.Requestor)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, lockReply{
		lockView: viewOf(name, l),
		Response: fmt.Sprintf("lock for %s acquired by %s", name, req.Requestor),
	})
}

// handleUnlock handles DELETE /lock/{name}.
func (s *server) handleUnlock(w http.ResponseWriter, r *http.Request) {
	name, err := lockName(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := decodeLockRequest(w, r, true)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	l, released, err := s.locks.Release(name, req.Key, req.Requestor, req.All)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var msg string
	switch {
	case released == 0 && l.free():
		msg = fmt.Sprintf("lock for %s was not held; nothing to release", name)
	case released == 0:
		msg = fmt.Sprintf("%s holds no count of %s; nothing released, still held by %s", req.Requestor, name, l.holdersString())
	case l.free():
		msg = fmt.Sprintf("lock for %s released by %s; it is now free", name, req.Requestor)
	default:
		msg = fmt.Sprintf("lock for %s released by %s; still held by %s", name, req.Requestor, l.holdersString())
	}
	s.writeJSON(w, http.StatusOK, lockReply{lockView: viewOf(name, l), Response: msg})
}

// lockName returns the lock name in r's path, unescaped.
func lockName(r *http.Request) (string, error) {
	name, err := url.PathUnescape(mux.Vars(r)["name"])
	switch {
	case err != nil:
		return "", fmt.Errorf("%w: the lock name is not valid URL encoding (%v); write \"/\" as %%2F and \"%%\" as %%25", errBadRequest, err)
	case !utf8.ValidString(name):
		return "", fmt.Errorf("%w: the lock name is not valid UTF-8", errBadRequest)
	case len(name) > maxFieldBytes:
		return "", fmt.Errorf("%w: the lock name is %d bytes long; the limit is %d", errBadRequest, len(name), maxFieldBytes)
	}
	return name, nil
}

// lockRequest is the JSON body of PUT and DELETE /lock/{name}.
type lockRequest struct {
	Key       string
	Requestor string // lock_by, or one of its aliases; defaults to Key
	All       bool   // DELETE only: release every count of Requestor
}

// requestorFields are the names a body may give the requestor: the original
// README says lock_by, the original server read requestor and the original
// resource sends locked_by.
var requestorFields = []string{"lock_by", "locked_by", "requestor"}

// decodeLockRequest reads and checks the body of a PUT (isDelete false) or
// DELETE. Unknown fields are refused so that a misspelt one is not ignored.
func decodeLockRequest(w http.ResponseWriter, r *http.Request, isDelete bool) (lockRequest, error) {
	fields, err := decodeObject(w, r)
	if err != nil {
		return lockRequest{}, err
	}
	allowed := append([]string{"key"}, requestorFields...)
	if isDelete {
		allowed = append(allowed, "all")
	}
	for _, f := range slices.Sorted(maps.Keys(fields)) {
		if !slices.Contains(allowed, f) {
			return lockRequest{}, fmt.Errorf("%w: unknown field %q in the body; %s /lock/<name> accepts %s",
				errBadRequest, f, r.Method, joinList(quoted(allowed), "and"))
		}
	}

	var req lockRequest
	if err := stringField(fields, "key", &req.Key); err != nil {
		return lockRequest{}, err
	}
	if req.Key == "" {
		return lockRequest{}, fmt.Errorf("%w: the body needs a non-empty \"key\" string, e.g. %s", errBadRequest, bodyExample)
	}
	from := ""
	for _, f := range requestorFields {
		var v string
		if err := stringField(fields, f, &v); err != nil {
			return lockRequest{}, err
		}
		if v == "" {
			continue // absent, null or empty: the original treated all three as "use the key"
		}
		if req.Requestor != "" && v != req.Requestor {
			return lockRequest{}, fmt.Errorf("%w: %q is %q but %q is %q; they name the same thing, send one of them",
				errBadRequest, from, req.Requestor, f, v)
		}
		req.Requestor, from = v, f
	}
	if req.Requestor == "" {
		req.Requestor = req.Key
	}
	if raw, ok := fields["all"]; ok {
		if err := json.Unmarshal(raw, &req.All); err != nil {
			return lockRequest{}, fmt.Errorf("%w: \"all\" must be true or false, e.g. {\"key\": \"prod-cf\", \"all\": true}", errBadRequest)
		}
	}
	for _, f := range []struct{ name, value string }{{"key", req.Key}, {"lock_by", req.Requestor}} {
		if len(f.value) > maxFieldBytes {
			return lockRequest{}, fmt.Errorf("%w: %q is %d bytes long; the limit is %d", errBadRequest, f.name, len(f.value), maxFieldBytes)
		}
	}
	return req, nil
}

// decodeObject reads r's body as exactly one JSON object.
func decodeObject(w http.ResponseWriter, r *http.Request) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	var fields map[string]json.RawMessage
	err := dec.Decode(&fields)
	trailing := false
	if err == nil {
		// Only white space may follow the object.
		if _, err = dec.Token(); err == io.EOF {
			err = nil
		} else {
			trailing = true
		}
	}
	var tooLarge *http.MaxBytesError
	var wrongType *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooLarge):
		return nil, fmt.Errorf("%w: the body is over %d bytes; a lock request is a small JSON object such as %s",
			errBodyTooLarge, maxBodyBytes, bodyExample)
	case trailing:
		return nil, fmt.Errorf("%w: there is data after the JSON object; send exactly one object, e.g. %s", errBadRequest, bodyExample)
	case errors.Is(err, io.EOF):
		return nil, fmt.Errorf("%w: the request has no body; send a JSON object such as %s", errBadRequest, bodyExample)
	case errors.As(err, &wrongType), err == nil && fields == nil:
		return nil, fmt.Errorf("%w: the body must be a JSON object such as %s", errBadRequest, bodyExample)
	case err != nil:
		return nil, fmt.Errorf("%w: the body is not valid JSON (%v); send an object such as %s", errBadRequest, err, bodyExample)
	}
	return fields, nil
}

// stringField sets *dst to the string in fields[name]. An absent or null
// field leaves *dst alone.
func stringField(fields map[string]json.RawMessage, name string, dst *string) error {
	raw, ok := fields[name]
	if !ok {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("%w: %q must be a string, e.g. %s", errBadRequest, name, bodyExample)
	}
	return nil
}

// joinList formats items as "a, b and c" (conj "and") or "a, b or c".
func joinList(items []string, conj string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " " + conj + " " + items[len(items)-1]
}

// quoted returns each of names in double quotes.
func quoted(names []string) []string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return q
}

// writeJSON encodes v before writing the header, so that an encoding
// failure can still be answered with a 500.
func (s *server) writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // notes and names hold URLs; keep & and < readable
	if err := enc.Encode(v); err != nil {
		s.log.Error("encoding reply", "err", err)
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal error: the reply could not be encoded"}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes()) // a client that went away cannot be told
}

// writeError answers err as {"error": "..."} with its status. Internal
// failures are logged in full and answered briefly: the client does not need
// our file paths.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	for _, e := range errorStatuses {
		if errors.Is(err, e.err) {
			status = e.status
			break
		}
	}
	msg := err.Error()
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.EscapedPath(), "err", err)
		switch {
		case errors.Is(err, errUncertain):
			msg = "the lock state could not be synced to disk, so this change may or may not be kept; the server is stopping to restart from its file. Check GET /lock/<name> when it is back"
		case errors.Is(err, errSave):
			msg = "the lock state could not be saved to disk, so nothing was changed; try again, and ask the operator to check the server's log"
		default:
			msg = "internal error; the server's log has the details"
		}
	}
	if rec, ok := w.(*responseRecorder); ok {
		rec.err = err
	}
	s.writeJSON(w, status, map[string]string{"error": msg})
}

// credentials are the one user allowed in when basic auth is on. Only
// hashes are kept, so comparing them takes the same time whatever the
// lengths.
type credentials struct {
	user, pass [sha256.Size]byte
}

func newCredentials(user, pass string) *credentials {
	return &credentials{user: sha256.Sum256([]byte(user)), pass: sha256.Sum256([]byte(pass))}
}

func (c *credentials) match(user, pass string) bool {
	u := sha256.Sum256([]byte(user))
	p := sha256.Sum256([]byte(pass))
	// Both comparisons always run: which half was wrong must not show.
	return subtle.ConstantTimeCompare(u[:], c.user[:])&subtle.ConstantTimeCompare(p[:], c.pass[:]) == 1
}

// requireAuth refuses every request without the right basic-auth
// credentials, unknown routes included.
func (s *server) requireAuth(next http.Handler) http.Handler {
	if s.auth == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || !s.auth.match(user, pass) {
			w.Header().Set("WWW-Authenticate", `Basic realm="locker"`)
			s.writeError(w, r, errUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// responseRecorder remembers the status and error of a reply for the log.
type responseRecorder struct {
	http.ResponseWriter
	status int
	err    error
}

func (rec *responseRecorder) WriteHeader(status int) {
	rec.status = status
	rec.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the connection.
func (rec *responseRecorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

// logRequests writes one log line per request.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &responseRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.EscapedPath()),
			slog.Int("status", rec.status),
			slog.Duration("duration", time.Since(start)),
			slog.String("remote", r.RemoteAddr),
		}
		if rec.err != nil && rec.status < 500 {
			attrs = append(attrs, slog.String("error", rec.err.Error()))
		}
		s.log.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
	})
}
