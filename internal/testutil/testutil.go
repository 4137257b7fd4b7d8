// Package testutil holds the helpers that tests in several packages share.
package testutil

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// SyncBuffer is a bytes.Buffer that a server's logger and a test can use
// at once.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor polls cond until it holds, failing the test after 10 s.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// HTTPDo sends a request and returns its status; 0, with an error
// reported, if it could not.
func HTTPDo(tb testing.TB, base, method, path, body string) int {
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		tb.Error(err)
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Error(err)
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// ReadFile returns the bytes of path, failing the test if it cannot.
func ReadFile(tb testing.TB, path string) []byte {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// WriteFile writes text to path, making its directory, failing the test
// if it cannot.
func WriteFile(tb testing.TB, path, text string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// DirEntries lists the names in dir.
func DirEntries(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// DropFirstReply starts a proxy in front of target that forwards every
// request, but cuts the connection instead of passing on the reply to the
// first one with method: the request was made, the client never hears.
// It returns the proxy's URL.
func DropFirstReply(tb testing.TB, target, method string) string {
	return DropFirstReplyThen(tb, target, method, nil)
}

// DropFirstReplyThen is DropFirstReply that calls then, if not nil, with
// the reply it dropped before it cuts the connection: what the world does
// meanwhile (another client takes the lock, a lease runs out).
func DropFirstReplyThen(tb testing.TB, target, method string, then func(reply []byte)) string {
	tb.Helper()
	u, err := url.Parse(target)
	if err != nil {
		tb.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	var dropped atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == method && dropped.CompareAndSwap(false, true) {
			rec := httptest.NewRecorder()
			proxy.ServeHTTP(rec, r) // made upstream, reply thrown away
			if then != nil {
				then(rec.Body.Bytes())
			}
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	tb.Cleanup(srv.Close)
	return srv.URL
}

// ReadJournal returns the records in the journal beside the state file at
// path: its bytes up to the zeros of the room allocated ahead (nil when
// there is no journal).
func ReadJournal(tb testing.TB, path string) []byte {
	tb.Helper()
	data, err := os.ReadFile(path + ".journal")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	return data
}

// OnDisk returns what the state file at path and its journal hold.
func OnDisk(tb testing.TB, path string) string {
	tb.Helper()
	return string(ReadFile(tb, path)) + "\n--- journal ---\n" + string(ReadJournal(tb, path))
}

// FakeClock is a clock that moves only when told to.
type FakeClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewFakeClock returns a clock that shows 2026-11-25 09:00 UTC.
func NewFakeClock() *FakeClock {
	return &FakeClock{now: time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)}
}

// Now returns the clock's time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d, and returns its new time.
func (c *FakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// IsSubsequence reports whether want appears in got in order, with other
// elements in between allowed.
func IsSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// DirContents maps each file in dir to its contents.
func DirContents(tb testing.TB, dir string) map[string]string {
	tb.Helper()
	out := map[string]string{}
	for _, name := range DirEntries(tb, dir) {
		out[name] = string(ReadFile(tb, filepath.Join(dir, name)))
	}
	return out
}

// SendWithKey makes one request through base, with key as its
// Idempotency-Key unless it is "".
func SendWithKey(tb testing.TB, base, method, path, body, key string) (*http.Response, string, error) {
	tb.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp, string(data), err
}

// PutResult is what a client sending PUT got back.
type PutResult struct {
	Status int
	Body   []byte
	At     time.Time // when the answer arrived
}

// PutAsync sends a PUT in the background, with ctx, and returns its PutAnswer
// on the channel.
func PutAsync(ctx context.Context, url, path, body string) <-chan PutResult {
	out := make(chan PutResult, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "PUT", url+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- PutResult{Status: 0, Body: []byte(err.Error()), At: time.Now()}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		out <- PutResult{Status: resp.StatusCode, Body: body, At: time.Now()}
	}()
	return out
}

// PutAnswer waits for the answer on ch.
func PutAnswer(tb testing.TB, ch <-chan PutResult) PutResult {
	tb.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		tb.Fatal("no answer to the waiting PUT")
		return PutResult{}
	}
}
