package client

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/locker-ci/locker/internal/advice"
)

// RequestTimeout bounds one request that does not wait for a lock: a
// request that has had no answer by then is given up (and, for a change,
// sent again with its Idempotency-Key).
const RequestTimeout = 30 * time.Second

// maxReplyBytes bounds a reply read into memory: a listing of 100,000
// locks is about 20 MB.
const maxReplyBytes = 64 << 20

// Config says which server to talk to and how.
type Config struct {
	URL            string // e.g. https://locker.example.com:8910
	User, Password string // basic auth; no auth when User is ""
	CACert         []byte // PEM certificates trusted besides the system's
	Insecure       bool   // trust any certificate (not recommended)
	// TLSAdvice ends the message of a certificate error: how the user of
	// the program trusts the server, in the words of its own settings,
	// e.g. "pass --ca-cert FILE". "" says it in general terms.
	TLSAdvice string
	// Rewrite rewrites each message from the server (an Error's Message,
	// a notice in the stream of events) before the caller sees it: a
	// program with settings of its own can say the server's advice ("send
	// ?wait=5m to wait for it") in their words. Nil says it in this
	// package's ("set Options.Wait to wait for it").
	Rewrite func(msg string) string
}

// goTerms say the server's advice in the words of this package.
var goTerms = advice.Terms{
	advice.Wait:        "set Options.Wait to wait for it",
	advice.WaitForThem: "set Options.Wait to wait for them",
	advice.Take:        "take it again with Lock",
	advice.ReleaseKey:  "Request.Key must be the key the lock was taken with",
	advice.Auth:        "set Config.User and Config.Password to a credential's name and secret (or the server's AUTH_USER and AUTH_PASS)",
	advice.RenewTTL:    `the server has no default lease (LOCKER_DEFAULT_TTL), so set Request.TTL, e.g. "10m"`,
	advice.ShorterTTL:  "ask for a shorter Request.TTL, and renew it with Renew",
	advice.Limit:       "set Request.Limit to ",
	advice.Pools:       "Pools lists them, and SetPool makes one",
	advice.Resume:      "call Follow again with the ID it returned to go on",
}

// Client talks to one locker server. It is safe for concurrent use.
type Client struct {
	base       string // the URL without a trailing slash
	user, pass string
	http       *http.Client
	tlsAdvice  string
	rewrite    func(string) string
}

// defaultTLSAdvice says how to trust a server whose certificate is not
// trusted, when the program using the client does not say it better.
const defaultTLSAdvice = "give the client the certificate of the CA that signed it (Config.CACert)"

// New returns a client for cfg, or an error that says what is wrong with it.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("the locker's URL must be http:// or https:// and a host, e.g. https://locker.example.com:8910 (got %q)", cfg.URL)
	}
	t, err := NewTransport(cfg.CACert, cfg.Insecure)
	if err != nil {
		return nil, err
	}
	c := &Client{base: strings.TrimRight(cfg.URL, "/"), user: cfg.User, pass: cfg.Password,
		http: &http.Client{Transport: t}, tlsAdvice: cmp.Or(cfg.TLSAdvice, defaultTLSAdvice), rewrite: cfg.Rewrite}
	if c.rewrite == nil {
		c.rewrite = goTerms.Replace
	}
	return c, nil
}

// NewTransport returns an HTTP transport that trusts the certificates in
// caCert (PEM) as well as the system's CAs, or any certificate when
// insecure is set.
func NewTransport(caCert []byte, insecure bool) (*http.Transport, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caCert) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(caCert) {
			return nil, errors.New("the CA certificate holds no PEM certificate (it should start with -----BEGIN CERTIFICATE-----)")
		}
		t.TLSClientConfig.RootCAs = pool
	}
	t.TLSClientConfig.InsecureSkipVerify = insecure // only when the user asked for it
	return t, nil
}

// Error is an answer other than 200 from the server. A refused lock is
// Status 423 (http.StatusLocked); its Message says who holds it.
type Error struct {
	Status  int    // the HTTP status, e.g. 423 (http.StatusLocked)
	Message string // the server's "error", or its body, as Config.Rewrite leaves it
	// ended says the server answered that the grant a request sent
	// again was given has since ended (409), in its own words.
	ended bool
}

// grantEnded reports whether err is the server's answer to a request
// sent again with its Idempotency-Key that the grant it was given has
// since ended: the lock is not held, and a new request may take it.
func grantEnded(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.ended
}

// Error is the server's message; a refusal (423) needs nothing more. The
// server starts a message with what went wrong in a word or two ("bad
// request: ..."), which the status says already.
func (e *Error) Error() string {
	msg := strings.TrimPrefix(e.Message, strings.ToLower(http.StatusText(e.Status))+": ")
	if e.Status == http.StatusLocked {
		return msg
	}
	return fmt.Sprintf("the locker answered %d %s: %s", e.Status, http.StatusText(e.Status), msg)
}

// IsStatus reports whether err is the server's answer with status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// Retryable reports whether err may go away if the request is sent again:
// the server could not be reached, or failed on its side. Sent again with
// its Idempotency-Key, a change is never made twice.
func Retryable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Status >= 500
	}
	return err != nil && !errors.Is(err, context.Canceled)
}

// NewIdempotencyKey returns a random key for one change and its retries:
// no other change shares it.
func NewIdempotencyKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand does not fail on the systems Go supports
	return hex.EncodeToString(b)
}

// Do sends a request to the server's path (e.g. "/healthz") with body as
// JSON (unless nil), and returns the body of a 200; any other answer is
// an *Error. A change carries idempotencyKey, unless it is "". The other
// methods cover the API; Do is for what they do not.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body any, idempotencyKey string) ([]byte, error) {
	return c.do(ctx, method, path, query, body, withIdempotencyKey(nil, idempotencyKey))
}

// withIdempotencyKey returns header (a new one when nil) with the
// Idempotency-Key key, unless key is "".
func withIdempotencyKey(header http.Header, key string) http.Header {
	if key == "" {
		return header
	}
	header = header.Clone()
	if header == nil {
		header = http.Header{}
	}
	header.Set("Idempotency-Key", key)
	return header
}

// do is Do with the request's headers (an Idempotency-Key, an If-Match)
// in header.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body any, header http.Header) ([]byte, error) {
	resp, err := c.send(ctx, method, path, query, body, header)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return nil, fmt.Errorf("reading the answer to %s %s: %w", method, path, err)
	}
	return data, nil
}

// send sends a request and returns the response to it if it is a 200,
// for the caller to read and close; any other answer is an *Error.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, body any, header http.Header) (*http.Response, error) {
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
	for name, values := range header {
		req.Header[name] = values
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.explain(err)
	}
	if resp.StatusCode/100 == 2 { // 200, and 201 for a credential made
		return resp, nil
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return nil, fmt.Errorf("reading the answer to %s %s: %w", method, path, err)
	}
	var e struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	return nil, &Error{Status: resp.StatusCode, Message: c.say(msg),
		ended: resp.StatusCode == http.StatusConflict && strings.Contains(msg, advice.TakeAgain)}
}

// say returns a message from the server as Config.Rewrite has it.
func (c *Client) say(msg string) string { return c.rewrite(msg) }

// explain says a connection error shortly, and adds to a certificate
// error what the user can do about it.
func (c *Client) explain(err error) error {
	var unknownCA x509.UnknownAuthorityError
	var unverified *tls.CertificateVerificationError
	var dial *net.OpError
	switch {
	case errors.As(err, &dial) && dial.Op == "dial":
		return fmt.Errorf("cannot reach the locker at %s (%w)", c.base, dial.Err)
	case errors.As(err, &unknownCA) || (errors.As(err, &unverified) && errors.As(unverified.Err, &unknownCA)):
		return fmt.Errorf("%w: the locker's certificate is not signed by a CA this client trusts: %s", err, c.tlsAdvice)
	case errors.As(err, &unverified):
		return fmt.Errorf("%w: the locker's certificate does not check out: fix it, or %s", err, c.tlsAdvice)
	}
	return err
}

// lockPath is the API path of the lock called name.
func lockPath(name string) string {
	return "/lock/" + url.PathEscape(name)
}

// HoldersString lists the lock's holders for a person, in name order: "a
// (2, since 2026-12-05T10:04:05Z, lease until 2026-12-05T10:34:05Z,
// https://ci/builds/1), b (1)".
func (l Lock) HoldersString() string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(l.LockedBy)) {
		h := l.Holders[name]
		p := fmt.Sprintf("%s (%d", name, l.LockedBy[name])
		if !h.Since.IsZero() {
			p += ", since " + h.Since.Format(time.RFC3339)
		}
		if !h.ExpiresAt.IsZero() {
			p += ", lease until " + h.ExpiresAt.Format(time.RFC3339)
		}
		if h.Note != "" {
			p += ", " + h.Note
		}
		parts = append(parts, p+")")
	}
	return strings.Join(parts, ", ")
}

// decodeReply reads the server's answer about the lock called name.
func decodeReply(name string, data []byte) (Reply, error) {
	var r Reply
	if err := json.Unmarshal(data, &r); err != nil {
		return Reply{}, fmt.Errorf("the locker's answer about %q is not a lock: %w", name, err)
	}
	r.Raw = data
	return r, nil
}

// Get returns the lock called name and its queue.
func (c *Client) Get(ctx context.Context, name string) (Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	data, err := c.Do(ctx, http.MethodGet, lockPath(name), nil, nil, "")
	if err != nil {
		return Reply{}, err
	}
	return decodeReply(name, data)
}

// Page returns a page of the listing: up to limit (1 to 10,000) locks
// held or waited for whose names start with prefix and sort after after,
// in name order, and the name to go on after ("" when there are no more).
// Each page is a snapshot; pages read one after another are not one.
func (c *Client) Page(ctx context.Context, prefix, after string, limit int) ([]Lock, string, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	if after != "" {
		q.Set("after", after)
	}
	resp, err := c.send(ctx, http.MethodGet, "/locks", q, nil, nil)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	var locks map[string]Lock
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxReplyBytes)).Decode(&locks); err != nil {
		return nil, "", fmt.Errorf("the locker's answer to GET /locks is not a list of locks: %w", err)
	}
	page := make([]Lock, 0, len(locks))
	for _, name := range slices.Sorted(maps.Keys(locks)) {
		l := locks[name]
		l.Name = name
		page = append(page, l)
	}
	next := ""
	if link := resp.Header.Get("Link"); link != "" {
		// </locks?after=...&limit=...>; rel="next": the server's own link.
		target, _, _ := strings.Cut(strings.TrimPrefix(link, "<"), ">")
		if u, err := url.Parse(target); err == nil {
			next = u.Query().Get("after")
		}
		if next == "" {
			return nil, "", fmt.Errorf("the locker's answer to GET /locks has a Link header this client cannot follow: %q", link)
		}
	}
	return page, next, nil
}

// ListTo copies the whole listing of the locks whose names start with
// prefix, the server's JSON as it comes, to w: no page of it is kept in
// memory.
func (c *Client) ListTo(ctx context.Context, prefix string, w io.Writer) error {
	var q url.Values
	if prefix != "" {
		q = url.Values{"prefix": {prefix}}
	}
	resp, err := c.send(ctx, http.MethodGet, "/locks", q, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("reading the answer to GET /locks: %w", err)
	}
	return nil
}

// History is a page of a lock's history, newest first, and the ID to ask
// for the page before it with (0 when there is no more).
type History struct {
	Events []Event // newest first
	Before uint64  // pass as History's before for the older events; 0 when there are none
}

// History returns up to limit (1 to 1,000) of the events of the lock
// called name with IDs below before (0: the newest), newest first. A lock
// never taken, or not within the time the server keeps history, has none.
// With name "", the events of every lock the credential may read.
func (c *Client) History(ctx context.Context, name string, before uint64, limit int) (History, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if before > 0 {
		q.Set("before", strconv.FormatUint(before, 10))
	}
	path := "/history"
	if name != "" {
		path += "/" + url.PathEscape(name)
	}
	data, err := c.Do(ctx, http.MethodGet, path, q, nil, "")
	if err != nil {
		return History{}, err
	}
	var reply struct {
		Events []Event `json:"events"`
		Next   string  `json:"next"`
	}
	if err := json.Unmarshal(data, &reply); err != nil {
		return History{}, fmt.Errorf("the locker's answer about the history of %q is not one: %w", name, err)
	}
	h := History{Events: reply.Events}
	if reply.Next != "" && len(h.Events) > 0 {
		h.Before = h.Events[len(h.Events)-1].ID
	}
	return h, nil
}

// quoteAll names locks for a message: "a", "b".
func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

// decodeSet reads the answer to a request over several locks.
func decodeSet(data []byte) (map[string]Lock, error) {
	var reply struct {
		Locks map[string]Lock `json:"locks"`
	}
	if err := json.Unmarshal(data, &reply); err != nil || reply.Locks == nil {
		return nil, fmt.Errorf("the locker's answer is not a set of locks: %s", data)
	}
	return reply.Locks, nil
}
