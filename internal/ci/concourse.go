package ci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

// Concourse looks builds up in a Concourse (GET /api/v1/builds/<id>), as
// a user that can see the teams' builds: its token is fetched from
// Concourse's own token endpoint, as fly does, and fetched again before it
// expires or when Concourse refuses it.
type Concourse struct {
	base, user, password string
	client               *http.Client
	now                  func() time.Time

	mu      sync.Mutex // guards token and renewAt
	token   string
	renewAt time.Time // a while before it expires
}

// NewConcourse returns the Concourse at base (https://ci.example.com),
// signed in as user with password.
func NewConcourse(base, user, password string) *Concourse {
	return &Concourse{base: strings.TrimRight(base, "/"), user: user, password: password,
		client: &http.Client{Timeout: 10 * time.Second}, now: time.Now}
}

// String says which CI system, for logs and messages.
func (c *Concourse) String() string { return "Concourse at " + c.base }

// renewBefore is how long before a token expires it is fetched again (a
// tenth of its life, for a token that lives less than 100 minutes).
const renewBefore = 10 * time.Minute

// Outcome returns the status of build id: pending, started, succeeded,
// failed, errored or aborted; lock.Gone when Concourse does not know it.
func (c *Concourse) Outcome(ctx context.Context, id int64) (string, error) {
	for try := 0; ; try++ {
		token, err := c.bearer(ctx)
		if err != nil {
			return "", err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/builds/"+strconv.FormatInt(id, 10), nil)
		if err != nil {
			return "", err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.client.Do(req)
		if err != nil {
			return "", fmt.Errorf("looking up build %d: %w", id, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			var b struct {
				Status string `json:"status"`
			}
			if err := json.Unmarshal(body, &b); err != nil || b.Status == "" {
				return "", fmt.Errorf("looking up build %d: Concourse answered 200 without a build's status: %.200q", id, body)
			}
			return b.Status, nil
		case resp.StatusCode == http.StatusNotFound:
			return lock.Gone, nil // its pipeline destroyed, or never there
		case resp.StatusCode == http.StatusUnauthorized && try == 0:
			c.forget(token) // expired or revoked early: sign in again, once
			continue
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return "", fmt.Errorf("looking up build %d: Concourse answered %d: LOCKER_CONCOURSE_USER %q may not see that build's team "+
				"(a Concourse user that can see every team's builds is needed, not a client-credentials one)", id, resp.StatusCode, c.user)
		default:
			return "", fmt.Errorf("looking up build %d: Concourse answered %d: %.200q", id, resp.StatusCode, body)
		}
	}
}

// bearer returns a token that is good for a while yet, fetching one when
// there is none.
func (c *Concourse) bearer(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && c.now().Before(c.renewAt) {
		return c.token, nil
	}
	form := url.Values{
		"grant_type": {"password"},
		"username":   {c.user},
		"password":   {c.password},
		"scope":      {"openid profile email federated:id groups"},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/sky/issuer/token", strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("fly", "Zmx5") // the client fly signs in as; Concourse knows it
	resp, err := c.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("signing in to Concourse: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("signing in to Concourse as %q: it answered %d: %.200q; check LOCKER_CONCOURSE_USER and LOCKER_CONCOURSE_PASSWORD", c.user, resp.StatusCode, body)
	}
	var t struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &t); err != nil || t.AccessToken == "" {
		return "", errors.New("signing in to Concourse: its answer has no access_token")
	}
	life := time.Duration(t.ExpiresIn) * time.Second
	c.token, c.renewAt = t.AccessToken, c.now().Add(life-min(renewBefore, life/10))
	return c.token, nil
}

// forget drops token, if it is still the one kept.
func (c *Concourse) forget(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == token {
		c.token = ""
	}
}
