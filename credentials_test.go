package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/testutil"
)

// Credentials through the whole server (run() on a real port): what is
// kept of their secrets, revocation across nodes, throttled logins, and
// bad input.

// as sends a request to ls with the credential name:secret (basic auth),
// or as a bearer when name is "".
func (ls *liveServer) as(tb testing.TB, name, secret, method, path, body string) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(method, ls.url+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if name == "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	} else {
		req.SetBasicAuth(name, secret)
	}
	resp, err := ls.client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		return resp.StatusCode, "" // a stream: that it began is its answer
	}
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// makeCredential makes a credential on ls as root and returns its
// secret.
func (ls *liveServer) makeCredential(tb testing.TB, body string) string {
	tb.Helper()
	status, reply := ls.as(tb, "root", "rootpass", "POST", "/credentials", body)
	var c struct{ Secret string }
	if status != http.StatusCreated || json.Unmarshal([]byte(reply), &c) != nil || c.Secret == "" {
		tb.Fatalf("POST /credentials %s = %d %s", body, status, reply)
	}
	return c.Secret
}

// TestSecretsAreKeptNowhere makes, uses, rotates and revokes credentials,
// then looks for every secret (and AUTH_PASS) where the server writes:
// the state file and its journal, or every table of the database; the
// log; /metrics; the histories; the stream; the status page; a
// credential's listing; locker migrate's output. None is found.
func TestSecretsAreKeptNowhere(t *testing.T) {
	for _, store := range []string{"file", "postgresql"} {
		t.Run(store, func(t *testing.T) {
			env := map[string]string{"AUTH_USER": "root", "AUTH_PASS": "rootpass-9a8b7c"}
			state, db := filepath.Join(t.TempDir(), "locks.yml"), ""
			if store == "file" {
				env["LOCKER_CONFIG"] = state
			} else {
				db = testutil.PostgresSchema(t)
				env["LOCKER_DATABASE_URL"] = db
			}
			ls := startRun(t, env)
			root := func(method, path, body string) string {
				t.Helper()
				status, reply := ls.as(t, "root", "rootpass-9a8b7c", method, path, body)
				if status >= 400 {
					t.Fatalf("%s %s as root = %d %s", method, path, status, reply)
				}
				return reply
			}
			var c struct{ Secret string }
			_ = json.Unmarshal([]byte(root("POST", "/credentials", `{"name": "ci", "grants": [{"role": "operate", "prefix": ""}]}`)), &c)
			secrets := []string{"rootpass-9a8b7c", c.Secret}
			_ = json.Unmarshal([]byte(root("POST", "/credentials", `{"name": "gone", "grants": [{"role": "read", "prefix": ""}]}`)), &c)
			secrets = append(secrets, c.Secret)
			for _, step := range []struct{ method, path, body string }{
				{"PUT", "/lock/prod", `{"key": "k", "lock_by": "job", "note": "ci"}`},
				{"DELETE", "/lock/prod?force=true", ""},
				{"PUT", "/lock/prod", `{"key": "k2"}`},
			} {
				if status, reply := ls.as(t, "ci", secrets[1], step.method, step.path, step.body); status != http.StatusOK {
					t.Fatalf("%s %s as ci = %d %s", step.method, step.path, status, reply)
				}
			}
			if status, _ := ls.as(t, "", secrets[2], "GET", "/locks", ""); status != http.StatusOK {
				t.Fatalf("GET /locks with gone's secret as a bearer = %d; want 200", status)
			}
			_ = json.Unmarshal([]byte(root("POST", "/credentials/ci/rotate", "")), &c)
			secrets = append(secrets, c.Secret)
			root("DELETE", "/credentials/gone", "")
			if status, _ := ls.as(t, "ci", secrets[1], "GET", "/locks", ""); status != http.StatusUnauthorized {
				t.Errorf("ci's secret before the rotation = %d; want 401", status)
			}
			seen := strings.Join([]string{root("GET", "/history", ""), root("GET", "/history/prod", ""), root("GET", "/credentials", ""),
				root("GET", "/", ""), root("GET", "/metrics", ""), root("GET", "/locks", "")}, "\n")
			stream := testutil.OpenStream(t, strings.Replace(ls.url, "://", "://root:rootpass-9a8b7c@", 1), "", "0")
			for _, e := range stream.Drain(300 * time.Millisecond) {
				seen += e.Data
			}
			if err := ls.shutdown(); err != nil {
				t.Fatal(err)
			}
			seen += ls.log.String()
			if store == "file" {
				seen += testutil.OnDisk(t, state)
				var out strings.Builder
				if err := run(context.Background(), []string{"migrate", "--from", state, "--to", testutil.PostgresSchema(t)}, nil, &out, io.Discard); err != nil {
					t.Fatal(err)
				}
				seen += out.String()
			} else {
				seen += dumpTables(t, db)
			}
			for i, secret := range secrets {
				if strings.Contains(seen, secret) {
					t.Errorf("secret %d is written where the server writes", i)
				}
			}
			if !strings.Contains(seen, access.HashSecret(secrets[3])) {
				t.Error("ci's secret's hash is nowhere in what the store keeps: the scan read the wrong place")
			}
		})
	}
}

// dumpTables returns every row of every table of the schema at db, as
// text.
func dumpTables(t *testing.T, db string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) < 5 {
		t.Fatalf("the schema's tables: %v, %v", tables, err)
	}
	var all strings.Builder
	for _, table := range tables {
		rows, err := conn.Query(ctx, "SELECT t::text FROM "+pgx.Identifier{table}.Sanitize()+" t")
		if err != nil {
			t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		all.WriteString(strings.Join(lines, "\n"))
	}
	return all.String()
}

// TestARevokedCredentialIsRefusedOnEveryNode: on two nodes of one
// database, a credential made on one is known to the other at once, one
// revoked on one is refused by the other (told by the database, or its
// next heartbeat), and one that expired is refused at once.
func TestARevokedCredentialIsRefusedOnEveryNode(t *testing.T) {
	env := map[string]string{"AUTH_USER": "root", "AUTH_PASS": "rootpass", "LOCKER_DATABASE_URL": testutil.PostgresSchema(t)}
	a, b := startRun(t, env), startRun(t, env)
	secret := a.makeCredential(t, `{"name": "ci", "grants": [{"role": "lock", "prefix": ""}]}`)
	// A login the keyring refuses reads the credentials again first: the
	// other node knows a credential made a moment ago at once.
	if status, body := b.as(t, "ci", secret, "GET", "/locks", ""); status != http.StatusOK {
		t.Fatalf("the new credential on node b at once: %d %s; want 200", status, body)
	}
	if status, body := a.as(t, "root", "rootpass", "DELETE", "/credentials/ci", ""); status != http.StatusOK {
		t.Fatalf("DELETE /credentials/ci = %d %s", status, body)
	}
	revoked := time.Now()
	testutil.WaitFor(t, "node b to refuse the revoked credential", func() bool {
		status, _ := b.as(t, "ci", secret, "GET", "/locks", "")
		return status == http.StatusUnauthorized
	})
	t.Logf("node b refused the revoked credential %v after node a revoked it", time.Since(revoked).Round(time.Millisecond))

	short := a.makeCredential(t, `{"name": "short", "grants": [{"role": "read", "prefix": ""}], "expires_in": "2s"}`)
	status, body := a.as(t, "root", "rootpass", "GET", "/credentials", "")
	var creds []struct {
		Name      string
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(body), &creds); status != http.StatusOK || err != nil {
		t.Fatalf("GET /credentials = %d %s", status, body)
	}
	for _, c := range creds {
		if c.Name == "short" {
			time.Sleep(time.Until(c.ExpiresAt)) // the server's clock, not a synchronisation
		}
	}
	for _, node := range []*liveServer{a, b} {
		if status, _ := node.as(t, "short", short, "GET", "/locks", ""); status != http.StatusUnauthorized {
			t.Errorf("an expired credential = %d; want 401", status)
		}
	}
}

// TestCredentialsMadeAtOnceAllLogIn: credentials made by several
// requests at once each log in on that node as soon as it is answered
// (two reloads of the keyring that finished out of order once left the
// newer credential out), on both stores.
func TestCredentialsMadeAtOnceAllLogIn(t *testing.T) {
	onEachStore(t, map[string]string{"AUTH_USER": "root", "AUTH_PASS": "rootpass"}, func(t *testing.T, env map[string]string) {
		ls := startRun(t, env)
		const makers, each = 8, 10
		var wg sync.WaitGroup
		for m := range makers {
			wg.Go(func() {
				for i := range each {
					name := fmt.Sprintf("team-%d-%d", m, i)
					secret := ls.makeCredential(t, `{"name": "`+name+`", "grants": [{"role": "lock", "prefix": "`+name+`/"}]}`)
					if status, body := ls.as(t, name, secret, "PUT", "/lock/"+name+"/deploy", `{"key": "k"}`); status != http.StatusOK {
						t.Errorf("%s, just made: PUT = %d %s; want 200", name, status, body)
					}
				}
			})
		}
		wg.Wait()
	})
}

// TestFailedLoginsAreThrottled: after many failed logins from one
// address, even the right credential is refused for a while (429, with
// Retry-After), and the log says so.
func TestFailedLoginsAreThrottled(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "AUTH_USER": "root", "AUTH_PASS": "rootpass"})
	for range 20 {
		if status, _ := ls.as(t, "root", "guess", "GET", "/locks", ""); status != http.StatusUnauthorized {
			t.Fatalf("a wrong password = %d; want 401", status)
		}
	}
	req, _ := http.NewRequest("GET", ls.url+"/locks", nil)
	req.SetBasicAuth("root", "rootpass")
	resp, err := ls.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "20 failed logins") {
		t.Errorf("the right password after 20 wrong ones = %d, Retry-After %q, %s; want 429 saying why", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if !strings.Contains(ls.log.String(), "logins refused: too many failed") {
		t.Errorf("the log does not say logins were refused:\n%s", ls.log)
	}
}

// TestBadCredentialsAreRefused: each bad request to make a credential is
// a 4xx naming what is wrong, and changes nothing; a server without
// AUTH_USER has no admin to make one; a credentials file of the wrong
// shape, or holding a secret, stops the start naming it.
func TestBadCredentialsAreRefused(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "AUTH_USER": "root", "AUTH_PASS": "rootpass"})
	ls.makeCredential(t, `{"name": "ci", "grants": [{"role": "lock", "prefix": ""}]}`)
	_, before := ls.as(t, "root", "rootpass", "GET", "/credentials", "")
	for _, tc := range []struct {
		body   string
		status int
		want   string
	}{
		{`{"name": "x", "grants": [{"role": "write", "prefix": ""}]}`, 400, `"write" is not a role`},
		{`{"name": "", "grants": [{"role": "read", "prefix": ""}]}`, 400, "needs a name"},
		{`{"name": "a/b", "grants": [{"role": "read", "prefix": ""}]}`, 400, "no slash"},
		{`{"name": "x", "grants": []}`, 400, "at least one grant"},
		{`{"name": "x", "grants": [{"role": "read", "prefix": "a/"}, {"role": "lock", "prefix": "a/"}]}`, 400, `two grants are on the prefix "a/"`},
		{`{"name": "x", "grants": [{"role": "read", "prefix": "a/", "scope": "x"}]}`, 400, `"grants" is a list of`},
		{`{"name": "x", "grants": {"role": "read"}}`, 400, `"grants" is a list of`},
		{`{"name": "x", "grants": [{"role": "read", "prefix": ""}], "expires_in": "soon"}`, 400, "expires_in must be a positive duration"},
		{`{"name": "x", "grant": [{"role": "read", "prefix": ""}]}`, 400, `unknown field "grant"`},
		{`{"name": "ci", "grants": [{"role": "read", "prefix": ""}]}`, 409, `a credential called "ci" was made by root`},
		{`{"name": "root", "grants": [{"role": "read", "prefix": ""}]}`, 400, "is AUTH_USER"},
	} {
		status, body := ls.as(t, "root", "rootpass", "POST", "/credentials", tc.body)
		var e struct{ Error string }
		if status != tc.status || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, tc.want) {
			t.Errorf("POST /credentials %s = %d %s; want %d saying %q", tc.body, status, body, tc.status, tc.want)
		}
	}
	lastUsed := regexp.MustCompile(`"last_used":"[^"]*",`)
	if _, after := ls.as(t, "root", "rootpass", "GET", "/credentials", ""); lastUsed.ReplaceAllString(after, "") != lastUsed.ReplaceAllString(before, "") {
		t.Errorf("the refused requests changed the credentials:\nbefore %s\nafter %s", before, after)
	}

	open := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml")})
	if status, body := open.call(t, "POST", "/credentials", `{"name": "x", "grants": [{"role": "read", "prefix": ""}]}`); status != http.StatusForbidden || !strings.Contains(string(body), "set AUTH_USER and AUTH_PASS") {
		t.Errorf("POST /credentials on an open server = %d %s; want 403 saying to set AUTH_USER", status, body)
	}

	dir := t.TempDir()
	secret, hash := access.NewSecret()
	for _, f := range []struct{ text, want string }{
		{"credentials:\n  - name: ci\n    hash: " + secret + "\n    grants: [{role: lock, prefix: \"\"}]\n", `credential 1 ("ci"): a credential's hash is "sha256:"`},
		{"creds:\n  - name: ci\n", "not a credentials file"},
		{"credentials:\n  - name: ci\n    hash: " + hash + "\n    grants: [{role: boss, prefix: \"\"}]\n", `"boss" is not a role`},
		{"credentials:\n  - name: ci\n    hash: " + hash + "\n    grants: [{role: read, prefix: \"\"}]\n  - name: ci\n    hash: " + hash + "\n    grants: [{role: read, prefix: \"\"}]\n", `"ci" is given twice`},
	} {
		path := filepath.Join(dir, "credentials.yml")
		if err := os.WriteFile(path, []byte(f.text), 0o600); err != nil {
			t.Fatal(err)
		}
		err := run(context.Background(), nil, []string{"LOCKER_CONFIG=" + filepath.Join(dir, "locks.yml"), "AUTH_USER=root", "AUTH_PASS=rootpass",
			"LOCKER_CREDENTIALS_FILE=" + path, "PORT=0"}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "LOCKER_CREDENTIALS_FILE") || !strings.Contains(err.Error(), f.want) {
			t.Errorf("a start with the credentials file\n%s= %v; want an error naming LOCKER_CREDENTIALS_FILE and saying %q", f.text, err, f.want)
		}
	}
}

// TestAReadCredentialOnlyHearsItsOwnLocks: a stream followed with a read
// credential on team-a/, on one node, is sent the events of team-a/'s
// locks changed through another node, keys hidden, and none of
// team-b/'s.
func TestAReadCredentialOnlyHearsItsOwnLocks(t *testing.T) {
	env := map[string]string{"AUTH_USER": "root", "AUTH_PASS": "rootpass", "LOCKER_DATABASE_URL": testutil.PostgresSchema(t)}
	a, b := startRun(t, env), startRun(t, env)
	secret := a.makeCredential(t, `{"name": "watch-a", "grants": [{"role": "read", "prefix": "team-a/"}]}`)
	if status, body := b.as(t, "watch-a", secret, "GET", "/locks", ""); status != http.StatusOK {
		t.Fatalf("watch-a on node b at once: %d %s; want 200", status, body)
	}
	stream := testutil.OpenStream(t, strings.Replace(b.url, "://", "://watch-a:"+secret+"@", 1), "", "")
	for i := range 10 {
		for _, name := range []string{"team-b%2Fdb", "team-a%2Fdb"} {
			if status, body := a.as(t, "root", "rootpass", "PUT", "/lock/"+name, `{"key": "k-`+string(rune('0'+i))+`"}`); status != http.StatusOK {
				t.Fatalf("PUT %s = %d %s", name, status, body)
			}
			if status, body := a.as(t, "root", "rootpass", "DELETE", "/lock/"+name, `{"key": "k-`+string(rune('0'+i))+`"}`); status != http.StatusOK {
				t.Fatalf("DELETE %s = %d %s", name, status, body)
			}
		}
	}
	for got := 0; got < 20; got++ { // team-a/db's twenty; team-b/db's came before each
		e := stream.NextEvent(t)
		if e.Lock != "team-a/db" || e.Key != hiddenKey {
			t.Fatalf("watch-a's stream sent %+v; want team-a/db's events alone, their keys hidden", e)
		}
	}
}

// TestTheOriginalResourcesRequestsWorkWithACredential: the original
// locker-resource's scripts send curl -fsS -u USERNAME:PASSWORD with
// {"key", "requestor"} bodies; with a lock credential's name and secret
// as their username and password they take and give back their team's
// locks, and fail (curl's exit 22: an HTTP error) on another team's.
func TestTheOriginalResourcesRequestsWorkWithACredential(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is not on this machine (it is on every machine this project runs on): %v", err)
	}
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "AUTH_USER": "root", "AUTH_PASS": "rootpass"})
	secret := ls.makeCredential(t, `{"name": "team-a-ci", "grants": [{"role": "lock", "prefix": "team-a/"}]}`)
	req := func(method, lock string) (int, string) {
		cmd := exec.Command(curl, "-fsS", "-u", "team-a-ci:"+secret, ls.url+"/lock/"+lock, "-X", method, "-d", `{"key":"deploy","requestor":"pipeline-job"}`)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}
	if code, out := req("PUT", "team-a%2Fprod"); code != 0 || !strings.Contains(out, `"locked_by":{"pipeline-job":1}`) {
		t.Errorf("the original's lock with team-a-ci = exit %d %s; want it taken", code, out)
	}
	if code, out := req("DELETE", "team-a%2Fprod"); code != 0 || !strings.Contains(out, "now free") {
		t.Errorf("the original's unlock with team-a-ci = exit %d %s; want it given back", code, out)
	}
	if code, out := req("PUT", "team-b%2Fprod"); code != 22 || !strings.Contains(out, "403") {
		t.Errorf("the original's lock of team-b/prod with team-a-ci = exit %d %s; want curl's HTTP error, 403", code, out)
	}
}
