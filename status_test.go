package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/statuspage"
)

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
	// prod, held over 6 h, first; then the others by name.
	if got, want := cards(body), []string{"prod", "&lt;script&gt;alert(1)&lt;/script&gt;", "staging"}; !slices.Equal(got, want) {
		t.Errorf("cards = %q; want %q, the one held over 6 h first, escaped", got, want)
	}
	if got, want := cards(ts.page(t, "/?sort=name")), []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "prod", "staging"}; !slices.Equal(got, want) {
		t.Errorf("GET /?sort=name: cards = %q; want %q, by name", got, want)
	}
	for _, want := range []string{
		"<title>Locker: 3 held, 0 waiting</title>",
		// The note that is a URL is a link; the one that is not is text.
		`<a href="https://ci.example.com/builds/42?a=1&amp;b=2" rel="noreferrer">https://ci.example.com/builds/42?a=1&amp;b=2</a>`,
		"· javascript:alert(1)</li>",
		"<code>&lt;b&gt;k&lt;/b&gt;</code>",
		"<strong>&#34;&gt;&lt;img src=x&gt;</strong>",
		// Held 7 h 12 min: over the 6 h threshold, it stands out.
		`<article class="lock long" data-name="prod" data-card="lock prod">` + "\n    <h2><span class=\"name\">prod</span> <span class=\"badge\">held over 6h</span></h2>",
		`token 1 · taken <time datetime="2026-11-25T09:00:00Z" title="2026-11-25T09:00:00Z">` + nbsp("7 h 12 min") + ` ago</time>`,
		"<strong>pipeline-a/deploy</strong>\n        · no lease",
		"· lease ends in " + nbsp("17 min") + " · javascript:alert(1)</li>",
		`<a href="/?sort=name">By name</a>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "<script>alert") || strings.Contains(body, `href="javascript`) {
		t.Errorf("page holds unescaped input:\n%s", body)
	}
	// Two holders: each says when it took the lock.
	if !strings.Contains(body, "<strong>integration</strong> · took it "+nbsp("12 min")+" ago") {
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
	enginetest.Queued(t, ctx, tab, "prod", "upgrade", "b")
	clock.Advance(90 * time.Second)
	body := ts.page(t, "/")
	if !strings.Contains(body, "<li>b (key <code>upgrade</code>), waiting "+nbsp("1 min")+"\n") {
		t.Errorf("page does not show the queue:\n%s", body)
	}
	if !strings.Contains(body, "1 lock held, 1 request waiting, the longest for "+nbsp("1 min")+".") {
		t.Errorf("summary does not count the waiter and say how long it has waited:\n%s", body)
	}
	// A lock under a limit says how many of its holds are taken.
	ts.mustSend(t, request{"PUT", "/lock/browsers", `{"key": "e2e", "lock_by": "e2e-1", "limit": 3}`})
	ts.mustSend(t, request{"PUT", "/lock/browsers", `{"key": "e2e", "lock_by": "e2e-1"}`})
	if body := ts.page(t, "/?q=browsers"); !strings.Contains(body, `<span class="limit" title="the most holds at once">2 of 3 held</span>`) {
		t.Errorf("page does not show the limit:\n%s", body)
	}

	for i := range statuspage.MaxLocks + 5 {
		ts.mustSend(t, request{"PUT", fmt.Sprintf("/lock/many-%04d", i), `{"key": "k"}`})
	}
	body = ts.page(t, "/?q=many")
	if got := len(cards(body)); got != statuspage.MaxLocks {
		t.Errorf("%d locks match: page shows %d; want %d", statuspage.MaxLocks+5, got, statuspage.MaxLocks)
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
		{"/?filter=prod", `unknown query parameter "filter"; GET / accepts ?q=<text to filter by>, ?held_over=<duration> and ?sort=name`, 400},
		{"/?sort=age", `sort is urgency (the default) or name, not "age"`, 400},
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
		if want := tc.directive + " '" + sourceHash(m[0][1]) + "'"; !strings.Contains(policy, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", policy, want)
		}
	}
	if !strings.Contains(policy, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q does not start from nothing allowed", policy)
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
		`<li class="held" data-card="member &lt;i&gt;s3&lt;/i&gt;">&lt;i&gt;s3&lt;/i&gt; · e2e-77 (1), ` + nbsp("0 s") + ` ago</li>`,
		`<li class="free" data-card="member staging-1">staging-1 · free`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
}

// TestStatusPageOrdersByUrgency: the locks that need a person come first
// (held over the threshold, then with a queue, then with a lease about to
// end), each marked; the page keeps the most urgent when there are more
// locks than it shows; ?sort=name is the name order.
func TestStatusPageOrdersByUrgency(t *testing.T) {
	ts, tab, clock := statusServer(t, "", "")
	ts.mustSend(t, request{"PUT", "/lock/zz-held-long", `{"key": "k"}`})
	clock.Advance(7 * time.Hour)
	ts.mustSend(t, request{"PUT", "/lock/b-lease-ends", `{"key": "k", "ttl": "5m"}`})
	ts.mustSend(t, request{"PUT", "/lock/c-queue", `{"key": "k", "ttl": "1h"}`})
	ts.mustSend(t, request{"PUT", "/lock/a-quiet", `{"key": "k", "ttl": "1h"}`})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	enginetest.Queued(t, ctx, tab, "c-queue", "other", "w")

	body := ts.page(t, "/")
	if got, want := cards(body), []string{"zz-held-long", "c-queue", "b-lease-ends", "a-quiet"}; !slices.Equal(got, want) {
		t.Errorf("cards = %q; want %q: held long, queue, lease ending, the rest", got, want)
	}
	for _, want := range []string{
		`<article class="lock long" data-name="zz-held-long" data-card="lock zz-held-long">`,
		`<article class="lock queued" data-name="c-queue" data-card="lock c-queue">` + "\n    " + `<h2><span class="name">c-queue</span> <span class="badge queue">1 waiting</span></h2>`,
		`<article class="lock ending" data-name="b-lease-ends" data-card="lock b-lease-ends">` + "\n    " + `<h2><span class="name">b-lease-ends</span> <span class="badge lease">lease ends in ` + nbsp("5 min") + `</span></h2>`,
		`<article class="lock" data-name="a-quiet" data-card="lock a-quiet">`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
	if got, want := cards(ts.page(t, "/?sort=name")), []string{"a-quiet", "b-lease-ends", "c-queue", "zz-held-long"}; !slices.Equal(got, want) {
		t.Errorf("GET /?sort=name: cards = %q; want %q", got, want)
	}

	// More locks than the page shows: the urgent ones, last by name, stay.
	for i := range statuspage.MaxLocks {
		ts.mustSend(t, request{"PUT", fmt.Sprintf("/lock/many-%04d", i), `{"key": "k"}`})
	}
	body = ts.page(t, "/")
	got := cards(body)
	if len(got) != statuspage.MaxLocks || !slices.Equal(got[:3], []string{"zz-held-long", "c-queue", "b-lease-ends"}) || got[3] != "a-quiet" || got[len(got)-1] != "many-0495" {
		t.Errorf("with %d locks the page shows %d, starting %q and ending %q; want the urgent three first, then the first by name", statuspage.MaxLocks+4, len(got), got[:4], got[len(got)-1])
	}
	if !strings.Contains(body, "4 more locks are not shown; filter to find them.") {
		t.Errorf("page does not say it left out 4 locks")
	}
	if got := cards(ts.page(t, "/?sort=name")); slices.Contains(got, "zz-held-long") || got[0] != "a-quiet" {
		t.Errorf("by name, the page shows %q...; want the first %d by name", got[:3], statuspage.MaxLocks)
	}
}

// TestStatusPageMarksWhatTheFilterMatched: the text that matched, case
// aside, is marked wherever it is: name, key, holder, note, queue.
func TestStatusPageMarksWhatTheFilterMatched(t *testing.T) {
	ts, tab, _ := statusServer(t, "", "")
	ts.mustSend(t, request{"PUT", "/lock/Prod-DB", `{"key": "deploy-prod", "lock_by": "prod-job", "note": "https://ci/prod/1"}`})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	enginetest.Queued(t, ctx, tab, "Prod-DB", "upgrade-prod", "<prod>")
	body := ts.page(t, "/?q=prod")
	for _, want := range []string{
		`<span class="name"><mark>Prod</mark>-DB</span>`,
		`<code>deploy-<mark>prod</mark></code>`,
		`<strong><mark>prod</mark>-job</strong>`,
		`<a href="https://ci/prod/1" rel="noreferrer">https://ci/<mark>prod</mark>/1</a>`,
		`<li>&lt;<mark>prod</mark>&gt; (key <code>upgrade-<mark>prod</mark></code>)`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(ts.page(t, "/"), "<mark>") {
		t.Errorf("without a filter, the page marks something")
	}
}

// TestStatusPageAfterACancelledLogin: a browser that is refused the page
// (its user cancelled the login prompt) shows a page that says what to
// do, not the API's JSON; an API client still gets JSON.
func TestStatusPageAfterACancelledLogin(t *testing.T) {
	ts, _, _ := statusServer(t, "ci", "s3cret")
	ts.user = ""
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
	rec := httptest.NewRecorder()
	ts.handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" ||
		!strings.Contains(rec.Body.String(), "Reload the page to be asked again") || rec.Header().Get("WWW-Authenticate") == "" {
		t.Errorf("GET / from a browser without credentials = %d %q %q; want 401, a prompt, and an HTML page", rec.Code, rec.Header(), rec.Body)
	}
	if rec := ts.send(t, request{"GET", "/", ""}); rec.Code != http.StatusUnauthorized || !strings.Contains(errorOf(t, rec), "authentication required") {
		t.Errorf("GET / from an API client without credentials = %d %s; want 401 with a JSON error", rec.Code, rec.Body)
	}
}

// sourceHash returns the Content-Security-Policy source of an inline
// script or style whose text is s.
func sourceHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}
