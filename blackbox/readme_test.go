package blackbox

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "TestREADME: write what the examples print into README.md and docs/*.md")

// pages are the documents whose console examples TestREADME runs, in the
// order they run: a page's examples may use what an earlier one left.
var pages = []string{"README.md", "docs/api.md", "docs/operating.md", "docs/cli.md", "docs/access.md", "docs/resource.md",
	"docs/nodes.md", "docs/deploying.md", "docs/state-file.md", "docs/upgrading.md", "docs/design.md", "docs/performance.md"}

// example is one command of a console block in a page and what it
// printed there.
type example struct {
	command string
	output  []string
	page    int // its page, in pages
	line    int // the command's line in its page, from 0
	end     int // the line after its output
}

// readmeExamples returns the commands of a page's console blocks, in
// order.
func readmeExamples(lines []string) []example {
	var out []example
	in := false
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, "```console"):
			in = true
		case in && strings.HasPrefix(l, "```"):
			in = false
			if len(out) > 0 && out[len(out)-1].end == 0 {
				out[len(out)-1].end = i
			}
		case in && strings.HasPrefix(l, "$ "):
			if len(out) > 0 && out[len(out)-1].end == 0 {
				out[len(out)-1].end = i
			}
			out = append(out, example{command: strings.TrimPrefix(l, "$ "), line: i})
		case in && len(out) > 0:
			out[len(out)-1].output = append(out[len(out)-1].output, l)
		}
	}
	return out
}

var (
	anyTime   = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)
	anyToken  = regexp.MustCompile(`"token": ?\d+`)
	anySecret = regexp.MustCompile(`lkr_[A-Za-z0-9_-]{20,}`)
	anyAgo    = regexp.MustCompile(`\b(\d+[hms])+ ago\b`)
	columns   = regexp.MustCompile(`(\S) {2,}`) // a table's padding, which an age's width moves
)

// masked is s without what changes from run to run: times, ages, tokens
// and credentials' secrets.
func masked(s string) string {
	s = anyTime.ReplaceAllString(s, "<time>")
	s = anyAgo.ReplaceAllString(s, "<ago>")
	s = columns.ReplaceAllString(s, "$1  ")
	s = anySecret.ReplaceAllString(s, "lkr_<secret>")
	return anyToken.ReplaceAllString(s, `"token": <n>`)
}

// adminPass is AUTH_PASS of the server that docs/access.md's examples run
// against.
const adminPass = "examples-admin-secret"

// TestREADME runs every console example of the README and the pages in
// docs/, in order, against one fresh server, with $LOCKER set to it, and
// checks that each prints what its page shows. go test ./blackbox -run
// TestREADME -update writes what they print into the pages instead.
func TestREADME(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README's examples need %s: %v", tool, err)
		}
	}
	docs, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		if !slices.Contains(pages, strings.TrimPrefix(filepath.ToSlash(d), "../")) {
			t.Errorf("%s is not in TestREADME's pages: its examples would not run", d)
		}
	}
	var examples []example
	texts := make([][]string, len(pages))
	for i, page := range pages {
		data, err := os.ReadFile(filepath.Join("..", page))
		if err != nil {
			t.Fatal(err)
		}
		texts[i] = strings.Split(string(data), "\n")
		for _, e := range readmeExamples(texts[i]) {
			e.page = i
			examples = append(examples, e)
		}
	}
	if len(examples) < 10 {
		t.Fatalf("found %d examples in the pages; want their console blocks", len(examples))
	}
	p := startProc(t, filepath.Join(t.TempDir(), "locks.yml"))
	// The pages' examples use curl, and the locker command line as
	// installed: on the PATH, its server in LOCKER_URL.
	path := "PATH=" + filepath.Dir(buildLocker(t)) + string(os.PathListSeparator) + os.Getenv("PATH")
	env := append(os.Environ(), "LOCKER="+p.URL, "LOCKER_URL="+p.URL, path)
	// docs/access.md's run against a server with an admin, as the page
	// says, in a directory of their own for the secrets they keep.
	admin := startProc(t, filepath.Join(t.TempDir(), "locks.yml"), "AUTH_USER=admin", "AUTH_PASS="+adminPass)
	accessEnv := append(os.Environ(), "LOCKER="+admin.URL, "LOCKER_URL="+admin.URL, path,
		"ADMIN_PASS="+adminPass, "LOCKER_USER=admin", "LOCKER_PASSWORD="+adminPass)
	accessDir := t.TempDir()
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()

	got := make([][]string, len(examples))
	for i, e := range examples {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "bash", "-c", e.command)
		cmd.Env = env
		if pages[e.page] == "docs/access.md" {
			cmd.Env, cmd.Dir = accessEnv, accessDir
		}
		// A command may leave a waiter running in the background: it must
		// hold no pipe of ours.
		cmd.Stderr = devNull
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Errorf("%s line %d: %s: %v", pages[e.page], e.line+1, e.command, err)
		}
		got[i] = strings.Split(strings.TrimRight(string(out), "\n"), "\n")
		if len(out) == 0 {
			got[i] = nil
		}
		if *update {
			continue
		}
		if g, w := masked(strings.Join(got[i], "\n")), masked(strings.Join(e.output, "\n")); g != w {
			t.Errorf("%s line %d: %s\nprinted:\n%s\nthe page shows:\n%s", pages[e.page], e.line+1, e.command, g, w)
		}
	}
	if !*update {
		return
	}
	for i := len(examples) - 1; i >= 0; i-- { // from the end, so that line numbers hold
		e := examples[i]
		lines := texts[e.page]
		texts[e.page] = append(lines[:e.line+1], append(got[i], lines[e.end:]...)...)
	}
	for i, page := range pages {
		if err := os.WriteFile(filepath.Join("..", page), []byte(strings.Join(texts[i], "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
