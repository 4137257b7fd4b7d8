package testutil

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Concourse answers as a Concourse web node does the two requests Locker
// makes of it (as measured against a real `concourse web`): a token
// (POST /sky/issuer/token, as fly signs in) and a build (GET
// /api/v1/builds/<id> with that token). Builds the test has not set are
// unknown (404, with an empty body). It counts what it was asked.
type Concourse struct {
	*httptest.Server
	User, Password string

	mu        sync.Mutex
	builds    map[int64]string // build ID -> status
	lookups   map[int64]int
	signIns   int
	tokens    map[string]time.Time // token -> when it expires
	expiresIn int                  // seconds, for the tokens it hands out
	refuse    int                  // a status every build lookup answers (403: a client-credentials token), or 0
	delay     time.Duration        // how long each answer waits
}

// NewConcourse starts a Concourse whose user is "locker" with password
// "s3cret", until the test ends.
func NewConcourse(tb testing.TB) *Concourse {
	c := &Concourse{User: "locker", Password: "s3cret", builds: map[int64]string{}, lookups: map[int64]int{},
		tokens: map[string]time.Time{}, expiresIn: 86399}
	c.Server = httptest.NewServer(http.HandlerFunc(c.serve))
	tb.Cleanup(c.Server.Close)
	return c
}

// SetBuild sets a build's status: pending, started, succeeded, failed,
// errored or aborted; "" forgets it (404, as a destroyed pipeline's).
func (c *Concourse) SetBuild(id int64, status string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if status == "" {
		delete(c.builds, id)
		return
	}
	c.builds[id] = status
}

// Lookups returns how many times build id was asked for.
func (c *Concourse) Lookups(id int64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookups[id]
}

// SignIns returns how many tokens it handed out.
func (c *Concourse) SignIns() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.signIns
}

// TokensLast makes the tokens it hands out from now on expire after d.
func (c *Concourse) TokensLast(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expiresIn = int(d.Seconds())
}

// Refuse makes every build lookup answer status (401, 403), or answer as
// usual again with 0.
func (c *Concourse) Refuse(status int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refuse = status
}

// Delay makes every answer wait d.
func (c *Concourse) Delay(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.delay = d
}

func (c *Concourse) serve(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	delay := c.delay
	c.mu.Unlock()
	time.Sleep(delay)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/sky/issuer/token":
		user, pass, ok := r.BasicAuth()
		if !ok || user != "fly" || pass != "Zmx5" || r.ParseForm() != nil || r.PostForm.Get("grant_type") != "password" ||
			r.PostForm.Get("username") != c.User || r.PostForm.Get("password") != c.Password {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"invalid_client","error_description":"Invalid client credentials."}`)
			return
		}
		c.signIns++
		token := "opaque-" + strconv.Itoa(c.signIns)
		c.tokens[token] = time.Now().Add(time.Duration(c.expiresIn) * time.Second)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": token, "token_type": "bearer", "expires_in": c.expiresIn})
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/api/v1/builds/"):
		id, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/api/v1/builds/"), 10, 64)
		if err != nil {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		c.lookups[id]++
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if expires, ok := c.tokens[token]; !ok || time.Now().After(expires) {
			w.WriteHeader(http.StatusUnauthorized) // a private pipeline's build, without a good token
			return
		}
		if c.refuse != 0 {
			w.WriteHeader(c.refuse)
			return
		}
		status, ok := c.builds[id]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%d,"team_name":"main","name":"3","status":%q,"api_url":"/api/v1/builds/%d","job_name":"hold-lock","pipeline_id":2,"pipeline_name":"locker-e2e","start_time":1796664604,"created_by":"test"}`,
			id, status, id)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}
