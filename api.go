package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/config"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/txn"
)

// Errors about the request itself; errorStatuses maps them to HTTP statuses.
var (
	errBadRequest   = errors.New("bad request")
	errBodyTooLarge = errors.New("request body too large")
	errUnauthorized = errors.New("authentication required: " + advice.Auth)
	errNotFound     = errors.New("no such endpoint; the API is GET /locks, GET, PUT, PATCH, DELETE /lock/<name> and /locks, GET /pools, GET, PUT, DELETE /pool/<pool> and PUT /pool/<pool>/claim, GET /history/<name> and GET /events, and GET / is the status page")
	errMethod       = errors.New("method not allowed")
	errNotReady     = errors.New("not ready")
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
	{errNotFound, http.StatusNotFound},
	{errMethod, http.StatusMethodNotAllowed},
	{errBodyTooLarge, http.StatusRequestEntityTooLarge},
	{errLockHeld, http.StatusLocked},
	{errKeyReused, http.StatusUnprocessableEntity},
	{errKeyBusy, http.StatusConflict},
	{errGrantEnded, http.StatusConflict},
	{errLimitDiffers, http.StatusConflict},
	{errNoPool, http.StatusNotFound},
	{errInvalid, http.StatusBadRequest},
	{errPoolChanged, http.StatusConflict},
	{errPoolTooSmall, http.StatusConflict},
	{errClientGone, statusClientClosed},
	{errShuttingDown, http.StatusServiceUnavailable},
	{errNotReady, http.StatusServiceUnavailable},
	{errDatabase, http.StatusServiceUnavailable},
	{errUncertain, http.StatusInternalServerError},
	{errSave, http.StatusInternalServerError},
}

// server answers the lock API.
type server struct {
	locks        *engine
	log          *slog.Logger
	auth         *credentials  // nil when the API is open
	maxWait      time.Duration // longer waits are cut to this
	defaultTTL   time.Duration // lease for a PUT without ttl; 0 for none
	maxTTL       time.Duration // the longest lease a request may ask for
	maxSet       int           // the most locks a request may name; 0 for config.DefaultMaxSet (maxLocks)
	writeTimeout time.Duration // how long writing a reply may take, after any wait
	streamBuffer int           // how many events a stream may fall behind before it is cut off
	metrics      *metrics.Metrics
	metricsOpen  bool // /metrics answers without credentials (LOCKER_METRICS_AUTH=false)
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
	r.HandleFunc("/events", s.handleEvents).Methods(http.MethodGet)

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
	return s.logRequests(s.requireAuth(r))
}

// allowedMethods lists the methods that router serves for req's path.
func allowedMethods(router *mux.Router, req *http.Request) []string {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPatch, http.MethodDelete} {
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
	s.writeJSON(w, r, http.StatusOK, map[string]string{"status": "ready"})
}

// notReady is /readyz's answer when the store cannot make a change
// durable: what is wrong, and that changes are refused meanwhile.
func notReady(err error) error {
	if room := new(txn.NoRoomError); errors.As(err, &room) {
		return fmt.Errorf("%w: %v on the disk that holds the state file; changes are taken again as soon as they fit; the server's log has the details", errNotReady, room)
	}
	if errors.Is(err, errDatabase) {
		return fmt.Errorf("%w: the database cannot be reached, so changes are refused until it answers; the server's log has the details", errNotReady)
	}
	return fmt.Errorf("%w: the last change could not be saved to disk, so changes are refused until a write succeeds; the server's log has the details", errNotReady)
}

// handleList handles GET /locks: the locks that are held or waited for,
// by name. With ?limit= it answers one page, and a Link header to the
// next; without, every lock, written as it is read a page at a time.
func (s *server) handleList(w http.ResponseWriter, r *http.Request) {
	page, err := decodePage(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	lw := newListingWriter(w)
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
			lw.add(l)
		}
		lw.end()
		return
	}
	err = s.locks.Each(r.Context(), page.Prefix, page.After, func(l Listed) error {
		lw.add(l)
		return lw.err
	})
	switch {
	case err == nil:
		lw.end()
	case !lw.started:
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
	if err == nil {
		_, err = checkQuery(r, "/lock/<name>")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	l, err := s.locks.Get(name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeLock(w, r, name, l, "")
}

// handleLock handles PUT /lock/{name}.
func (s *server) handleLock(w http.ResponseWriter, r *http.Request) {
	name, req, err := decodeLockRequest(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	asked, err := s.prepareAcquire(w, &req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	l, err := s.locks.Acquire(r.Context(), name, req.acquireRequest)
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
	if errors.Is(err, errLockHeld) && asked > waited {
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
	ttl, err := s.renewal(req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	l, err := s.locks.Renew(name, req.Key, req.Requestor, ttl, req.Idem)
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
	if req.Force {
		s.forceRelease(w, r, name, req.Idem)
		return
	}
	l, released, err := s.locks.Release(name, req.Key, req.Requestor, req.All, req.Idem)
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
// stuck lock. It is logged with who asked.
func (s *server) forceRelease(w http.ResponseWriter, r *http.Request, name string, idem *idemRequest) {
	old, now, err := s.locks.ForceRelease(name, forcedBy(r), idem)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	user, _, _ := r.BasicAuth()
	msg := fmt.Sprintf("lock for %s was not held; nothing to release", name)
	if !old.Free() {
		msg = fmt.Sprintf("lock for %s force-released; it was held with key %q by %s", name, old.Key, old.HoldersString())
		if !now.Replayed {
			s.log.Warn("lock force-released", "lock", name, "user", user, "remote", r.RemoteAddr,
				"key", old.Key, "holders", old.HoldersString(), "token", old.Token)
		}
	}
	s.writeLock(w, r, name, now, msg)
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
func (s *server) writeLock(w http.ResponseWriter, r *http.Request, name string, l Snapshot, response string) {
	writeView(w, name, l, nil, response)
}

// writeView answers 200 with a lockReply of l, called name: written by
// lock.AppendView, the bytes encoding/json would write for it, without
// the reflection and the maps (TestWriteViewIsEncodingJSON).
func writeView(w http.ResponseWriter, name string, l Snapshot, released *int, response string) {
	markReplay(w, l)
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
func markReplay(w http.ResponseWriter, l Snapshot) {
	if l.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
}

// writeRelease answers a DELETE as writeLock does, and says how many
// counts it gave back: a client can tell "released" from "held nothing".
func (s *server) writeRelease(w http.ResponseWriter, r *http.Request, name string, l Snapshot, released int, response string) {
	writeView(w, name, l, &released, response)
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
		case errors.Is(err, errUncertain):
			msg = "the lock state could not be synced to disk, so this change may or may not be kept; the server is stopping to restart from its file. Check GET /lock/<name> when it is back"
		case errors.Is(err, errSave):
			msg = "the lock state could not be saved to disk, so nothing was changed; try again, and ask the operator to check the server's log"
		default:
			msg = "internal error; the server's log has the details"
		}
	}
	if e, ok := r.Context().Value(logEntryKey{}).(*logEntry); ok {
		e.err = err
	}
	s.writeJSON(w, r, status, map[string]string{"error": msg})
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
		if slices.Contains(openPaths, r.URL.Path) || (s.metricsOpen && r.URL.Path == "/metrics") {
			next.ServeHTTP(w, r)
			return
		}
		user, pass, ok := r.BasicAuth()
		if !ok || !s.auth.match(user, pass) {
			// The user name tried, never the password; the client is told
			// the same whatever the cause.
			s.log.Warn("authentication failed", "user", user, "credentials_sent", ok, "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.EscapedPath())
			w.Header().Set("WWW-Authenticate", `Basic realm="locker"`)
			if r.URL.Path == "/" && strings.Contains(r.Header.Get("Accept"), "text/html") {
				// A person who cancelled the browser's prompt reads this.
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = io.WriteString(w, loginCancelled)
				return
			}
			s.writeError(w, r, errUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
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
	status int
	err    error
	route  string // the route's template, once the router matched one
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
		if e.err != nil && e.status < 500 {
			attrs = append(attrs, slog.String("error", e.err.Error()))
		}
		s.log.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
	})
}
