package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/locker-ci/locker/internal/lock"
)

// An operator at the status page, in Chromium: force release (refused
// with 412 from a stale page, made from a fresh one), removing a waiter,
// reserving a lock and a pool's member and giving the reservation back;
// and another site's page that tries to change Locker through the
// signed-in browser.
func TestOperatorsActFromTheStatusPage(t *testing.T) {
	ctx, problems := browser(t)
	ls, _ := liveStatusServer(t)
	auth := []string{"ci", "s3cret"}
	must := func(method, path, body string) []byte {
		t.Helper()
		status, reply := ls.call(t, method, path, body, auth...)
		if status != http.StatusOK {
			t.Fatalf("%s %s = %d %s", method, path, status, reply)
		}
		return reply
	}
	must("PUT", "/lock/prod", `{"key": "v1", "lock_by": "deploy-41"}`)
	upgrade := inBackground(ls.url, "PUT", "/lock/prod?wait=2m", `{"key": "v2", "lock_by": "deploy-42"}`, auth...)
	waitForAPI(t, "deploy-42 to queue for prod", func() bool { return len(viewOf(t, ls, "prod", auth).Waiting) == 1 })

	base := strings.Replace(ls.url, "http://", "http://ci:s3cret@", 1)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("locks"))); err != nil {
		t.Fatalf("loading the status page: %v", err)
	}
	waitOnPage(t, ctx, "the page to follow the stream", `document.body.dataset.live === "stream"`)
	prod := `article[data-card="lock prod"] `

	// A stale page: the person opens prod's force release, and while
	// they write the reason deploy-41 gives prod back and deploy-42 gets
	// it. The page refreshes around the card they act on, which keeps
	// the holding they saw; the release is refused, and nothing changes.
	seen := viewOf(t, ls, "prod", auth).Token
	click(t, ctx, prod+"details.op summary")
	must("DELETE", "/lock/prod", `{"key": "v1", "lock_by": "deploy-41"}`)
	if got := <-upgrade; got.status != http.StatusOK {
		t.Fatalf("deploy-42's wait = %v; want 200 once deploy-41 gave prod back", got)
	}
	waitOnPage(t, ctx, "the page to refresh after prod changed hands", `document.getElementById("summary").textContent.includes("0 requests waiting")`)
	if got := eval[string](t, ctx, `document.querySelector('`+prod+`.holders').textContent`); !strings.Contains(got, "deploy-41") {
		t.Errorf("the card with an open form shows holders %q; want deploy-41's holding, as the person saw it", got)
	}
	submit(t, ctx, prod+"details.op", "deploy 41 hung")
	said := actedText(t, ctx)
	if !strings.HasPrefix(said, "Not done: the lock changed since this page showed it.") || !strings.Contains(said, "look again before you act") {
		t.Errorf("a stale page's force release says %q; want that the lock changed since the page showed it", said)
	}
	if l := ls.listLocks(t, auth...)["prod"]; l.LockedBy["deploy-42"] != 1 {
		t.Fatalf("after a stale page's force release, prod is %+v; want deploy-42's, untouched", l)
	}

	// The refreshed card holds the new token: the release is made, with
	// its reason in the history.
	waitOnPage(t, ctx, "prod's card to show deploy-42", `document.querySelector('`+prod+`.holders')?.textContent.includes("deploy-42")`)
	if now := viewOf(t, ls, "prod", auth).Token; now == seen {
		t.Fatalf("prod's token is still %d after it changed hands", now)
	}
	click(t, ctx, prod+"details.op summary")
	submit(t, ctx, prod+"details.op", "deploy 42 hung")
	if said := actedText(t, ctx); said != `Done: lock for prod force-released; it was held with key "v2" by deploy-42 (1).` {
		t.Errorf("the force release says %q", said)
	}
	var history struct {
		Events []struct{ Event, Holder, Reason, By string }
	}
	if err := json.Unmarshal(must("GET", "/history/prod?limit=1", ""), &history); err != nil || len(history.Events) != 1 ||
		history.Events[0].Event != "forced" || history.Events[0].Reason != "deploy 42 hung" || !strings.HasPrefix(history.Events[0].By, "ci (") {
		t.Errorf("prod's latest event is %+v (%v); want forced by ci (its address), reason \"deploy 42 hung\"", history.Events, err)
	}

	// Removing a waiter: its request is answered 409 with the reason.
	must("PUT", "/lock/db", `{"key": "backup", "lock_by": "nightly"}`)
	restore := inBackground(ls.url, "PUT", "/lock/db?wait=2m", `{"key": "restore", "lock_by": "restore-job"}`, auth...)
	waitOnPage(t, ctx, "restore-job in db's queue", `!!document.querySelector('article[data-card="lock db"] ol.queue details')`)
	click(t, ctx, `article[data-card="lock db"] ol.queue details summary`)
	submit(t, ctx, `article[data-card="lock db"] ol.queue details`, "restore after the backup")
	if got := answerWithin(t, restore); got.status != http.StatusConflict || !strings.Contains(got.err, "removed from the queue by ci (127.0.0.1): restore after the backup") {
		t.Errorf("the removed waiter was answered %v; want 409 saying who removed it and why", got)
	}

	// Reserving a free lock by name, under the person's name, with a
	// note and no lease; then giving it back.
	click(t, ctx, "#reserve summary")
	if err := chromedp.Do(ctx, chromedp.SendKeys(`#reserve input[name=lock]`, "staging"),
		chromedp.SetValue(`#reserve input[name=lock_by]`, "alice"),
		chromedp.SendKeys(`#reserve input[name=note]`, "trying the new schema")); err != nil {
		t.Fatal(err)
	}
	click(t, ctx, "#reserve button")
	if said := actedText(t, ctx); !strings.HasPrefix(said, "Done:") {
		t.Errorf("reserving staging says %q; want done", said)
	}
	var staging struct {
		Key      string         `json:"key"`
		LockedBy map[string]int `json:"locked_by"`
		Holders  map[string]struct {
			Note      string `json:"note"`
			ExpiresAt string `json:"expires_at"`
		} `json:"holders"`
	}
	if err := json.Unmarshal(must("GET", "/lock/staging", ""), &staging); err != nil || staging.Key != "reserved by alice" ||
		staging.LockedBy["alice"] != 1 || len(staging.Holders) != 1 || staging.Holders["alice"].Note != "trying the new schema" || staging.Holders["alice"].ExpiresAt != "" {
		t.Errorf("staging after the reservation = %+v (%v); want held by alice, key \"reserved by alice\", the note, no lease", staging, err)
	}
	giveBack := `article[data-card="lock staging"] form.op.inline button`
	waitOnPage(t, ctx, "staging's Give back", `!!document.querySelector('`+giveBack+`')`)
	click(t, ctx, giveBack)
	said = actedText(t, ctx)
	if !strings.HasPrefix(said, "Done:") {
		t.Errorf("giving staging back says %q; want done", said)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		l, held := ls.listLocks(t, auth...)["staging"]
		if !held {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("staging is still held 10 s after its reservation was given back (the page said %q): %+v", said, l)
			break
		}
	}

	// A pool's free member is reserved from its line, under the name the
	// browser remembers.
	must("PUT", "/pool/envs", `{"members": ["env-1", "env-2"]}`)
	member := `li[data-card="member env-1"] details`
	waitOnPage(t, ctx, "the pool envs", `!!document.querySelector('`+member+`')`)
	click(t, ctx, member+" summary")
	if got := eval[string](t, ctx, `document.querySelector('`+member+` input[name=lock_by]').value`); got != "alice" {
		t.Errorf("the member's reservation form offers the name %q; want alice, given last", got)
	}
	click(t, ctx, member+" button")
	if said := actedText(t, ctx); !strings.HasPrefix(said, "Done:") {
		t.Errorf("reserving env-1 says %q; want done", said)
	}
	if l := ls.listLocks(t, auth...)["env-1"]; l.Key != "reserved by alice" {
		t.Errorf("env-1 after its reservation = %+v; want reserved by alice", l)
	}
	// The refused force release is the one failed request the browser
	// may report.
	refused := "error: Failed to load resource: the server responded with a status of 412 (Precondition Failed)"
	if p := problems(); len(p) != 1 || p[0] != refused {
		t.Errorf("the browser console reported:\n%s\nwant only %q", strings.Join(p, "\n"), refused)
	}
	checkAnotherSitesPage(t, ctx, ls, auth)
}

// checkAnotherSitesPage opens, in the signed-in browser, a page of
// another origin whose form posts a credential to Locker as text/plain
// (which needs no preflight): Locker refuses it, and makes nothing.
func checkAnotherSitesPage(t *testing.T, ctx context.Context, ls *liveServer, auth []string) {
	t.Helper()
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" enctype="text/plain" action="%s/credentials">`+
			`<input name='{"name": "evil", "grants": [{"role": "admin", "prefix": "' value='"}]}'></form>`+
			`<script>document.getElementById("f").submit()</script>`, ls.url)
	}))
	defer evil.Close()
	if err := chromedp.Do(ctx, chromedp.Navigate(evil.URL)); err != nil {
		t.Fatal(err)
	}
	waitOnPage(t, ctx, "the other site's form to be answered", `location.href.endsWith("/credentials")`)
	if got := eval[string](t, ctx, `document.body.innerText`); !strings.Contains(got, "a page of another site may not change locks here") {
		t.Errorf("Locker answered another site's form with %q; want a refusal saying why", got)
	}
	if _, body := ls.call(t, "GET", "/credentials", "", auth...); strings.Contains(string(body), "evil") {
		t.Errorf("another site's page made a credential: %s", body)
	}
}

// viewOf returns the lock called name as GET /lock/<name> shows it.
func viewOf(t *testing.T, ls *liveServer, name string, auth []string) lock.View {
	t.Helper()
	status, body := ls.call(t, "GET", "/lock/"+name, "", auth...)
	var v lock.View
	if err := json.Unmarshal(body, &v); status != http.StatusOK || err != nil {
		t.Fatalf("GET /lock/%s = %d %s", name, status, body)
	}
	return v
}

// click clicks the element sel names, in the page's own script: one step,
// which the page's refresh (it swaps the list of cards) cannot split, as it
// can a click through the DevTools protocol between finding a node and
// pressing on it. It waits up to 30 s for the element to be there.
func click(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	quoted, _ := json.Marshal(sel)
	waitOnPage(t, ctx, "a click on "+sel, `(() => { const e = document.querySelector(`+string(quoted)+`); if (!e) return false; e.click(); return true })()`)
}

// submit types reason into the form in the details element sel names,
// and sends it.
func submit(t *testing.T, ctx context.Context, sel, reason string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.SendKeys(sel+" input[name=reason]", reason, chromedp.NodeVisible)); err != nil {
		t.Fatalf("typing into %s: %v", sel, err)
	}
	click(t, ctx, sel+" button")
}

// actedText waits for the page to say what became of the latest form,
// and returns what it says; it is hidden again for the next.
func actedText(t *testing.T, ctx context.Context) string {
	t.Helper()
	waitOnPage(t, ctx, "the page to say what became of the form", `!document.getElementById("acted").hidden`)
	text := eval[string](t, ctx, `document.getElementById("acted").textContent`)
	eval[bool](t, ctx, `document.getElementById("acted").hidden = true`)
	return text
}

// waitOnPage waits until the JavaScript expression cond is true in the
// tab of ctx, for up to 30 s (a busy machine's browser is slow).
func waitOnPage(t *testing.T, ctx context.Context, what, cond string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !eval[bool](t, ctx, "!!("+cond+")") {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; the page says:\n%s", what, eval[string](t, ctx, "document.body.innerText"))
		}
		time.Sleep(50 * time.Millisecond) // polling a page, not synchronising goroutines
	}
}

// waitForAPI waits until cond, which asks the API, is true, for up to 30 s.
func waitForAPI(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answerWithin waits up to 30 s for a background request's answer.
func answerWithin(t *testing.T, done <-chan answered) answered {
	t.Helper()
	select {
	case a := <-done:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("the removed waiter was not answered within 30 s")
		return answered{}
	}
}
