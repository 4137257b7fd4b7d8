package main

import (
	"cmp"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/testutil"
)

// Credentials with roles on name prefixes, over real HTTP, on both
// stores.

// team is a server with AUTH_USER root and a credential of each role on
// team-a/, each with its secret.
type team struct {
	url     string
	secrets map[string]string // credential name -> secret
}

// newTeam starts the real router over tab behind an HTTP server, and
// makes the credentials read-a, lock-a, operate-a (each its role on
// team-a/) and admin-all (admin on every name) as root.
func newTeam(t *testing.T, tab *enginetest.Table) *team {
	t.Helper()
	srv := httptest.NewServer(serveTable(tab, tab.Path, "root", "rootpass").handler)
	t.Cleanup(srv.Close)
	tm := &team{url: srv.URL, secrets: map[string]string{"root": "rootpass"}}
	for _, c := range []struct{ name, grants string }{
		{"read-a", `[{"role": "read", "prefix": "team-a/"}]`},
		{"lock-a", `[{"role": "lock", "prefix": "team-a/"}]`},
		{"operate-a", `[{"role": "operate", "prefix": "team-a/"}]`},
		{"admin-all", `[{"role": "admin", "prefix": ""}]`},
	} {
		status, body := tm.do(t, "root", "POST", "/credentials", `{"name": "`+c.name+`", "grants": `+c.grants+`}`)
		var reply struct{ Secret string }
		if status != http.StatusCreated || json.Unmarshal([]byte(body), &reply) != nil || !strings.HasPrefix(reply.Secret, "lkr_") {
			t.Fatalf("POST /credentials %s = %d %s; want 201 with a secret", c.name, status, body)
		}
		tm.secrets[c.name] = reply.Secret
	}
	return tm
}

// do sends a request as the credential called as (basic auth with its
// name and secret; "" for none) and returns the answer.
func (tm *team) do(t *testing.T, as, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, tm.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if as != "" {
		req.SetBasicAuth(as, tm.secrets[as])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		return resp.StatusCode, "" // a stream: its answer is that it began
	}
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// state is what the server holds, as root sees it: the locks, the pools
// and the credentials.
func (tm *team) state(t *testing.T) string {
	t.Helper()
	var all []string
	for _, path := range []string{"/locks", "/pools", "/credentials"} {
		status, body := tm.do(t, "root", "GET", path, "")
		if status != http.StatusOK {
			t.Fatalf("GET %s as root = %d %s", path, status, body)
		}
		all = append(all, body)
	}
	// When each credential was last used changes with every request.
	var creds []map[string]any
	_ = json.Unmarshal([]byte(all[2]), &creds)
	for _, c := range creds {
		delete(c, "last_used")
	}
	data, _ := json.Marshal(creds)
	all[2] = string(data)
	return strings.Join(all, "\n")
}

// TestEveryRouteAsksForItsRole: every route of the API, by each role, on
// a name inside its grant and one outside: the role the route needs, or
// more, is let through; less is refused with 403 saying what is missing,
// and nothing changes. Both stores.
func TestEveryRouteAsksForItsRole(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tm := newTeam(t, open(t))
		for _, p := range []string{"team-a/pool", "team-b/pool"} {
			member := strings.TrimSuffix(p, "pool") + "m1"
			if status, body := tm.do(t, "root", "PUT", "/pool/"+strings.ReplaceAll(p, "/", "%2F"), `{"members": ["`+member+`"]}`); status != http.StatusOK {
				t.Fatalf("PUT /pool/%s = %d %s", p, status, body)
			}
		}
		roles := map[string]access.Role{"read-a": access.Read, "lock-a": access.Lock, "operate-a": access.Operate, "admin-all": access.Admin}
		for _, side := range []string{"team-a", "team-b"} {
			name := side + "/x"
			esc := side + "%2Fx"
			pool := side + "%2Fpool"
			body := `{"key": "k", "lock_by": "me"}`
			set := `{"locks": ["` + name + `", "` + side + `/y"], "key": "k", "lock_by": "me"}`
			for _, r := range []struct {
				method, path, body string
				needs              access.Role
				everyName          bool // needs its role on every name (admin on "")
			}{
				{"GET", "/lock/" + esc, "", access.Read, false},
				{"GET", "/history/" + esc, "", access.Read, false},
				{"GET", "/events?lock=" + esc + "&last_event_id=0", "", access.Read, false},
				{"GET", "/pool/" + pool, "", access.Read, false},
				{"PUT", "/lock/" + esc, body, access.Lock, false},
				{"PATCH", "/lock/" + esc, `{"key": "k", "lock_by": "me", "ttl": "1h"}`, access.Lock, false},
				{"DELETE", "/lock/" + esc, body, access.Lock, false},
				{"PUT", "/locks", set, access.Lock, false},
				{"PATCH", "/locks", `{"locks": ["` + name + `"], "key": "k", "lock_by": "me", "ttl": "1h"}`, access.Lock, false},
				{"DELETE", "/locks", set, access.Lock, false},
				{"PUT", "/pool/" + pool + "/claim", body, access.Lock, false},
				{"DELETE", "/lock/" + esc + "?force=true", "", access.Operate, false},
				{"DELETE", "/locks?force=true", `{"locks": ["` + name + `"]}`, access.Operate, false},
				{"PUT", "/pool/" + pool, `{"members": ["` + side + `/m1", "` + side + `/m2"]}`, access.Operate, false},
				{"GET", "/credentials", "", access.Admin, true},
				{"POST", "/credentials", `{"name": "new-` + side + `", "grants": [{"role": "read", "prefix": ""}]}`, access.Admin, true},
				{"POST", "/credentials/read-a/rotate", "", access.Admin, true},
			} {
				for as, role := range roles {
					allowed := role >= r.needs && (side == "team-a" && !r.everyName || role == access.Admin)
					before := tm.state(t)
					status, got := tm.do(t, as, r.method, r.path, r.body)
					if r.path == "/credentials/read-a/rotate" && status == http.StatusOK {
						var reply struct{ Secret string }
						_ = json.Unmarshal([]byte(got), &reply)
						tm.secrets["read-a"] = reply.Secret
					}
					switch {
					case !allowed && status != http.StatusForbidden:
						t.Errorf("%s %s %s as %s (%v) = %d %s; want 403", side, r.method, r.path, as, role, status, got)
					case !allowed && !strings.Contains(got, `the credential \"`+as+`\" has`) || !allowed && !strings.Contains(got, "needs "+r.needs.String()):
						t.Errorf("%s %s as %s: the 403 says %s; want the credential, the role it has and the role needed", r.method, r.path, as, got)
					case !allowed && tm.state(t) != before:
						t.Errorf("%s %s as %s was refused, and changed the server:\nbefore %s\nafter %s", r.method, r.path, as, before, tm.state(t))
					case allowed && (status == http.StatusForbidden || status == http.StatusUnauthorized):
						t.Errorf("%s %s as %s (%v) = %d %s; want it let through", r.method, r.path, as, role, status, got)
					}
				}
			}
		}
	})
}

// TestAReadCredentialSeesOnlyItsNamesWithoutKeys: GET /locks, GET /pools
// and a lock's history list only what the credential may read, and a
// read role sees a lock's holders but not its key.
func TestAReadCredentialSeesOnlyItsNamesWithoutKeys(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tm := newTeam(t, open(t))
		for _, name := range []string{"team-a%2Fdb", "team-b%2Fdb"} {
			if status, body := tm.do(t, "root", "PUT", "/lock/"+name, `{"key": "secret-key", "lock_by": "job"}`); status != http.StatusOK {
				t.Fatalf("PUT %s = %d %s", name, status, body)
			}
		}
		status, body := tm.do(t, "read-a", "GET", "/locks", "")
		var locks map[string]struct {
			Key      string         `json:"key"`
			LockedBy map[string]int `json:"locked_by"`
		}
		if status != http.StatusOK || json.Unmarshal([]byte(body), &locks) != nil {
			t.Fatalf("GET /locks as read-a = %d %s", status, body)
		}
		if l, ok := locks["team-a/db"]; len(locks) != 1 || !ok || l.Key != hiddenKey || l.LockedBy["job"] != 1 {
			t.Errorf("GET /locks as read-a = %s; want team-a/db alone, its holder shown and its key hidden", body)
		}
		if _, body := tm.do(t, "read-a", "GET", "/history/team-a%2Fdb", ""); strings.Contains(body, "secret-key") || !strings.Contains(body, `"holder":"job"`) {
			t.Errorf("team-a/db's history as read-a = %s; want its events, without the key", body)
		}
		if _, body := tm.do(t, "lock-a", "GET", "/lock/team-a%2Fdb", ""); !strings.Contains(body, `"key":"secret-key"`) {
			t.Errorf("GET /lock/team-a/db as lock-a = %s; want the key (it may lock it)", body)
		}
		if status, body := tm.do(t, "read-a", "DELETE", "/lock/team-a%2Fdb", `{"key": "secret-key", "lock_by": "job"}`); status != http.StatusForbidden {
			t.Errorf("read-a giving back team-a/db with its key = %d %s; want 403", status, body)
		}
	})
}

// TestEveryEventNamesItsCredential: the history says which credential
// took, gave back or forced each hold (a waiter's taking, its own
// request's), and GET /history lists every lock's events a caller may
// read, newest first, or one credential's with ?by=. Both stores.
func TestEveryEventNamesItsCredential(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tm := newTeam(t, open(t))
		steps := []struct{ as, method, path, body string }{
			{"lock-a", "PUT", "/lock/team-a%2Fx", `{"key": "a", "lock_by": "job-1"}`},
			{"lock-a", "DELETE", "/lock/team-a%2Fx", `{"key": "a", "lock_by": "job-1"}`},
			{"root", "PUT", "/lock/team-a%2Fx", `{"key": "r", "lock_by": "root-job"}`},
			{"operate-a", "DELETE", "/lock/team-a%2Fx?force=true", ""},
			{"root", "PUT", "/lock/team-b%2Fx", `{"key": "b", "lock_by": "b-job"}`},
		}
		for _, st := range steps {
			if status, body := tm.do(t, st.as, st.method, st.path, st.body); status != http.StatusOK {
				t.Fatalf("%s %s as %s = %d %s", st.method, st.path, st.as, status, body)
			}
		}
		type event struct {
			Lock, Event, Credential string
		}
		history := func(as, path string) []event {
			t.Helper()
			status, body := tm.do(t, as, "GET", path, "")
			var h struct{ Events []event }
			if status != http.StatusOK || json.Unmarshal([]byte(body), &h) != nil {
				t.Fatalf("GET %s as %s = %d %s", path, as, status, body)
			}
			return h.Events
		}
		want := []event{
			{"team-a/x", "forced", "operate-a"},
			{"team-a/x", "taken", "root"},
			{"team-a/x", "released", "lock-a"},
			{"team-a/x", "taken", "lock-a"},
		}
		if got := history("read-a", "/history/team-a%2Fx"); !reflect.DeepEqual(got, want) {
			t.Errorf("team-a/x's history = %+v; want %+v", got, want)
		}
		if got := history("read-a", "/history"); !reflect.DeepEqual(got, want) {
			t.Errorf("GET /history as read-a = %+v; want team-a/x's events alone (team-b/x is not its to read)", got)
		}
		if got := history("root", "/history?by=lock-a&limit=1"); !reflect.DeepEqual(got, want[2:3]) {
			t.Errorf("GET /history?by=lock-a&limit=1 = %+v; want lock-a's last event", got)
		}
		if got := history("root", "/history"); len(got) != 5 || got[0].Lock != "team-b/x" {
			t.Errorf("GET /history as root = %+v; want all five events, team-b/x's first", got)
		}

		// A waiter's taking is its own request's, whoever's change
		// granted it.
		if status, body := tm.do(t, "root", "PUT", "/lock/team-a%2Fq", `{"key": "r"}`); status != http.StatusOK {
			t.Fatalf("PUT = %d %s", status, body)
		}
		waited := make(chan int, 1)
		go func() {
			status, _ := tm.do(t, "lock-a", "PUT", "/lock/team-a%2Fq?wait=1m", `{"key": "a"}`)
			waited <- status
		}()
		testutil.WaitFor(t, "lock-a to wait", func() bool {
			_, body := tm.do(t, "root", "GET", "/lock/team-a%2Fq", "")
			return strings.Contains(body, `"requestor":"a"`)
		})
		if status, body := tm.do(t, "root", "DELETE", "/lock/team-a%2Fq", `{"key": "r"}`); status != http.StatusOK {
			t.Fatalf("DELETE = %d %s", status, body)
		}
		if status := <-waited; status != http.StatusOK {
			t.Fatalf("lock-a's wait = %d", status)
		}
		if got := history("root", "/history/team-a%2Fq?limit=1"); len(got) != 1 || got[0] != (event{"team-a/q", "taken", "lock-a"}) {
			t.Errorf("the waiter's taking = %+v; want lock-a's", got)
		}
	})
}

// TestTheStatusPageOffersFormsToOperatorsOnly: the page's force release,
// waiter removal and reservation forms are rendered for the locks the
// viewer may operate on, and for no one else.
func TestTheStatusPageOffersFormsToOperatorsOnly(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tm := newTeam(t, open(t))
		for _, path := range []string{"/lock/team-a/db", "/lock/team-b/db"} {
			if status, body := tm.do(t, "root", "PUT", path, `{"key": "k", "lock_by": "ci"}`); status != http.StatusOK {
				t.Fatalf("PUT %s = %d %s", path, status, body)
			}
		}
		forms := regexp.MustCompile(`data-card="lock ([^"]+)"|data-path="(/lock/[^"?]+)\?force=true"|<details id="reserve"`)
		for _, tc := range []struct {
			as   string
			want []string // the cards shown, each followed by its force form's path where there is one
		}{
			{"read-a", []string{"team-a/db"}},
			{"lock-a", []string{"team-a/db"}},
			{"operate-a", []string{"reserve", "team-a/db", "/lock/team-a%2Fdb"}},
			{"admin-all", []string{"reserve", "team-a/db", "/lock/team-a%2Fdb", "team-b/db", "/lock/team-b%2Fdb"}},
		} {
			status, body := tm.do(t, tc.as, "GET", "/", "")
			var got []string
			for _, m := range forms.FindAllStringSubmatch(body, -1) {
				got = append(got, cmp.Or(m[1], m[2], "reserve"))
			}
			if status != http.StatusOK || !slices.Equal(got, tc.want) {
				t.Errorf("as %s, GET / = %d with cards and forms %q; want %q", tc.as, status, got, tc.want)
			}
			if tc.as == "read-a" || tc.as == "lock-a" {
				if n := strings.Count(body, `class="op`); n != 0 {
					t.Errorf("as %s, the page has %d operators' forms; want none", tc.as, n)
				}
			}
		}
	})
}
