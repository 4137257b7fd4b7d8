package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// statusServer is the real router over a table whose clock the test moves.
func statusServer(t *testing.T, user, pass string) (*testServer, *engine, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := loadTestTable(t, path, nil, clock.Now)
	return serveTable(tab, path, user, pass), tab, clock
}

// page returns GET target's body, failing the test unless it is a 200
// HTML page.
func (ts *testServer) page(t *testing.T, target string) string {
	t.Helper()
	rec := ts.send(t, request{"GET", target, ""})
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s = %d %s; want 200", target, rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("GET %s: Content-Type = %q; want text/html; charset=utf-8", target, ct)
	}
	return rec.Body.String()
}

// cards returns the lock names on a status page, in order.
func cards(body string) []string {
	var names []string
	for _, m := range regexp.MustCompile(`<h2>([^<]*)`).FindAllStringSubmatch(body, -1) {
		names = append(names, strings.TrimSpace(m[1]))
	}
	return names
}

func TestStatusPage(t *testing.T) {
	ts, _, clock := statusServer(t, "", "")
	if body := ts.page(t, "/"); !strings.Contains(body, "No lock is held and no one is waiting.") {
		t.Errorf("empty table: page does not say so:\n%s", body)
	}

	ts.mustSend(t, request{"PUT", "/lock/prod", `{"key": "deploy", "lock_by": "pipeline-a/deploy",
		"note": "https://ci.example.com/builds/42?a=1&b=2"}`})
	clock.Advance(7 * time.Hour)
	ts.mustSend(t, request{"PUT", "/lock/staging", `{"key": "tests", "lock_by": "unit", "ttl": "30m", "note": "javascript:alert(1)"}`})
	ts.mustSend(t, request{"PUT", "/lock/staging", `{"key": "tests", "lock_by": "integration"}`})
	ts.mustSend(t, request{"PUT", "/lock/%3Cscript%3Ealert(1)%3C%2Fscript%3E", `{"key": "<b>k</b>", "lock_by": "\"><img src=x>"}`})
	clock.Advance(12*time.Minute + 5*time.Second)

	body := ts.page(t, "/")
	if got, want := cards(body), []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "prod", "staging"}; !slices.Equal(got, want) {
		t.Errorf("cards = %q; want %q, sorted by name, escaped", got, want)
	}
	for _, want := range []string{
		"<title>Locker: 3 held, 0 waiting</title>",
		// The note that is a URL is a link; the one that is not is text.
		`<a href="https://ci.example.com/builds/42?a=1&amp;b=2" rel="noreferrer">https://ci.example.com/builds/42?a=1&amp;b=2</a>`,
		"· javascript:alert(1)</li>",
		"<code>&lt;b&gt;k&lt;/b&gt;</code>",
		"<strong>&#34;&gt;&lt;img src=x&gt;</strong>",
		// Held 7 h 12 min: over the 6 h threshold, it stands out.
		`<article class="lock long">` + "\n    <h2>prod <span class=\"badge\">held over 6h</span></h2>",
		`token 1 · taken <time datetime="2026-11-25T09:00:00Z" title="2026-11-25T09:00:00Z">7 h 12 min ago</time>`,
		"<strong>pipeline-a/deploy</strong>\n        · no lease",
		"· lease ends in 17 min · javascript:alert(1)</li>",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "<script>alert") || strings.Contains(body, `href="javascript`) {
		t.Errorf("page holds unescaped input:\n%s", body)
	}
	// Two holders: each says when it took the lock.
	if !strings.Contains(body, "<strong>integration</strong> · took it 12 min ago") {
		t.Errorf("shared lock does not say when each holder took it:\n%s", body)
	}

	// The filter matches names, keys, holders and notes, case aside.
	for _, tc := range []struct {
		q    string
		want []string
	}{
		{"PROD", []string{"prod"}},
		{"tests", []string{"staging"}},
		{"integration", []string{"staging"}},
		{"ci.example.com", []string{"prod"}},
		{"%3Cb%3E", []string{"&lt;script&gt;alert(1)&lt;/script&gt;"}},
		{"nothing-like-this", nil},
	} {
		body := ts.page(t, "/?q="+tc.q)
		if got := cards(body); !slices.Equal(got, tc.want) {
			t.Errorf("GET /?q=%s: cards = %q; want %q", tc.q, got, tc.want)
		}
		if tc.want == nil && !strings.Contains(body, "No lock matches “nothing-like-this”.") {
			t.Errorf("GET /?q=%s: page does not say nothing matches:\n%s", tc.q, body)
		}
	}

	// held_over moves the threshold, and the filter form keeps it.
	body = ts.page(t, "/?held_over=10m")
	if n := strings.Count(body, `class="lock long"`); n != 3 {
		t.Errorf("GET /?held_over=10m: %d locks stand out; want 3", n)
	}
	if !strings.Contains(body, `<input type="hidden" name="held_over" value="10m">`) {
		t.Errorf("GET /?held_over=10m: the filter form does not keep held_over")
	}
}

func TestStatusPageQueueAndLimits(t *testing.T) {
	ts, tab, clock := statusServer(t, "", "")
	ts.mustSend(t, request{"PUT", "/lock/prod", `{"key": "deploy", "lock_by": "a"}`})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	queued(t, ctx, tab, "prod", "upgrade", "b")
	clock.Advance(90 * time.Second)
	body := ts.page(t, "/")
	if !strings.Contains(body, "<li>b (key <code>upgrade</code>), waiting 1 min</li>") {
		t.Errorf("page does not show the queue:\n%s", body)
	}
	if !strings.Contains(body, "1 lock held, 1 request waiting.") {
		t.Errorf("summary does not count the waiter:\n%s", body)
	}

	for i := range statusMaxLocks + 5 {
		ts.mustSend(t, request{"PUT", fmt.Sprintf("/lock/many-%04d", i), `{"key": "k"}`})
	}
	body = ts.page(t, "/?q=many")
	if got := len(cards(body)); got != statusMaxLocks {
		t.Errorf("%d locks match: page shows %d; want %d", statusMaxLocks+5, got, statusMaxLocks)
	}
	if !strings.Contains(body, "5 more locks are not shown; filter to find them.") {
		t.Errorf("page does not say how many locks it left out")
	}
}

func TestStatusPageRefusesBadQueriesAndAsksForCredentials(t *testing.T) {
	ts, _, _ := statusServer(t, "ci", "s3cret")
	for _, tc := range []struct {
		target, want string
		status       int
	}{
		{"/?held_over=soon", `held_over must be a positive duration such as "30s", "5m" or "1h"; got "soon"`, 400},
		{"/?held_over=-1h", `held_over must be a positive duration`, 400},
		{"/?filter=prod", `unknown query parameter "filter"; GET / accepts ?q=<text to filter by> and ?held_over=<duration>`, 400},
		{"/?q=a&q=b", `query parameter "q" is given 2 times; give it once`, 400},
	} {
		rec := ts.send(t, request{"GET", tc.target, ""})
		if rec.Code != tc.status || !strings.Contains(errorOf(t, rec), tc.want) {
			t.Errorf("GET %s = %d %s; want %d with %q", tc.target, rec.Code, rec.Body, tc.status, tc.want)
		}
	}

	ts.user = ""
	rec := ts.send(t, request{"GET", "/", ""})
	if rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") == "" {
		t.Errorf("GET / without credentials = %d (WWW-Authenticate %q); want 401 and a prompt", rec.Code, rec.Header().Get("WWW-Authenticate"))
	}
	ts.user = "ci"
	rec = ts.send(t, request{"HEAD", "/", ""})
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" {
		t.Errorf("HEAD / = %d %q; want 200 text/html", rec.Code, rec.Header().Get("Content-Type"))
	}
}

// TestStatusPagePolicyAllowsItsOwnScript checks the Content-Security-Policy
// against the page: the hashes it names are those of the script and style
// the page holds, so the browser runs them, and nothing else.
func TestStatusPagePolicyAllowsItsOwnScript(t *testing.T) {
	ts, _, _ := statusServer(t, "", "")
	rec := ts.send(t, request{"GET", "/", ""})
	policy := rec.Header().Get("Content-Security-Policy")
	for _, tc := range []struct{ element, directive string }{{"script", "script-src"}, {"style", "style-src"}} {
		m := regexp.MustCompile(`(?s)<`+tc.element+`>(.*?)</`+tc.element+`>`).FindAllStringSubmatch(rec.Body.String(), -1)
		if len(m) != 1 {
			t.Fatalf("page has %d <%s> elements; want 1", len(m), tc.element)
		}
		if want := tc.directive + " '" + cspHash(m[0][1]) + "'"; !strings.Contains(policy, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", policy, want)
		}
	}
	if !strings.Contains(policy, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q does not start from nothing allowed", policy)
	}
}

func TestHumanDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-3 * time.Second, "0 s"},
		{0, "0 s"},
		{42*time.Second + 900*time.Millisecond, "42 s"},
		{12*time.Minute + 59*time.Second, "12 min"},
		{3*time.Hour + 5*time.Minute, "3 h 5 min"},
		{52 * time.Hour, "2 d 4 h"},
	} {
		if got := humanDuration(tc.d); got != tc.want {
			t.Errorf("humanDuration(%v) = %q; want %q", tc.d, got, tc.want)
		}
	}
}

func TestLinkable(t *testing.T) {
	for note, want := range map[string]bool{
		"https://ci.example.com/builds/42": true,
		"http://ci:8080/b/1":               true,
		"javascript:alert(1)":              false,
		"data:text/html,<b>x</b>":          false,
		"//ci.example.com/builds/42":       false,
		"ci.example.com/builds/42":         false,
		"https://":                         false,
		"deploying v1.2":                   false,
	} {
		if got := linkable(note) != ""; got != want {
			t.Errorf("linkable(%q) = %v; want %v", note, got, want)
		}
	}
}

// TestStatusPageShowsPools: each pool is a group of its members, free or
// held (by whom), with the claims waiting; names are escaped.
func TestStatusPageShowsPools(t *testing.T) {
	ts, _, _ := statusServer(t, "", "")
	if body := ts.page(t, "/"); !strings.Contains(body, `<section id="pools" class="pools" aria-label="Pools" hidden>`) {
		t.Errorf("with no pool, the pools section is not hidden:\n%s", body)
	}
	ts.mustSend(t, request{"PUT", "/pool/staging", `{"members": ["staging-1", "staging-2", "<i>s3</i>"]}`})
	ts.mustSend(t, request{"PUT", "/pool/staging/claim", `{"key": "e2e", "lock_by": "e2e-77"}`})
	body := ts.page(t, "/")
	for _, want := range []string{
		`<h2>Pool staging <span class="count">2 of 3 free</span></h2>`,
		`<li class="held">&lt;i&gt;s3&lt;/i&gt; · e2e-77 (1), 0 s ago</li>`,
		`<li class="free">staging-1 · free</li>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
}
