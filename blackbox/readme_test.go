package blackbox

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "TestREADME: write what the examples print into README.md")

// example is one command of a console block in the README and what it
// printed there.
type example struct {
	command string
	output  []string
	line    int // the command's line in the README, from 0
	end     int // the line after its output
}

// readmeExamples returns the commands of the README's console blocks, in
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
	anyTime  = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)
	anyToken = regexp.MustCompile(`"token": ?\d+`)
)

// masked is s without what changes from run to run: times and tokens.
func masked(s string) string {
	s = anyTime.ReplaceAllString(s, "<time>")
	return anyToken.ReplaceAllString(s, `"token": <n>`)
}

// TestREADME runs every console example in README.md, in order, against a
// fresh server, with $LOCKER set to it, and checks that each prints what
// the README shows. go test ./blackbox -run TestREADME -update writes what
// they print into the README instead.
func TestREADME(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README's examples need %s: %v", tool, err)
		}
	}
	path := filepath.Join("..", "README.md")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	examples := readmeExamples(lines)
	if len(examples) < 10 {
		t.Fatalf("found %d examples in the README; want its console blocks", len(examples))
	}
	p := startProc(t, filepath.Join(t.TempDir(), "locks.yml"))
	env := append(os.Environ(), "LOCKER="+p.URL)
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
		// A command may leave a waiter running in the background: it must
		// hold no pipe of ours.
		cmd.Stderr = devNull
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Errorf("README line %d: %s: %v", e.line+1, e.command, err)
		}
		got[i] = strings.Split(strings.TrimRight(string(out), "\n"), "\n")
		if len(out) == 0 {
			got[i] = nil
		}
		if *update {
			continue
		}
		if g, w := masked(strings.Join(got[i], "\n")), masked(strings.Join(e.output, "\n")); g != w {
			t.Errorf("README line %d: %s\nprinted:\n%s\nthe README shows:\n%s", e.line+1, e.command, g, w)
		}
	}
	if !*update {
		return
	}
	for i := len(examples) - 1; i >= 0; i-- { // from the end, so that line numbers hold
		e := examples[i]
		lines = append(lines[:e.line+1], append(got[i], lines[e.end:]...)...)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}
