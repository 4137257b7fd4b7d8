package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/mux"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/jsonbody"
	"github.com/locker-ci/locker/internal/keyring"
)

// Who may do what. With AUTH_USER set (or a credentials file), every
// request names a credential: basic auth with its name and secret, or
// Authorization: Bearer <secret>. requireAuth finds the caller; each
// handler asks for the role it needs on the names it touches (allow).
// AUTH_USER is an admin on every name; the credentials made over the API
// (and those of the file) have the grants they were given. On an open
// server (no AUTH_USER) everyone is an admin, as ever.

var (
	errUnauthorized = errors.New("authentication required: " + advice.Auth)
	errForbidden    = errors.New("forbidden")
	errThrottled    = errors.New("too many failed logins")
)

// caller is who sent a request: a credential's name and grants.
type caller struct {
	name   string // "" on an open server
	grants []access.Grant
}

// everyone is the caller of an open server: an admin on every name.
var everyone = &caller{grants: []access.Grant{{Role: access.Admin}}}

// role returns the caller's role on the lock or pool called name.
func (c *caller) role(name string) access.Role { return access.RoleOn(c.grants, name) }

// callerKey finds a request's *caller in its context.
type callerKey struct{}

// callerOf returns who sent r (everyone, on an open server).
func callerOf(r *http.Request) *caller {
	if c, ok := r.Context().Value(callerKey{}).(*caller); ok {
		return c
	}
	return everyone
}

// allow returns nil when r's caller has role on every name in names, or
// else why not: a 403 naming the credential, the role it has on the first
// name it lacks, and the role the request needs.
func (s *server) allow(r *http.Request, role access.Role, names ...string) error {
	c := callerOf(r)
	for _, name := range names {
		if has := c.role(name); has < role {
			what := "the lock " + strconv.Quote(name)
			if name == "" {
				what = "every name"
			}
			return fmt.Errorf("%w: the credential %q has %s on %s; %s %s needs %s (an admin can grant it: POST /credentials)",
				errForbidden, c.name, roleText(has), what, r.Method, routeOf(r), role)
		}
	}
	return nil
}

// roleText says a role for a message.
func roleText(r access.Role) string {
	if r == access.None {
		return "no role"
	}
	return "the role " + r.String()
}

// routeOf returns r's route as the API writes it (/lock/{name}), or its
// path.
func routeOf(r *http.Request) string {
	if route := mux.CurrentRoute(r); route != nil {
		if tpl, err := route.GetPathTemplate(); err == nil {
			return strings.NewReplacer("{name:.+}", "<name>", "{pool:[^/]+}", "<pool>", "{credential:[^/]+}", "<credential>").Replace(tpl)
		}
	}
	return r.URL.EscapedPath()
}

// reloadCredentials reads again the credentials the store keeps into s's
// keyring.
func (s *server) reloadCredentials(ctx context.Context) error {
	return s.keys.Reload(func() (map[string]access.Credential, error) { return s.locks.Credentials(ctx) })
}

// missReloadEvery is how often at most a login that the keyring refuses
// reads the credentials again first.
const missReloadEvery = 100 * time.Millisecond

// mayReloadOnMiss reports whether a refused login may read the
// credentials again now: at most once every missReloadEvery, however
// many clients fail.
func (s *server) mayReloadOnMiss(now time.Time) bool {
	last := s.missReloadAt.Load()
	return now.UnixNano()-last >= int64(missReloadEvery) && s.missReloadAt.CompareAndSwap(last, now.UnixNano())
}

// requireAuth refuses every request without a credential the keyring
// knows, unknown routes included, and gives the others' contexts their
// caller.
func (s *server) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.keys == nil || !s.keys.Closed() || slices.Contains(openPaths, r.URL.Path) || (s.metricsOpen && r.URL.Path == "/metrics") {
			next.ServeHTTP(w, r)
			return
		}
		now := time.Now()
		addr, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			addr = r.RemoteAddr
		}
		if wait := s.keys.Throttled(addr, now); wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
			s.log.Warn("logins refused: too many failed", "remote", addr, "for", wait.Round(time.Second))
			s.writeError(w, r, fmt.Errorf("%w: %d failed logins from %s within %v; try again in %v with the right credential",
				errThrottled, keyring.Failures, addr, keyring.Window, wait.Round(time.Second)))
			return
		}
		user, secret, basic := r.BasicAuth()
		bearer, isBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if isBearer {
			secret = bearer
		}
		c, ok := s.keys.Login(user, secret, isBearer, now)
		if !ok && (basic || isBearer) && s.mayReloadOnMiss(now) {
			// Made, or rotated, on another node a moment ago: this node
			// hears of it within a heartbeat; the client need not wait.
			if err := s.reloadCredentials(r.Context()); err == nil {
				c, ok = s.keys.Login(user, secret, isBearer, now)
			}
		}
		if !ok {
			s.keys.Failed(addr, now)
			// The name tried, never the secret; the client is told the
			// same whatever the cause.
			s.log.Warn("authentication failed", "user", user, "credentials_sent", basic || isBearer,
				"remote", r.RemoteAddr, "method", r.Method, "path", r.URL.EscapedPath())
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
		if e, ok := r.Context().Value(logEntryKey{}).(*logEntry); ok {
			e.credential = c.Name
		}
		ctx := engine.WithCredential(context.WithValue(r.Context(), callerKey{}, &caller{name: c.Name, grants: c.Grants}), c.Name)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// refuseCrossOrigin refuses a change that a browser sends for a page of
// another origin: a signed-in browser sends its credentials with every
// request to this server, whichever page makes it, so another site's page
// must not be able to change a lock (or make a credential). Browsers say
// where a request comes from (Sec-Fetch-Site, Origin); curl, the CLI and
// the resource say nothing and pass, as do reads and the status page's
// own forms. LOCKER_TRUSTED_ORIGINS lets other origins in.
func (s *server) refuseCrossOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.origins.Check(r); err != nil {
			from := r.Header.Get("Origin")
			if from == "" {
				from = "Sec-Fetch-Site: " + r.Header.Get("Sec-Fetch-Site")
			}
			s.writeError(w, r, fmt.Errorf("%w: %s %s came from a page of another origin (%s), and a page of another site may not change locks here; "+
				"use Locker's own status page, the CLI or curl, or add that origin to LOCKER_TRUSTED_ORIGINS", errForbidden, r.Method, r.URL.EscapedPath(), from))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// credentialReply is a credential as GET /credentials shows it: never its
// secret, nor its hash.
type credentialReply struct {
	Name      string         `json:"name"`
	Grants    []access.Grant `json:"grants"`
	CreatedBy string         `json:"created_by,omitempty"`
	CreatedAt time.Time      `json:"created_at,omitzero"`
	ExpiresAt time.Time      `json:"expires_at,omitzero"`
	LastUsed  time.Time      `json:"last_used,omitzero"` // on the node that answers
	From      string         `json:"from"`               // "api", "file" or "AUTH_USER"
	Secret    string         `json:"secret,omitempty"`   // once, as it is made or rotated
}

// credentialExample is a body for POST /credentials, for messages.
const credentialExample = `{"name": "team-a-ci", "grants": [{"role": "lock", "prefix": "team-a/"}], "expires_in": "2160h"}`

// handleCredentials handles GET /credentials: every credential, without
// its secret or its hash.
func (s *server) handleCredentials(w http.ResponseWriter, r *http.Request) {
	err := s.manageable(r, "/credentials")
	if err == nil {
		err = s.reloadCredentials(r.Context())
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	entries := s.keys.List()
	out := make([]credentialReply, 0, len(entries))
	for _, e := range entries {
		out = append(out, credentialReply{Name: e.Name, Grants: e.Grants, CreatedBy: e.CreatedBy, CreatedAt: e.CreatedAt, ExpiresAt: e.ExpiresAt,
			LastUsed: e.LastUsed, From: e.Source})
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// manageable refuses a request to manage credentials from a caller that
// is not an admin of every name, or on a server with no AUTH_USER.
func (s *server) manageable(r *http.Request, path string) error {
	if _, err := checkQuery(r, path); err != nil {
		return err
	}
	if s.keys == nil || s.keys.Admin() == "" {
		return fmt.Errorf("%w: credentials are managed by an admin, and this server has none: set AUTH_USER and AUTH_PASS (an admin on every name) and restart it", errForbidden)
	}
	return s.allow(r, access.Admin, "")
}

// handleCreateCredential handles POST /credentials: a new credential, and
// its secret, shown this once.
func (s *server) handleCreateCredential(w http.ResponseWriter, r *http.Request) {
	if err := s.manageable(r, "/credentials"); err != nil {
		s.writeError(w, r, err)
		return
	}
	c, err := decodeCredential(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.ownedByFile(c.Name); err != nil {
		s.writeError(w, r, err)
		return
	}
	secret, hash := access.NewSecret()
	c.Hash, c.CreatedBy, c.CreatedAt = hash, callerOf(r).name, s.locks.Now()
	if err := s.locks.CreateCredential(r.Context(), c); err != nil {
		s.writeError(w, r, err)
		return
	}
	_ = s.reloadCredentials(r.Context())
	s.writeJSON(w, r, http.StatusCreated, credentialReply{Name: c.Name, Grants: c.Grants, CreatedBy: c.CreatedBy, CreatedAt: c.CreatedAt,
		ExpiresAt: c.ExpiresAt, From: "api", Secret: secret})
}

// ownedByFile refuses to change a credential the credentials file or
// AUTH_USER defines: the file, or the environment, is where it changes.
func (s *server) ownedByFile(name string) error {
	switch s.keys.Source(name) {
	case keyring.FromEnv:
		return fmt.Errorf("%w: %q is AUTH_USER, which the server's environment sets; change it there", errBadRequest, name)
	case keyring.FromFile:
		return fmt.Errorf("%w: %q comes from the credentials file (LOCKER_CREDENTIALS_FILE); change it there and send the server SIGHUP", errBadRequest, name)
	}
	return nil
}

// handleDeleteCredential handles DELETE /credentials/{credential}: the
// credential is revoked at once.
func (s *server) handleDeleteCredential(w http.ResponseWriter, r *http.Request) {
	name, err := credentialName(r)
	if err == nil {
		err = s.manageable(r, "/credentials/<credential>")
	}
	if err == nil {
		err = s.ownedByFile(name)
	}
	if err == nil {
		err = s.locks.DeleteCredential(r.Context(), name, callerOf(r).name)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	_ = s.reloadCredentials(r.Context())
	s.writeJSON(w, r, http.StatusOK, map[string]string{"name": name, "response": "credential " + name + " revoked; its secret is refused from now on"})
}

// handleRotateCredential handles POST /credentials/{credential}/rotate: a
// new secret, shown this once; the old one is refused from now on.
func (s *server) handleRotateCredential(w http.ResponseWriter, r *http.Request) {
	name, err := credentialName(r)
	if err == nil {
		err = s.manageable(r, "/credentials/<credential>/rotate")
	}
	if err == nil {
		err = s.ownedByFile(name)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	secret, hash := access.NewSecret()
	c, err := s.locks.RotateCredential(r.Context(), name, hash, callerOf(r).name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	_ = s.reloadCredentials(r.Context())
	s.writeJSON(w, r, http.StatusOK, credentialReply{Name: c.Name, Grants: c.Grants, CreatedBy: c.CreatedBy, CreatedAt: c.CreatedAt,
		ExpiresAt: c.ExpiresAt, From: "api", Secret: secret})
}

// credentialName returns the credential's name in r's path.
func credentialName(r *http.Request) (string, error) {
	name, err := url.PathUnescape(mux.Vars(r)["credential"])
	if err == nil {
		err = access.CheckName(name)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %v", errBadRequest, err)
	}
	return name, nil
}

// decodeCredential reads POST /credentials's body: a name, grants and,
// if it expires, expires_in.
func decodeCredential(w http.ResponseWriter, r *http.Request) (access.Credential, error) {
	fields, _, err := jsonbody.Read(w, r, maxBodyBytes, credentialExample, false)
	if err != nil {
		return access.Credential{}, err
	}
	if f, ok := jsonbody.FirstUnknown(fields, []string{"name", "grants", "expires_in"}); ok {
		return access.Credential{}, fmt.Errorf("%w: unknown field %q in the body; POST /credentials accepts \"name\", \"grants\" and \"expires_in\", e.g. %s", errBadRequest, f, credentialExample)
	}
	var c access.Credential
	if err := jsonbody.String(fields, "name", credentialExample, &c.Name); err != nil {
		return c, err
	}
	if err := access.CheckName(c.Name); err != nil {
		return c, fmt.Errorf("%w: %v", errBadRequest, err)
	}
	if raw, ok := fields["grants"]; ok {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c.Grants); err != nil {
			return c, fmt.Errorf("%w: \"grants\" is a list of {\"role\": read, lock, operate or admin, \"prefix\": the names it covers}, e.g. %s (%v)", errBadRequest, credentialExample, err)
		}
	}
	if err := access.CheckGrants(c.Grants); err != nil {
		return c, fmt.Errorf("%w: %v", errBadRequest, err)
	}
	expiresIn, err := jsonbody.Duration(fields, "expires_in", false)
	if err != nil {
		return c, err
	}
	if expiresIn > 0 {
		c.ExpiresAt = time.Now().UTC().Add(expiresIn).Truncate(time.Millisecond)
	}
	return c, nil
}

// mayGiveBack returns nil when r's caller may give back a hold on the
// lock called name: it may lock the lock, or a pool the lock is a member
// of (a claimed member goes back as an ordinary lock).
func (s *server) mayGiveBack(r *http.Request, names ...string) error {
	err := s.allow(r, access.Lock, names...)
	if err == nil {
		return nil
	}
	pools, perr := s.locks.Pools()
	if perr != nil {
		return err
	}
	c := callerOf(r)
	for _, name := range names {
		ok := c.role(name) >= access.Lock
		for pool, p := range pools {
			ok = ok || slices.Contains(p.Members, name) && c.role(pool) >= access.Lock
		}
		if !ok {
			return err
		}
	}
	return nil
}

// mayRelease returns nil when r's caller may give back the locks named
// (force: free them whoever holds them, which needs operate).
func (s *server) mayRelease(r *http.Request, force bool, names ...string) error {
	if force {
		return s.allow(r, access.Operate, names...)
	}
	return s.mayGiveBack(r, names...)
}

// watchCredentials keeps the keyring up to date until ctx is done: the
// stored credentials read again when another node changed one, the
// credentials file read again on SIGHUP (a file that does not read
// leaves the ones before in place, and the log says why).
func (s *server) watchCredentials(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	if s.credentialsFile != "" {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.credentialsChanged:
			if err := s.reloadCredentials(ctx); err != nil && ctx.Err() == nil { // stopping is no failure
				s.log.Error("reading the credentials again", "err", err)
			}
		case <-hup:
			file, err := keyring.ReadFile(s.credentialsFile)
			if err != nil {
				s.log.Error("the credentials file was not read again; the credentials it had before stay", "err", err)
				continue
			}
			s.keys.SetFile(file)
			s.log.Info("the credentials file was read again", "credentials", len(file))
		}
	}
}
