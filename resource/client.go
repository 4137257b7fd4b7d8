package resource

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// requestTimeout bounds one request that does not wait for a lock.
const requestTimeout = 30 * time.Second

// lockInfo is a lock as the locker server shows it.
type lockInfo struct {
	Name     string         `json:"name"`
	Key      string         `json:"key"`
	LockedBy map[string]int `json:"locked_by"`
	Token    uint64         `json:"token"`
	Holders  map[string]struct {
		Count     int       `json:"count"`
		Since     time.Time `json:"since"`
		ExpiresAt time.Time `json:"expires_at"`
		Note      string    `json:"note"`
	} `json:"holders"`
	Waiting []struct {
		Key       string    `json:"key"`
		Requestor string    `json:"requestor"`
		Since     time.Time `json:"since"`
	} `json:"waiting"`
}

// version is the lock's state as a Concourse version: it changes whenever
// the lock changes hands (the token) or its holders' counts change.
func (l lockInfo) version() Version {
	h := sha256.New()
	fmt.Fprintf(h, "%q\n", l.Key)
	for _, r := range slices.Sorted(maps.Keys(l.LockedBy)) {
		fmt.Fprintf(h, "%q %d\n", r, l.LockedBy[r])
	}
	return Version{Ref: fmt.Sprintf("%d:%s", l.Token, hex.EncodeToString(h.Sum(nil))[:16])}
}

// holdersString lists the holders for messages: "a (2, since 10:04:05), b (1)".
func (l lockInfo) holdersString() string {
	var parts []string
	for _, r := range slices.Sorted(maps.Keys(l.LockedBy)) {
		p := fmt.Sprintf("%s (%d", r, l.LockedBy[r])
		if h, ok := l.Holders[r]; ok {
			if !h.Since.IsZero() {
				p += ", since " + h.Since.Format(time.RFC3339)
			}
			if !h.ExpiresAt.IsZero() {
				p += ", lease until " + h.ExpiresAt.Format(time.RFC3339)
			}
			if h.Note != "" {
				p += ", " + h.Note
			}
		}
		parts = append(parts, p+")")
	}
	return strings.Join(parts, ", ")
}

// apiError is an answer other than 200 from the locker server.
type apiError struct {
	status int
	msg    string // the server's "error", or the body
}

func (e *apiError) Error() string {
	return fmt.Sprintf("locker answered %d %s: %s", e.status, http.StatusText(e.status), e.msg)
}

// retryable reports whether err may go away if the request is sent again:
// the server could not be reached, or failed on its side.
func retryable(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.status >= 500
	}
	return err != nil && !errors.Is(err, context.Canceled)
}

// client talks to one locker server.
type client struct {
	base       string // locker_uri without a trailing slash
	user, pass string
	http       *http.Client
	// idempotencyKey goes with every change the client asks for: the same
	// for all the tries of one step, so that a retry after a lost reply is
	// not counted twice.
	idempotencyKey string
}

func newClient(src Source) *client {
	return &client{
		base: strings.TrimRight(src.LockerURI, "/"),
		user: src.Username,
		pass: src.Password,
		http: &http.Client{Transport: transport(src)},
	}
}

// transport returns an HTTP transport that trusts src.CACert as well as the
// system's CAs, or trusts anything when src.SkipSSLValidation is set.
func transport(src Source) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if src.CACert != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pool.AppendCertsFromPEM([]byte(src.CACert)) // checked by Source.Validate
		t.TLSClientConfig.RootCAs = pool
	}
	if src.SkipSSLValidation {
		t.TLSClientConfig.InsecureSkipVerify = true // the user asked for it with skip_ssl_validation
	}
	return t
}

// do sends a request to the locker server and returns the body of a 200.
// Any other answer is an *apiError.
func (c *client) do(ctx context.Context, method, path string, query url.Values, body any) ([]byte, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.pass)
	}
	if c.idempotencyKey != "" && method != http.MethodGet {
		req.Header.Set("Idempotency-Key", c.idempotencyKey)
	}
	resp, err := c.http.Do(req)
	var unknownCA x509.UnknownAuthorityError
	var unverified *tls.CertificateVerificationError
	switch {
	case errors.As(err, &unknownCA) || (errors.As(err, &unverified) && errors.As(unverified.Err, &unknownCA)):
		return nil, fmt.Errorf("%w: the locker's certificate is not signed by a CA this resource trusts: set source.ca_cert to the CA's certificate (PEM), or source.skip_ssl_validation: true to trust any (not recommended)", err)
	case errors.As(err, &unverified):
		return nil, fmt.Errorf("%w: the locker's certificate does not check out: fix it, or set source.skip_ssl_validation: true to trust any (not recommended)", err)
	case err != nil:
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &apiError{status: resp.StatusCode, msg: msg}
	}
	return data, nil
}

// lockPath is the API path of the lock called name.
func lockPath(name string) string {
	return "/lock/" + url.PathEscape(name)
}

// getLock returns the lock called name, and the server's JSON for it.
func (c *client) getLock(ctx context.Context, name string) (lockInfo, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	data, err := c.do(ctx, http.MethodGet, lockPath(name), nil, nil)
	if err != nil {
		return lockInfo{}, nil, err
	}
	var l lockInfo
	if err := json.Unmarshal(data, &l); err != nil {
		return lockInfo{}, nil, fmt.Errorf("the locker's answer for %q is not a lock: %w", name, err)
	}
	return l, data, nil
}

// lockName returns the lock the source names: lock_name, or the name of
// the BOSH director at bosh_lock.
func lockName(ctx context.Context, src Source) (string, error) {
	if src.LockName != "" {
		return src.LockName, nil
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	u := strings.TrimRight(src.BoshLock, "/") + "/info"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", fmt.Errorf("source.bosh_lock: %w", err)
	}
	resp, err := (&http.Client{Transport: transport(src)}).Do(req)
	if err != nil {
		return "", fmt.Errorf("source.bosh_lock: asking the BOSH director for its name: %w (a director with a self-signed certificate needs source.ca_cert or skip_ssl_validation)", err)
	}
	defer resp.Body.Close()
	var info struct {
		Name string `json:"name"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("source.bosh_lock: GET %s answered %s", u, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&info); err != nil || info.Name == "" {
		return "", fmt.Errorf("source.bosh_lock: GET %s did not give a director name", u)
	}
	return info.Name, nil
}
