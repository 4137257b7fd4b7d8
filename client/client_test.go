package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/client"
	"github.com/locker-ci/locker/internal/testutil"
)

// server starts a locker server of the test's own, with basic auth.
func server(t *testing.T) *testutil.Server {
	t.Helper()
	return testutil.StartServer(t, lockerBin, "LOCKER_CONFIG="+filepath.Join(t.TempDir(), "locks.yml"),
		"AUTH_USER=ci", "AUTH_PASS=s3cret")
}

// newClient returns a client of url with cfg's other settings.
func newClient(t *testing.T, url string, cfg client.Config) *client.Client {
	t.Helper()
	cfg.URL = url
	if cfg.User == "" {
		cfg.User, cfg.Password = "ci", "s3cret"
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// progress collects what a call tells Options.Progress.
type progress struct {
	mu   sync.Mutex
	msgs []string
}

func (p *progress) say(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, msg)
}

func (p *progress) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.msgs, "\n")
}

// TestALostAnswerIsNotCountedTwice: the answers to the first take and
// the first release are lost on the way back; the client sends each
// again with its Idempotency-Key, and the server counts each once.
func TestALostAnswerIsNotCountedTwice(t *testing.T) {
	s := server(t)
	direct := newClient(t, s.URL, client.Config{})
	r := client.Request{Key: "deploy", Requestor: "deploy-job", TTL: "10m"}
	var p progress
	o := client.Options{Deadline: time.Now().Add(time.Minute), Progress: p.say}

	took, err := newClient(t, testutil.DropFirstReply(t, s.URL, http.MethodPut), client.Config{}).Lock(t.Context(), "prod", r, o)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.String(), "trying again") {
		t.Fatalf("the take was not sent again; the test needs its first answer lost. It said:\n%s", &p)
	}
	if took.LockedBy["deploy-job"] != 1 {
		t.Errorf("the take's answer says %v; want deploy-job once", took.LockedBy)
	}
	if l, err := direct.Get(t.Context(), "prod"); err != nil || l.LockedBy["deploy-job"] != 1 {
		t.Fatalf("after a take sent twice, prod is held %v (%v); want deploy-job once", l.LockedBy, err)
	}

	released, err := newClient(t, testutil.DropFirstReply(t, s.URL, http.MethodDelete), client.Config{}).Unlock(t.Context(), "prod", r, o)
	if err != nil {
		t.Fatal(err)
	}
	if released.Released == nil || *released.Released != 1 || len(released.LockedBy) != 0 {
		t.Errorf("the release sent twice answers released %v, held %v; want 1 given back and prod free", released.Released, released.LockedBy)
	}
}

// TestAWaitThatRunsOutSaysWhoHoldsTheLock: a wait whose deadline passes
// is a *TimedOut whose Last is the server's refusal, naming the holder;
// while it waits, Progress hears where it stands in the queue.
func TestAWaitThatRunsOutSaysWhoHoldsTheLock(t *testing.T) {
	s := server(t)
	c := newClient(t, s.URL, client.Config{})
	if _, err := c.Lock(t.Context(), "prod", client.Request{Key: "a", Requestor: "job-a"}, client.Options{}); err != nil {
		t.Fatal(err)
	}
	var p progress
	start := time.Now()
	_, err := c.Lock(t.Context(), "prod", client.Request{Key: "b", Requestor: "job-b"}, client.Options{
		Wait: true, Deadline: time.Now().Add(1500 * time.Millisecond), Progress: p.say, ReportFirst: 200 * time.Millisecond})
	var timedOut *client.TimedOut
	if !errors.As(err, &timedOut) || !client.IsStatus(err, http.StatusLocked) {
		t.Fatalf("a wait that ran out = %v; want a *TimedOut wrapping the 423", err)
	}
	if !strings.Contains(err.Error(), `held with key "a" by job-a`) {
		t.Errorf("the error says %q; want who holds prod", err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("the wait ended after %v; want it to last until the deadline (1.5 s)", waited)
	}
	if !strings.Contains(p.String(), `waiting for "prod": held with key "a" by job-a (1`) || !strings.Contains(p.String(), "number 1 of 1 in the queue") {
		t.Errorf("while waiting, Progress heard:\n%s\nwant who holds prod and the place in the queue", &p)
	}
}

// TestMessagesSayWhatToDoInGo: without Config.Rewrite the server's advice
// names this package's settings; with it, the program's own words.
func TestMessagesSayWhatToDoInGo(t *testing.T) {
	s := server(t)
	_, err := newClient(t, s.URL, client.Config{User: "ci", Password: "wrong"}).Get(t.Context(), "prod")
	if !client.IsStatus(err, http.StatusUnauthorized) || !strings.Contains(err.Error(), "set Config.User and Config.Password") {
		t.Errorf("wrong password = %v; want a 401 that says to set Config.User and Config.Password", err)
	}
	c := newClient(t, s.URL, client.Config{})
	if _, err := c.Lock(t.Context(), "prod", client.Request{Key: "a"}, client.Options{}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Lock(t.Context(), "prod", client.Request{Key: "b"}, client.Options{})
	if !strings.HasSuffix(err.Error(), "; set Options.Wait to wait for it") {
		t.Errorf("a refusal says %q; want it to end with how to wait, in Go", err)
	}
	own := newClient(t, s.URL, client.Config{Rewrite: strings.ToUpper})
	_, err = own.Lock(t.Context(), "prod", client.Request{Key: "b"}, client.Options{})
	if !strings.HasSuffix(err.Error(), "; SEND ?WAIT=5M TO WAIT FOR IT") {
		t.Errorf("with Rewrite, a refusal says %q; want the server's words as Rewrite has them", err)
	}
}

// TestOneRequestTakesRenewsAndGivesBack: the Request a lock was taken
// with renews and releases it, though a renewal takes no note and a
// release no lease: each change sends the fields it takes. A claim with
// a Limit is refused before anything is sent.
func TestOneRequestTakesRenewsAndGivesBack(t *testing.T) {
	s := server(t)
	c := newClient(t, s.URL, client.Config{})
	r := client.Request{Key: "k", Requestor: "job", TTL: "1m", Note: "https://ci/builds/1", Limit: 2, All: true}
	if _, err := c.LockSet(t.Context(), []string{"a", "b"}, r, client.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lock(t.Context(), "a", r, client.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Renew(t.Context(), "a", r, client.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RenewSet(t.Context(), []string{"a", "b"}, r, client.Options{}); err != nil {
		t.Fatal(err)
	}
	l, err := c.Unlock(t.Context(), "a", r, client.Options{})
	if err != nil || *l.Released != 2 {
		t.Fatalf("Unlock with All = %v, released %v; want both counts back", err, l.Released)
	}
	if _, released, err := c.UnlockSet(t.Context(), []string{"b"}, r, client.Options{}); err != nil || released["b"] != 1 {
		t.Fatalf("UnlockSet = %v, released %v; want b's count back", err, released)
	}
	if _, err := c.SetPool(t.Context(), "envs", []string{"env-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Claim(t.Context(), "envs", 1, r, client.Options{}); err == nil || !strings.Contains(err.Error(), "Request.Limit") {
		t.Errorf("a claim with a Limit = %v; want it refused, naming Request.Limit", err)
	}
	r.Limit = 0
	got, err := c.Claim(t.Context(), "envs", 1, r, client.Options{})
	if err != nil || got["env-1"].Holders["job"].Note != r.Note {
		t.Errorf("a claim = %v, %v; want env-1 with the note", got, err)
	}
}

// TestEventsAreReadAsTheServerSendsThem: History and Follow give the same
// events, with the durations read and Raw the server's own JSON.
func TestEventsAreReadAsTheServerSendsThem(t *testing.T) {
	s := server(t)
	c := newClient(t, s.URL, client.Config{})
	ctx := t.Context()
	a := client.Request{Key: "a", Requestor: "job-a"}
	if _, err := c.Lock(ctx, "prod", a, client.Options{}); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = c.Unlock(ctx, "prod", a, client.Options{})
	}()
	b := client.Request{Key: "b", Requestor: "job-b", Note: "https://ci/builds/2"}
	if _, err := c.Lock(ctx, "prod", b, client.Options{Wait: true, Deadline: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	h, err := c.History(ctx, "prod", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Events) != 3 || h.Before != 0 {
		t.Fatalf("history = %+v; want three events and no more", h)
	}
	took, released := h.Events[0], h.Events[1]
	if took.Kind != client.Taken || took.Holder != "job-b" || took.Key != "b" || took.Note != b.Note || took.Waited < 200*time.Millisecond || took.Token == 0 {
		t.Errorf("the newest event = %+v; want job-b's taking, with its note, token and a wait of about 300ms", took)
	}
	if released.Kind != client.Released || released.Holder != "job-a" || released.Held < 200*time.Millisecond || released.Counts != 1 {
		t.Errorf("the event before = %+v; want job-a's release after about 300ms held", released)
	}

	body, err := c.Do(ctx, http.MethodGet, "/history/prod", nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	var wire struct{ Events []json.RawMessage }
	if err := json.Unmarshal(body, &wire); err != nil || len(wire.Events) != 3 {
		t.Fatalf("GET /history/prod = %s (%v)", body, err)
	}
	for i, raw := range wire.Events {
		if !bytes.Equal(h.Events[i].Raw, raw) {
			t.Errorf("event %d's Raw = %s; the server sent %s", i, h.Events[i].Raw, raw)
		}
	}

	fctx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	var followed []client.Event
	last, err := c.Follow(fctx, client.Filter{Lock: "prod"}, h.Events[2].ID, func(e client.Event) {
		if followed = append(followed, e); len(followed) == 2 {
			stop()
		}
	}, nil)
	if !errors.Is(err, context.Canceled) || last != took.ID {
		t.Fatalf("Follow = %d, %v; want it to stop at %d when told to", last, err, took.ID)
	}
	for i, e := range followed {
		want := h.Events[1-i]
		if e.ID != want.ID || e.Kind != want.Kind || e.Waited != want.Waited || e.Held != want.Held || !e.At.Equal(want.At) {
			t.Errorf("followed event %d = %+v; history has %+v", i, e, want)
		}
	}
}

// TestThePackageExampleBuilds: the complete program in the package's
// comment compiles against the package as it is, and go vet finds
// nothing in it.
func TestThePackageExampleBuilds(t *testing.T) {
	data, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var code []string
lines:
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "//\t"):
			code = append(code, line[len("//\t"):])
		case line == "//" && len(code) > 0:
			code = append(code, "")
		case len(code) > 0:
			break lines
		}
	}
	if len(code) < 10 || !strings.HasPrefix(code[0], "package main") {
		t.Fatalf("the package comment's first code block is not a program:\n%s", strings.Join(code, "\n"))
	}
	main := filepath.Join(t.TempDir(), "main.go")
	if err := os.WriteFile(main, []byte(strings.Join(code, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("go", "vet", main).CombinedOutput(); err != nil {
		t.Errorf("the package comment's program does not build: %v\n%s", err, out)
	}
}

// TestEveryExportedNameIsDocumented: go doc shows a comment for every
// exported type, function, method, constant, variable and field.
func TestEveryExportedNameIsDocumented(t *testing.T) {
	fset := token.NewFileSet()
	var files []*ast.File
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	pkg, err := doc.NewFromFiles(fset, files, "github.com/locker-ci/locker/client")
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	need := func(what, text string) {
		if strings.TrimSpace(text) == "" {
			missing = append(missing, what)
		}
	}
	need("the package", pkg.Doc)
	values := func(vs []*doc.Value) {
		for _, v := range vs {
			if v.Doc != "" {
				continue
			}
			for _, spec := range v.Decl.Specs { // a group's names each need their own comment
				vs := spec.(*ast.ValueSpec)
				if vs.Doc == nil && vs.Comment == nil {
					need(vs.Names[0].Name, "")
				}
			}
		}
	}
	values(pkg.Consts)
	values(pkg.Vars)
	for _, f := range pkg.Funcs {
		need(f.Name, f.Doc)
	}
	for _, typ := range pkg.Types {
		need(typ.Name, typ.Doc)
		values(typ.Consts)
		values(typ.Vars)
		for _, f := range append(typ.Funcs, typ.Methods...) {
			need(typ.Name+"."+f.Name, f.Doc)
		}
		st, ok := typ.Decl.Specs[0].(*ast.TypeSpec).Type.(*ast.StructType)
		if !ok {
			continue
		}
		// A field is documented by its own comment, or by the comment of
		// the group of fields it belongs to: the lines above it, with no
		// blank line between.
		grouped, lastLine := false, 0
		for _, field := range st.Fields.List {
			documented := field.Doc != nil || field.Comment != nil ||
				grouped && fset.Position(field.Pos()).Line == lastLine+1
			grouped, lastLine = documented, fset.Position(field.End()).Line
			for _, name := range field.Names {
				if name.IsExported() && !documented {
					need(typ.Name+"."+name.Name, "")
				}
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("exported names without a doc comment: %s", strings.Join(missing, ", "))
	}
	if _, err := os.Stat("example_test.go"); err != nil {
		t.Errorf("the package has no examples: %v", err)
	}
}
