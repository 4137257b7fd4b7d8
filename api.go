package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/locker-ci/locker/internal/ci"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/jsonbody"
	"github.com/locker-ci/locker/internal/keyring"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/stream"
	"github.com/locker-ci/locker/internal/txn"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Errors about the request itself; errorStatuses maps them to HTTP statuses.
var (
	errBadRequest = errors.New("bad request")
	errNotFound   = errors.New("no such endpoint; the API is GET /locks, GET, PUT, PATCH, DELETE /lock/<name> and /locks, GET /pools, GET, PUT, DELETE /pool/<pool> and PUT /pool/<pool>/claim, GET /history and /history/<name>, GET /events, GET and POST /credentials, DELETE /credentials/<name> and POST /credentials/<name>/rotate, and GET / is the status page")
	errMethod     = errors.New("method not allowed")
	errNotReady   = errors.New("not ready")
)

// statusClientClosed is logged when a client leaves before its answer, as
// nginx does; no client ever reads it.
const statusClientClosed = 499

// errorStatuses maps each error a handler can return to its HTTP status.
// An error that is none of these is a bug and answers 500.
var errorStatuses = []struct {
	err    error
	status int
}{
	{errBadRequest, http.StatusBadRequest},
	{errUnauthorized, http.StatusUnauthorized},
	{errForbidden, http.StatusForbidden},
	{errThrottled, http.StatusTooManyRequests},
	{engine.ErrCredentialExists, http.StatusConflict},
	{engine.ErrNoCredential, http.StatusNotFound},
	{errNotFound, http.StatusNotFound},
	{errMethod, http.StatusMethodNotAllowed},
	{jsonbody.ErrInvalid, http.StatusBadRequest},
	{jsonbody.ErrTooLarge, http.StatusRequestEntityTooLarge},
	{engine.ErrHeld, http.StatusLocked},
	{engine.ErrPrecondition, http.StatusPreconditionFailed},
	{engine.ErrKeyReused, http.StatusUnprocessableEntity},
	{engine.ErrKeyBusy, http.StatusConflict},
	{engine.ErrGrantEnded, http.StatusConflict},
	{engine.ErrLimitDiffers, http.StatusConflict},
	{engine.ErrNoPool, http.StatusNotFound},
	{engine.ErrInvalid, http.StatusBadRequest},
	{engine.ErrPoolChanged, http.StatusConflict},
	{engine.ErrPoolTooSmall, http.StatusConflict},
	{engine.ErrRemoved, http.StatusConflict},
	{engine.ErrNoWaiter, http.StatusNotFound},
	{engine.ErrClientGone, statusClientClosed},
	{engine.ErrClosed, http.StatusServiceUnavailable},
	{errNotReady, http.StatusServiceUnavailable},
	{engine.ErrUnavailable, http.StatusServiceUnavailable},
	{engine.ErrDiskUncertain, http.StatusInternalServerError},
	{engine.ErrNotSaved, http.StatusInternalServerError},
}

// server answers the lock API.
type server struct {
	locks *engine.Engine
	hub   *stream.Hub // the events of every change, as they commit (GET /events)
	log   *slog.Logger
	keys  *keyring.Keyring // the credentials it knows; nil, or one that is not Closed, when the API is open
	// credentialsFile is LOCKER_CREDENTIALS_FILE, read again on SIGHUP;
	// credentialsChanged is told when another node changed a credential.
	credentialsFile    string
	credentialsChanged <-chan struct{}
	missReloadAt       atomic.Int64  // when a refused login last read the credentials again (Unix ns)
	maxWait            time.Duration // longer waits are cut to this
	defaultTTL         time.Duration // lease for a PUT without ttl; 0 for none
	maxTTL             time.Duration // the longest lease a request may ask for
	maxSet             int           // the most locks a request may name; 0 for config.DefaultMaxSet (maxLocks)
	writeTimeout       time.Duration // how long writing a reply may take, after any wait
	streamBuffer       int           // how many events a stream may fall behind before it is cut off
	metrics            *metrics.Metrics
	metricsOpen        bool // /metrics answers without credentials (LOCKER_METRICS_AUTH=false)
	// builds ends the holds bound to CI builds that ended; nil without
	// LOCKER_CONCOURSE_URL.
	builds *ci.Watcher
	// origins refuses changes that browsers send for other sites' pages
	// (LOCKER_TRUSTED_ORIGINS are let in).
	origins *http.CrossOriginProtection
}

// routes returns the whole API, wrapped in authentication and request logs.
func (s *server) routes() http.Handler {
	r := mux.NewRouter()
	// Lock names are taken from the path as sent, then unescaped, so that
	// "a%2Fb" names the lock "a/b" and nothing is cleaned away.
	r.UseEncodedPath()
	r.SkipClean(true)

	// A single lock's routes come first: the router tries routes in
	// order, running each one's regular expression, and these carry
	// nearly all of the traffic. No other path begins with /lock/.
	r.HandleFunc("/lock/{name:.+}", s.handleGet).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/lock/{name:.+}", s.handleLock).Methods(http.MethodPut)
	r.HandleFunc("/lock/{name:.+}", s.handleRenew).Methods(http.MethodPatch)
	r.HandleFunc("/lock/{name:.+}", s.handleUnlock).Methods(http.MethodDelete)
	r.HandleFunc("/history/{name:.+}", s.handleHistory).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/history", s.handleEveryHistory).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/events", s.handleEvents).Methods(http.MethodGet)
	r.HandleFunc("/waiters/{id}", s.handleRemoveWaiter).Methods(http.MethodDelete)

	// Health checks, which requireAuth lets through.
	r.HandleFunc("/healthz", s.handleHealth).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/readyz", s.handleReady).Methods(http.MethodGet, http.MethodHead)
	if s.metrics != nil {
		r.Handle("/metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{})).Methods(http.MethodGet, http.MethodHead)
	}
	// HEAD answers as GET without the body (net/http drops it).
	r.HandleFunc("/", s.handleStatus).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/locks", s.handleList).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/locks", s.handleLockSet).Methods(http.MethodPut)
	r.HandleFunc("/locks", s.handleRenewSet).Methods(http.MethodPatch)
	r.HandleFunc("/locks", s.handleUnlockSet).Methods(http.MethodDelete)
	r.HandleFunc("/pools", s.handlePools).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/pool/{pool:[^/]+}", s.handlePool).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/pool/{pool:[^/]+}", s.handleSetPool).Methods(http.MethodPut)
	r.HandleFunc("/pool/{pool:[^/]+}", s.handleDeletePool).Methods(http.MethodDelete)
	r.HandleFunc("/pool/{pool:[^/]+}/claim", s.handleClaim).Methods(http.MethodPut)
	r.HandleFunc("/credentials", s.handleCredentials).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/credentials", s.handleCreateCredential).Methods(http.MethodPost)
	r.HandleFunc("/credentials/{credential:[^/]+}", s.handleDeleteCredential).Methods(http.MethodDelete)
	r.HandleFunc("/credentials/{credential:[^/]+}/rotate", s.handleRotateCredential).Methods(http.MethodPost)

	// The request log and the metrics learn the route's template, never
	// the path: a lock's name must not become a label.
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if e, ok := req.Context().Value(logEntryKey{}).(*logEntry); ok {
				if tpl, err := mux.CurrentRoute(req).GetPathTemplate(); err == nil {
					e.route = tpl
				}
			}
			next.ServeHTTP(w, req)
		})
	})
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, errNotFound)
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		allowed := allowedMethods(r, req)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		s.writeError(w, req, fmt.Errorf("%w: %s %s; this path takes %s",
			errMethod, req.Method, req.URL.EscapedPath(), joinList(allowed, "or")))
	})
	return s.logRequests(s.refuseCrossOrigin(s.requireAuth(r)))
}

// allowedMethods lists the methods that router serves for req's path.
func allowedMethods(router *mux.Router, req *http.Request) []string {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := req.Clone(req.Context())
		probe.Method = m
		var match mux.RouteMatch
		if router.Match(probe, &match) && match.MatchErr == nil {
			allowed = append(allowed, m)
		}
	}
	return allowed
}

// openPaths are served without authentication: load balancers and
// monit check them without credentials, and they tell nothing of locks.
var openPaths = []string{"/healthz", "/readyz"}

// handleHealth handles GET /healthz: the process serves.
func (s *server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if _, err := checkQuery(r, "/healthz"); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
}

// handleReady handles GET /readyz: 200 when the store can make a change
// durable, 503 with the reason when it cannot (the details go to the log).
func (s *server) handleReady(w http.ResponseWriter, r *http.Request) {
	if _, err := checkQuery(r, "/readyz"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.locks.Ready(); err != nil {
		s.log.Warn("not ready", "err", err)
		s.writeError(w, r, notReady(err))
		return
	}
	reply := map[string]string{"status": "ready"}
	if s.builds != nil {
		// Ready all the same: locks are served; only holds bound to
		// builds wait to end.
		reply["builds"] = cmp.Or(s.builds.Status(), "builds are looked up")
	}
	s.writeJSON(w, r, http.StatusOK, reply)
}

// notReady is /readyz's answer when the store cannot make a change
// durable: what is wrong, and that changes are refused meanwhile.
func notReady(err error) error {
	if room := new(txn.NoRoomError); errors.As(err, &room) {
		return fmt.Errorf("%w: %v on the disk that holds the state file; changes are taken again as soon as they fit; the server's log has the details", errNotReady, room)
	}
	if errors.Is(err, txn.ErrStandby) {
		return fmt.Errorf("%w: %w", errNotReady, txn.ErrStandby)
	}
	if errors.Is(err, engine.ErrUnavailable) {
		return fmt.Errorf("%w: the database cannot be reached, so changes are refused until it answers; the server's log has the details", errNotReady)
	}
	return fmt.Errorf("%w: the last change could not be saved to disk, so changes are refused until a write succeeds; the server's log has the details", errNotReady)
}

// replyBuffers recycles the buffers replies are encoded into.
var replyBuffers = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 1024)) }}

// writeJSON answers v as JSON with status. It encodes v before writing
// the header, so that an encoding failure can still be answered with a 500.
func (s *server) writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	buf := replyBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 { // a listing of many locks is not kept
			replyBuffers.Put(buf)
		}
	}()
	buf.Reset()
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false) // notes and names hold URLs; keep & and < readable
	if err := enc.Encode(v); err != nil {
		s.log.Error("encoding reply", "method", r.Method, "path", r.URL.EscapedPath(), "err", err)
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
	if status == http.StatusInternalServerError {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.EscapedPath(), "err", err)
		switch {
		case errors.Is(err, engine.ErrDiskUncertain):
			msg = "the lock state could not be synced to disk, so this change may or may not be kept; the server is stopping to restart from its file. Check GET /lock/<name> when it is back"
		case errors.Is(err, engine.ErrNotSaved):
			msg = "the lock state could not be saved to disk, so nothing was changed; try again, and ask the operator to check the server's log"
		default:
			msg = "internal error; the server's log has the details"
		}
	}
	if e, ok := r.Context().Value(logEntryKey{}).(*logEntry); ok {
		e.err = err
	}
	if pe := (*engine.PreconditionError)(nil); errors.As(err, &pe) {
		s.writePrecondition(w, r, pe)
		return
	}
	s.writeJSON(w, r, status, map[string]string{"error": msg})
}

// loginCancelled is the status page's answer to a browser without the
// credentials: what a person sees after cancelling the login prompt.
const loginCancelled = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Locker: sign in to see the locks</title></head>
<body style="font: 16px/1.45 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem">
<h1>Locker</h1>
<p>This server asks for a username and password before it shows its locks.
Reload the page to be asked again. They are the server's <code>AUTH_USER</code> and <code>AUTH_PASS</code>;
the person who runs it has them.</p>
</body></html>
`

// logEntry is what the request log learns of a reply: its status, from
// the ResponseWriter, and its error, from writeError through the request's
// context.
type logEntry struct {
	http.ResponseWriter
	status     int
	err        error
	route      string // the route's template, once the router matched one
	credential string // who sent it, once authenticated
}

// logEntryKey finds a request's *logEntry in its context.
type logEntryKey struct{}

func (e *logEntry) WriteHeader(status int) {
	e.status = status
	e.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the connection.
func (e *logEntry) Unwrap() http.ResponseWriter { return e.ResponseWriter }

// logRequests writes one log line per request.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		e := &logEntry{ResponseWriter: w, status: http.StatusOK, route: "other"}
		next.ServeHTTP(e, r.WithContext(context.WithValue(r.Context(), logEntryKey{}, e)))
		s.metrics.Request(e.route, r.Method, e.status, time.Since(start))
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.EscapedPath()),
			slog.Int("status", e.status),
			slog.Duration("duration", time.Since(start)),
			slog.String("remote", r.RemoteAddr),
		}
		if e.credential != "" {
			attrs = append(attrs, slog.String("credential", e.credential))
		}
		if e.err != nil && e.status < 500 {
			attrs = append(attrs, slog.String("error", e.err.Error()))
		}
		s.log.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
	})
}

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
