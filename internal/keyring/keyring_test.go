package keyring

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/access"
)

func TestLogin(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	k := New("admin", "admin-pass")
	secret, hash := access.NewSecret()
	old, oldHash := access.NewSecret()
	k.SetStored(map[string]access.Credential{
		"team-a-ci": {Name: "team-a-ci", Hash: hash, Grants: []access.Grant{{Role: access.Lock, Prefix: "team-a/"}}},
		"gone":      {Name: "gone", Hash: oldHash, Grants: []access.Grant{{Role: access.Read}}, ExpiresAt: now.Add(-time.Second)},
	})
	for _, tc := range []struct {
		name, secret string
		bearer       bool
		want         string // the credential logged in as, "" for none
	}{
		{"team-a-ci", secret, false, "team-a-ci"},
		{"", secret, true, "team-a-ci"},
		{"admin", "admin-pass", false, "admin"},
		{"team-a-ci", "wrong", false, ""},
		{"team-b-ci", secret, false, ""},       // another's name with the right secret
		{"", "admin-pass", true, ""},           // AUTH_USER's password is no bearer secret
		{"gone", old, false, ""},               // expired
		{"", old, true, ""},                    // expired, as a bearer
		{"team-a-ci", "", false, ""},           // no secret
		{"", "", true, ""},                     // no bearer secret
		{"admin", "admin-pass\x00", false, ""}, // not a prefix match
	} {
		c, ok := k.Login(tc.name, tc.secret, tc.bearer, now)
		if ok != (tc.want != "") || c.Name != tc.want {
			t.Errorf("Login(%q, %q, bearer %v) = %q, %v; want %q", tc.name, tc.secret, tc.bearer, c.Name, ok, tc.want)
		}
	}
	for _, e := range k.List() {
		used := e.Name == "team-a-ci" || e.Name == "admin"
		if e.LastUsed.IsZero() == used {
			t.Errorf("%s last used %v; want it set only after a login that succeeded", e.Name, e.LastUsed)
		}
	}

	// The credentials file wins over a stored credential of the same name,
	// and AUTH_USER over both.
	fileSecret, fileHash := access.NewSecret()
	k.SetFile([]access.Credential{
		{Name: "team-a-ci", Hash: fileHash, Grants: []access.Grant{{Role: access.Read}}},
		{Name: "admin", Hash: fileHash, Grants: []access.Grant{{Role: access.Read}}},
	})
	if _, ok := k.Login("team-a-ci", secret, false, now); ok {
		t.Error("the stored secret of a credential the file names too still logs in")
	}
	if c, ok := k.Login("team-a-ci", fileSecret, false, now); !ok || k.Source(c.Name) != FromFile {
		t.Errorf("the file's team-a-ci: %v, from %q", ok, k.Source(c.Name))
	}
	if _, ok := k.Login("admin", fileSecret, false, now); ok {
		t.Error("the file replaced AUTH_USER's password")
	}
}

func TestThrottled(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	k := New("admin", "admin-pass")
	for i := range Failures - 1 {
		k.Failed("10.0.0.1", now.Add(time.Duration(i)*time.Second))
	}
	at := now.Add(30 * time.Second)
	if d := k.Throttled("10.0.0.1", at); d != 0 {
		t.Fatalf("throttled after %d failures: %v; want not before %d", Failures-1, d, Failures)
	}
	k.Failed("10.0.0.1", at)
	if d := k.Throttled("10.0.0.1", at); d != 30*time.Second {
		t.Errorf("after %d failures, the first 30 s ago: wait %v; want 30s, until the first leaves the window", Failures, d)
	}
	if d := k.Throttled("10.0.0.2", at); d != 0 {
		t.Errorf("another address waits %v; want 0", d)
	}
	// One second after the first failure left the window, one more try.
	if d := k.Throttled("10.0.0.1", now.Add(Window)); d != 0 {
		t.Errorf("a minute after the first failure: wait %v; want 0", d)
	}
	if d := k.Throttled("10.0.0.1", now.Add(Window+time.Hour)); d != 0 || k.failingAddresses() != 0 {
		t.Errorf("an hour on: wait %v, %d addresses kept; want 0 and none", d, k.failingAddresses())
	}
}

// TestFailuresFromManyAddressesAreForgotten: failures from ever new
// addresses (a scan) do not grow without end once they are out of the
// window; those within it are kept, and still throttle.
func TestFailuresFromManyAddressesAreForgotten(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	k := New("admin", "admin-pass")
	for i := range Failures {
		k.Failed("10.9.9.9", now.Add(time.Duration(i)*time.Millisecond))
	}
	for i := range 3 * Addresses {
		k.Failed(fmt.Sprintf("192.0.%d.%d", i/256, i%256), now.Add(time.Duration(i)*20*time.Millisecond))
	}
	if n := k.failingAddresses(); n > Addresses+1 {
		t.Errorf("%d addresses' failures kept; want at most %d", n, Addresses+1)
	}
	k2 := New("admin", "admin-pass")
	for range Failures {
		k2.Failed("10.9.9.9", now)
	}
	for i := range Addresses {
		k2.Failed(fmt.Sprintf("192.0.%d.%d", i/256, i%256), now.Add(time.Second))
	}
	if d := k2.Throttled("10.9.9.9", now.Add(2*time.Second)); d == 0 {
		t.Error("an address still within its window was forgotten")
	}
}

func TestReadFile(t *testing.T) {
	_, hash := access.NewSecret()
	dir := t.TempDir()
	for _, tc := range []struct{ text, want string }{
		{"credentials:\n- {name: team-a-ci, hash: \"" + hash + "\", grants: [{role: lock, prefix: team-a/}]}\n", ""},
		{"credentials: []\n", ""},
		{"credentials:\n- {name: ci, hash: lkr_notahash, grants: [{role: lock, prefix: a/}]}\n", `credential 1 ("ci"): a credential's hash is "sha256:"`},
		{"credentials:\n- {name: ci, secret: lkr_x, grants: [{role: lock, prefix: a/}]}\n", "not a credentials file"},
		{"credentials:\n- {name: ci, hash: \"" + hash + "\", grants: [{role: owner, prefix: a/}]}\n", `"owner" is not a role`},
		{"credentials:\n- {name: ci, hash: \"" + hash + "\", grants: []}\n", `credential 1 ("ci")`},
		{"credentials:\n- {name: \"\", hash: \"" + hash + "\", grants: [{role: read}]}\n", "credential 1"},
		{"credentials:\n- {name: a/b, hash: \"" + hash + "\", grants: [{role: read}]}\n", `credential 1 ("a/b")`},
		{"credentials:\n- {name: ci, hash: \"" + hash + "\", grants: [{role: read}]}\n- {name: ci, hash: \"" + hash + "\", grants: [{role: lock}]}\n", `"ci" is given twice`},
		{"- team-a-ci\n", "not a credentials file"},
	} {
		path := filepath.Join(dir, "credentials.yml")
		if err := os.WriteFile(path, []byte(tc.text), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := ReadFile(path)
		if tc.want == "" && err != nil {
			t.Errorf("ReadFile(%q): %v", tc.text, err)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path)) {
			t.Errorf("ReadFile(%q) = %v; want an error naming the file and %q", tc.text, err, tc.want)
		}
	}
	if _, err := ReadFile(filepath.Join(dir, "missing.yml")); err == nil {
		t.Error("a missing file reads")
	}
}
