package blackbox

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStartsFromTheFirstLayout starts this binary on a state file and
// journal that the first release's layout left (testdata/first-layout,
// made on 2026-12-05 by the server of commit 24535fd: locks held and shared,
// a note, a pool, histories, a remembered Idempotency-Key outcome, a clean
// stop, then two changes in the journal and a kill -9), and checks that
// every lock, pool and event is there, and that tokens go on above the
// ones it handed out. When a release changes the layout, this fixture
// stays as it is: the new binary must still read it (docs/upgrading.md).
func TestStartsFromTheFirstLayout(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"locks.yml", "locks.yml.journal"} {
		data, err := os.ReadFile(filepath.Join("testdata", "first-layout", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Its events are from 2026-12-05: kept for ten years, not the default
	// thirty days, so that the test reads them whenever it runs.
	p := startProc(t, filepath.Join(dir, "locks.yml"), "LOCKER_HISTORY_AGE=87600h")

	status, body := httpGet(t, p.URL, "/locks")
	var locks map[string]struct {
		Key      string         `json:"key"`
		LockedBy map[string]int `json:"locked_by"`
		Token    uint64         `json:"token"`
	}
	if err := json.Unmarshal([]byte(body), &locks); status != http.StatusOK || err != nil {
		t.Fatalf("GET /locks = %d %s (%v)", status, body, err)
	}
	prod, ci := locks["prod"], locks["ci"]
	if len(locks) != 2 || prod.Key != "deploy" || prod.LockedBy["job-1"] != 1 || prod.LockedBy["job-2"] != 1 || prod.Token != 1 ||
		ci.Key != "k" || ci.LockedBy["job-5"] != 1 || ci.Token != 4 {
		t.Errorf("GET /locks = %s; want prod held by job-1 and job-2 with key deploy (token 1), ci by job-5 (token 4, from the journal), staging given back (the journal)", body)
	}

	want := map[string]string{
		"prod":    "taken job-2, taken job-1",
		"old":     "released job-3, taken job-3",
		"staging": "released job-4, taken job-4",
		"ci":      "taken job-5",
	}
	for name, w := range want {
		status, body := httpGet(t, p.URL, "/history/"+name)
		var h struct {
			Events []struct {
				Kind   string `json:"event"`
				Holder string `json:"holder"`
				Note   string `json:"note"`
			} `json:"events"`
		}
		if err := json.Unmarshal([]byte(body), &h); status != http.StatusOK || err != nil {
			t.Fatalf("GET /history/%s = %d %s (%v)", name, status, body, err)
		}
		var got []string
		for _, e := range h.Events {
			got = append(got, e.Kind+" "+e.Holder)
		}
		if strings.Join(got, ", ") != w {
			t.Errorf("history of %s: %s; want %s", name, strings.Join(got, ", "), w)
		}
		if name == "prod" && (len(h.Events) != 2 || h.Events[1].Note != "https://ci.example.com/builds/1") {
			t.Errorf("history of prod: %s; want job-1's note kept", body)
		}
	}

	if status, body := httpGet(t, p.URL, "/pool/envs"); status != http.StatusOK || !strings.Contains(body, `"env-1"`) || !strings.Contains(body, `"env-2"`) {
		t.Errorf("GET /pool/envs = %d %s; want its two members", status, body)
	}
	status, body, err := send(http.DefaultClient, http.MethodPut, p.URL+"/lock/new", `{"key": "k", "lock_by": "after-upgrade"}`)
	if err != nil || status != http.StatusOK || tokenOf(body) <= 4 {
		t.Errorf("PUT /lock/new after the upgrade = %d %s %v; want it taken with a token above 4", status, body, err)
	}
}
