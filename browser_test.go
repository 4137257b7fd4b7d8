package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"html"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/locker-ci/locker/internal/statuspage"
	"github.com/locker-ci/locker/internal/testutil"
)

// The status page in a real browser: Debian's chromium, headless, driven
// by chromedp. `make test` installs chromium when it is missing (see
// scripts/install-test-packages.sh); the test installs nothing itself.

var screenshotPath = flag.String("screenshot", filepath.Join(os.TempDir(), "locker-status.png"),
	"where TestStatusPageInBrowser saves its screenshot; -screenshot docs/status.png updates the README's")

// findChromium returns the path of a Chromium or Chrome to drive. Where
// there is none, the test is skipped with a message saying how to get one,
// unless CI is set: CI must run it.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	msg := "no chromium on this machine, so the status page's browser test did not run; " +
		"install it with `sudo apt-get install chromium` (make test does so as root) and run the tests again"
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set, and CI must run it)")
	}
	t.Skip(msg)
	return ""
}

// browser starts a headless chromium for the test, with the flags a
// machine without internet needs, and returns a context for its first tab.
// Every console message and exception of the tab is kept in problems.
func browser(t *testing.T) (ctx context.Context, problems func() []string) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(findChromium(t)),
		chromedp.NoSandbox, // tests run as root
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1280, 800),
		chromedp.UserDataDir(t.TempDir()),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting %s: %v", findChromium(t), err)
	}
	return ctx, watchConsole(ctx)
}

// watchConsole collects what the tab of ctx writes to its console: errors
// and exceptions (a script the Content-Security-Policy blocked, a failed
// refresh) must not happen.
func watchConsole(ctx context.Context) func() []string {
	var mu sync.Mutex
	var seen []string
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() || m.Source == "security" {
				mu.Lock()
				seen = append(seen, m.String())
				mu.Unlock()
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

// eval evaluates a JavaScript expression in the tab of ctx.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// lockNames returns the names on the lock cards the tab shows, read
// from the DOM in one call: no page script is needed, and the refresh
// cannot swap the list out halfway (it replaces #locks, never the body).
func lockNames(t *testing.T, ctx context.Context) []string {
	t.Helper()
	list, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("body")))
	// A page that reloads itself (JavaScript off) can be caught halfway:
	// its document is gone until the new one loads.
	for try := 0; err != nil && try < 50; try++ {
		time.Sleep(20 * time.Millisecond)
		list, err = chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("body")))
	}
	if err != nil {
		t.Fatalf("reading the lock cards: %v", err)
	}
	var names []string
	for _, m := range cardName.FindAllStringSubmatch(list, -1) {
		names = append(names, html.UnescapeString(m[1]))
	}
	return names
}

// cardName is a lock card's name as the DOM serialises it.
var cardName = regexp.MustCompile(`<article class="lock[^"]*" data-name="([^"]*)"`)

// waitForCard waits until the tab shows a card for the lock called name,
// and returns how long that took. It fails the test after within.
func waitForCard(t *testing.T, ctx context.Context, name string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		for _, n := range lockNames(t, ctx) {
			if n == name {
				return time.Since(start)
			}
		}
		time.Sleep(100 * time.Millisecond) // polling a page, not synchronising goroutines
	}
	stale, _ := chromedp.Run(ctx, chromedp.TextContent(chromedp.ID("stale")))
	t.Fatalf("the page did not show lock %q within %v; it shows %q (and says %q)", name, within, lockNames(t, ctx), stale)
	return 0
}

func TestStatusPageInBrowser(t *testing.T) {
	ctx, problems := browser(t)
	// The server's clock is a fake one, so that prod is held for hours
	// and the others for none, whatever the machine's speed: the page
	// re-renders as the test goes on, and real seconds make any
	// threshold between their ages pass while it looks.
	ls, clock := liveStatusServer(t)
	auth := []string{"ci", "s3cret"}
	put := func(path, body string) {
		t.Helper()
		if status, reply := ls.call(t, "PUT", path, body, auth...); status != http.StatusOK {
			t.Fatalf("PUT %s = %d %s", path, status, reply)
		}
	}
	build := "https://ci.example.com/teams/main/pipelines/deploy/jobs/prod/builds/1042"
	put("/lock/prod", `{"key": "deploy-v1.4", "lock_by": "deploy/prod", "ttl": "2h30m", "note": "`+build+`"}`)
	// A lock held over held_over (1h below) stands out: prod, held 2 h.
	clock.Advance(2 * time.Hour)
	put("/lock/staging", `{"key": "tests", "lock_by": "unit-tests", "ttl": "20m"}`)
	put("/lock/staging", `{"key": "tests", "lock_by": "integration-tests", "ttl": "20m", "note": "javascript:window.pwned=3"}`)
	hostile := `<script>window.pwned=1</script>`
	put("/lock/%3Cscript%3Ewindow.pwned=1%3C%2Fscript%3E", `{"key": "<img src=x onerror=window.pwned=2>", "lock_by": "\"><b>bold</b>"}`)
	waiter := putAsyncAuth(t, ls.url, "/lock/prod?wait=2m", `{"key": "upgrade-v2", "lock_by": "upgrade/prod"}`)
	defer func() {
		ls.call(t, "DELETE", "/lock/prod?force=true", `{}`, auth...)
		if status := <-waiter; status != http.StatusOK {
			t.Errorf("the waiter was answered %d after the force release; want 200", status)
		}
	}()
	testutil.WaitFor(t, "the waiter to queue for prod", func() bool {
		_, body := ls.call(t, "GET", "/lock/prod", "", auth...)
		return strings.Contains(string(body), "upgrade/prod")
	})

	// The page is behind the API's credentials: the browser is sent them
	// in the URL, as a person types them at the prompt; the page's own
	// refreshes reuse them.
	base := strings.Replace(ls.url, "http://", "http://ci:s3cret@", 1)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/?held_over=1h"), chromedp.WaitVisible(chromedp.ID("locks"))); err != nil {
		t.Fatalf("loading the status page: %v", err)
	}

	// What a person sees: prod, held over the threshold and waited for,
	// first; then the others by name, the hostile one as text.
	if got, want := lockNames(t, ctx), []string{"prod", hostile, "staging"}; !slices.Equal(got, want) {
		t.Errorf("lock cards = %q; want %q", got, want)
	}
	if got := eval[string](t, ctx, `typeof window.pwned`); got != "undefined" {
		t.Errorf("a script from a lock's name, key or note ran: window.pwned is %s", got)
	}
	text := eval[string](t, ctx, `document.body.innerText`)
	for _, want := range []string{
		"3 locks held, 1 request waiting, the longest for ",
		"deploy/prod · lease ends in 30\u00a0min · " + build,
		"integration-tests · took it",
		"upgrade/prod (key upgrade-v2), waiting",
		`"><b>bold</b>`,
		"<img src=x onerror=window.pwned=2>",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the page does not show %q; it shows:\n%s", want, text)
		}
	}
	links := eval[[]string](t, ctx, `[...document.querySelectorAll("#locks a")].map(a => a.href)`)
	if !slices.Equal(links, []string{build}) {
		t.Errorf("links on the lock cards = %q; want only the build URL %q (no javascript: link)", links, build)
	}
	if got := eval[string](t, ctx, `[...document.querySelectorAll(".lock.long h2")].map(h => h.textContent).join("|")`); got != "prod held over 1h 1 waiting" {
		t.Errorf("locks that stand out: %q; want prod, held over 1h, one waiting", got)
	}

	// The page follows the stream of changes: a change shows without a
	// reload (the marker survives), long before the page's own refresh,
	// once a minute while the stream is open, would come.
	testutil.WaitFor(t, "the page to follow the stream of changes", func() bool {
		return eval[string](t, ctx, `document.body.dataset.live || ""`) == "stream"
	})
	if got := eval[string](t, ctx, `document.getElementById("cadence").textContent`); got != "updates as locks change" {
		t.Errorf("following the stream, the page says it %q; want \"updates as locks change\"", got)
	}
	eval[bool](t, ctx, `window.notReloaded = true`)
	put("/lock/nightly-db", `{"key": "backup", "lock_by": "nightly/backup"}`)
	took := waitForCard(t, ctx, "nightly-db", 30*time.Second)
	t.Logf("a new lock appeared on the page %v after it was taken, through the stream", took.Round(10*time.Millisecond))
	if !eval[bool](t, ctx, `window.notReloaded === true`) {
		t.Errorf("the page reloaded to show a change; want it to fetch and swap the list")
	}
	events := eval[string](t, ctx, `[...document.querySelectorAll(".lock .events li")].map(li => li.textContent).join("|")`)
	for _, want := range []string{"ago: taken by nightly/backup", "ago: taken by deploy/prod", "ago: taken by integration-tests"} {
		if !strings.Contains(events, want) {
			t.Errorf("the locks' latest changes %q do not say %q", events, want)
		}
	}

	// Typing in the filter shows only what matches, and the URL says so.
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("q"), "stag")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the filter to leave only staging", func() bool { return slices.Equal(lockNames(t, ctx), []string{"staging"}) })
	if loc := eval[string](t, ctx, `location.search`); loc != "?q=stag&held_over=1h" {
		t.Errorf("after filtering, the URL's query is %q; want ?q=stag&held_over=1h", loc)
	}
	if got := eval[[]string](t, ctx, `[...document.querySelectorAll("#locks mark")].map(m => m.textContent)`); !slices.Equal(got, []string{"stag"}) {
		t.Errorf("the marked text is %q; want the one match, stag (in staging)", got)
	}

	// One click puts the locks in name order, and the refresh keeps it.
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("q"), "\b\b\b\b")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the cleared filter to show every lock", func() bool { return len(lockNames(t, ctx)) == 4 })
	if err := chromedp.Do(ctx, chromedp.Click(`#order a`), chromedp.WaitVisible(chromedp.ID("locks"))); err != nil {
		t.Fatal(err)
	}
	byName := []string{hostile, "nightly-db", "prod", "staging"}
	testutil.WaitFor(t, "the locks in name order", func() bool { return slices.Equal(lockNames(t, ctx), byName) })
	// A change refreshes the list, which stays in name order.
	put("/lock/backups", `{"key": "weekly", "lock_by": "weekly/backup"}`)
	byName = []string{hostile, "backups", "nightly-db", "prod", "staging"}
	testutil.WaitFor(t, "the page to show backups, in name order", func() bool { return slices.Equal(lockNames(t, ctx), byName) })

	checkColourSchemes(t, ctx)
	checkPhoneWidth(t, ctx, base)
	if p := problems(); len(p) > 0 {
		t.Errorf("the browser console reported problems:\n%s", strings.Join(p, "\n"))
	}
	checkWithoutJavaScript(t, ctx, base, put)
	checkAReadCredential(t, ctx, ls, auth)
	screenshotABoard(t, ctx)
}

// liveStatusServer serves the real router, over a table whose clock the
// test moves, on a port of its own and behind the credential ci:s3cret,
// until the test ends.
func liveStatusServer(t *testing.T) (*liveServer, *testutil.FakeClock) {
	t.Helper()
	ts, _, clock := statusServer(t, "ci", "s3cret")
	srv := httptest.NewServer(ts.handler)
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() }) // the page's stream stays open
	return &liveServer{url: srv.URL, client: &http.Client{Timeout: 10 * time.Second}}, clock
}

// checkAReadCredential signs in, in a tab of its own, as a credential
// that may read prod alone: the page says so, shows prod and no other
// lock, and prod's holder but not its key.
func checkAReadCredential(t *testing.T, parent context.Context, ls *liveServer, admin []string) {
	t.Helper()
	status, body := ls.call(t, "POST", "/credentials", `{"name": "watch-prod", "grants": [{"role": "read", "prefix": "prod"}]}`, admin...)
	var c struct{ Secret string }
	if status != http.StatusCreated || json.Unmarshal(body, &c) != nil {
		t.Fatalf("POST /credentials = %d %s", status, body)
	}
	ctx, cancel := chromedp.NewContext(parent)
	defer cancel()
	base := strings.Replace(ls.url, "http://", "http://watch-prod:"+c.Secret+"@", 1)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("locks"))); err != nil {
		t.Fatalf("loading the status page as watch-prod: %v", err)
	}
	if got := lockNames(t, ctx); !slices.Equal(got, []string{"prod"}) {
		t.Errorf("as watch-prod, the page shows %q; want prod alone", got)
	}
	text := eval[string](t, ctx, `document.body.innerText`)
	if !strings.Contains(text, "Signed in as watch-prod") || !strings.Contains(text, "deploy/prod") || strings.Contains(text, "deploy-v1.4") {
		t.Errorf("as watch-prod, the page says:\n%s\nwant \"Signed in as watch-prod\", prod's holder, and not its key", text)
	}
}

// screenshotABoard shows the page a team sees on a working day, from a
// state file written with times in the past, and saves its screenshot
// (the README's picture), in a tab of its own.
func screenshotABoard(t *testing.T, parent context.Context) {
	t.Helper()
	ctx, cancel := chromedp.NewContext(parent)
	defer cancel()
	now := time.Now().UTC()
	at := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339) }
	state := filepath.Join(t.TempDir(), "locks.yml")
	testutil.WriteFile(t, state, fmt.Sprintf(`version: 1
seq: 9
last_token: 41
locks:
  prod-cloudfoundry:
    key: deploy-v2.14
    locked_by: {deploy-prod: 1}
    token: 38
    acquired_at: %[1]s
    holders:
      deploy-prod: {since: %[1]s, note: "https://ci.example.com/teams/main/pipelines/cf/jobs/deploy-prod/builds/1042"}
  staging:
    key: tests
    locked_by: {api-tests: 1, e2e-tests: 1}
    token: 40
    acquired_at: %[2]s
    holders:
      api-tests: {since: %[2]s, expires_at: %[3]s, note: "https://ci.example.com/teams/main/pipelines/api/jobs/test/builds/311"}
      e2e-tests: {since: %[4]s, expires_at: %[3]s}
  db-migrations:
    key: migrate-2026-12
    locked_by: {schema-migrate: 1}
    token: 41
    acquired_at: %[5]s
    holders:
      schema-migrate: {since: %[5]s, expires_at: %[6]s, note: "https://ci.example.com/teams/data/pipelines/db/jobs/migrate/builds/87"}
  browsers-2:
    key: e2e
    locked_by: {e2e-nightly: 1}
    token: 39
    acquired_at: %[4]s
    holders:
      e2e-nightly: {since: %[4]s, expires_at: %[3]s}
pools:
  browsers:
    members: [browsers-1, browsers-2, browsers-3]
last_event: 7
history:
  - {id: 1, lock: prod-cloudfoundry, at: %[7]s, event: taken, holder: deploy-prod, key: deploy-v2.13, token: 35, counts: 1}
  - {id: 2, lock: prod-cloudfoundry, at: %[8]s, event: released, holder: deploy-prod, key: deploy-v2.13, token: 35, counts: 1, held: 41m0s}
  - {id: 3, lock: db-migrations, at: %[9]s, event: forced, holder: schema-migrate, key: migrate-2026-11, token: 36, counts: 1, held: 3h2m0s, by: ops (10.0.0.7)}
  - {id: 4, lock: prod-cloudfoundry, at: %[1]s, event: taken, holder: deploy-prod, key: deploy-v2.14, token: 38, counts: 1}
  - {id: 5, lock: db-migrations, at: %[5]s, event: taken, holder: schema-migrate, key: migrate-2026-12, token: 41, counts: 1}
  - {id: 6, lock: staging, at: %[2]s, event: taken, holder: api-tests, key: tests, token: 40, counts: 1}
  - {id: 7, lock: staging, at: %[4]s, event: taken, holder: e2e-tests, key: tests, token: 40, counts: 1, waited: 16m12s}
`, at(-7*time.Hour-12*time.Minute), at(-25*time.Minute), at(35*time.Minute), at(-9*time.Minute), at(-52*time.Minute), at(4*time.Minute),
		at(-26*time.Hour), at(-25*time.Hour-19*time.Minute), at(-2*time.Hour)))
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": state})
	waiter := putAsyncAuth(t, ls.url, "/lock/staging?wait=2m", `{"key": "upgrade", "lock_by": "upgrade-staging"}`)
	defer func() {
		ls.call(t, "DELETE", "/lock/staging?force=true", `{}`)
		<-waiter
	}()
	testutil.WaitFor(t, "the upgrade to queue for staging", func() bool { return ls.waiting(t, "staging") == 1 })
	if err := chromedp.Do(ctx, chromedp.Navigate(ls.url+"/"), chromedp.WaitVisible(chromedp.ID("locks"))); err != nil {
		t.Fatalf("loading the board: %v", err)
	}
	if got, want := lockNames(t, ctx), []string{"prod-cloudfoundry", "staging", "db-migrations", "browsers-2"}; !slices.Equal(got, want) {
		t.Errorf("the board's cards = %q; want %q", got, want)
	}
	saveScreenshot(t, ctx)
}

// saveScreenshot saves the page as a PNG at -screenshot and checks that it
// is one, of the window's width.
func saveScreenshot(t *testing.T, ctx context.Context) {
	t.Helper()
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(shot))
	if err != nil || cfg.Width != 1280 {
		t.Fatalf("screenshot is not a 1280-wide PNG (%v, %d wide)", err, cfg.Width)
	}
	if err := os.WriteFile(*screenshotPath, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot saved to %s", *screenshotPath)
}

// checkColourSchemes checks that the page follows the system's light or
// dark scheme.
func checkColourSchemes(t *testing.T, ctx context.Context) {
	t.Helper()
	for scheme, want := range map[string]string{"light": "rgb(255, 255, 255)", "dark": "rgb(13, 17, 23)"} {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := eval[string](t, ctx, `getComputedStyle(document.body).backgroundColor`); got != want {
			t.Errorf("with prefers-color-scheme %s the background is %s; want %s", scheme, got, want)
		}
	}
}

// checkPhoneWidth loads the page on a phone's screen: nothing is wider
// than the screen, so nothing needs scrolling sideways.
func checkPhoneWidth(t *testing.T, ctx context.Context, base string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(3)),
		chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("locks"))); err != nil {
		t.Fatal(err)
	}
	if w := eval[[]int](t, ctx, `[document.documentElement.scrollWidth, window.innerWidth]`); w[0] > w[1] {
		t.Errorf("on a 390 px wide phone the page is %d px wide; want no sideways scrolling", w[0])
	}
	if err := chromedp.Do(ctx, chromedp.ResetViewport()); err != nil {
		t.Fatal(err)
	}
}

// checkWithoutJavaScript loads the page in a tab with JavaScript off: it
// shows the locks, refreshes itself by reloading, and the filter is a form.
func checkWithoutJavaScript(t *testing.T, parent context.Context, base string, put func(path, body string)) {
	t.Helper()
	ctx, cancel := chromedp.NewContext(parent)
	defer cancel()
	if _, err := chromedp.Call(ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("locks"))); err != nil {
		t.Fatal(err)
	}
	// A mark on the page, made through the DevTools protocol: a reload
	// takes it away, a script's refresh would not.
	if err := chromedp.Do(ctx, chromedp.SetAttributeValue(chromedp.CSS("body"), "data-loaded-once", "yes")); err != nil {
		t.Fatal(err)
	}
	put("/lock/no-script", `{"key": "k", "lock_by": "a"}`)
	took := waitForCard(t, ctx, "no-script", statuspage.Refresh*time.Second+3*time.Second)
	t.Logf("without JavaScript, a new lock appeared %v after it was taken", took.Round(10*time.Millisecond))
	if mark, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("body"), "data-loaded-once")); err != nil || mark.Exists {
		t.Errorf("without JavaScript the page was not reloaded to refresh (mark %+v, %v)", mark, err)
	}

	if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.ID("q"), "nightly"), chromedp.Submit(chromedp.ID("q"))); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the filter form to leave only nightly-db", func() bool {
		return slices.Equal(lockNames(t, ctx), []string{"nightly-db"})
	})
}
