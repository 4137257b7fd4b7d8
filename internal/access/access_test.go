package access

import (
	"strings"
	"testing"
	"time"
)

func TestTheLongestPrefixDecides(t *testing.T) {
	c := Credential{Grants: []Grant{
		{Read, ""},
		{Lock, "team-a/"},
		{Operate, "team-a/staging/"},
		{Read, "team-a/staging/db"},
	}}
	for _, tc := range []struct {
		name string
		want Role
	}{
		{"prod", Read},
		{"team-a/x", Lock},
		{"team-a/", Lock},
		{"team-a", Read},
		{"team-a/staging/app", Operate},
		{"team-a/staging/db", Read},
		{"team-a/staging/db-2", Read},
		{"team-b/x", Read},
	} {
		if got := c.RoleOn(tc.name); got != tc.want {
			t.Errorf("RoleOn(%q) = %v; want %v", tc.name, got, tc.want)
		}
	}
	if got := (Credential{Grants: []Grant{{Admin, "x/"}}}).RoleOn("y"); got != None {
		t.Errorf("a name no grant covers = %v; want none", got)
	}
}

func TestRolesReadAndWrite(t *testing.T) {
	for _, r := range []Role{Read, Lock, Operate, Admin} {
		var back Role
		text, _ := r.MarshalText()
		if err := back.UnmarshalText(text); err != nil || back != r {
			t.Errorf("%v written and read = %v, %v", r, back, err)
		}
	}
	for _, bad := range []string{"", "none", "Admin", "write"} {
		if _, err := ParseRole(bad); err == nil || !strings.Contains(err.Error(), "read, lock, operate or admin") {
			t.Errorf("ParseRole(%q) = %v; want an error naming the roles", bad, err)
		}
	}
}

func TestBadNamesAndGrantsAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string
	}{
		{"", "needs a name"},
		{"a/b", "no slash"},
		{"a:b", "no control character and no colon"},
		{"a\tb", "no control character"},
		{strings.Repeat("x", 129), "at most 128"},
	} {
		if err := CheckName(tc.name); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckName(%q) = %v; want %q", tc.name, err, tc.want)
		}
	}
	if err := CheckName("team-a-ci"); err != nil {
		t.Errorf("CheckName(team-a-ci) = %v", err)
	}
	for _, tc := range []struct {
		grants []Grant
		want   string
	}{
		{nil, "at least one grant"},
		{[]Grant{{None, "a/"}}, "has no role"},
		{[]Grant{{Read, "a/"}, {Lock, "a/"}}, `two grants are on the prefix "a/"`},
	} {
		if err := CheckGrants(tc.grants); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckGrants(%v) = %v; want %q", tc.grants, err, tc.want)
		}
	}
}

func TestSecretsAreKeptAsHashes(t *testing.T) {
	secret, hash := NewSecret()
	other, _ := NewSecret()
	c := Credential{Name: "ci", Hash: hash}
	switch {
	case secret == other:
		t.Fatal("two secrets are the same")
	case strings.Contains(hash, secret):
		t.Fatal("the hash holds the secret")
	case !c.Matches(secret) || c.Matches(other) || c.Matches(""):
		t.Errorf("Matches: its own secret %v, another's %v, none %v; want true, false, false", c.Matches(secret), c.Matches(other), c.Matches(""))
	}
	if err := CheckHash(hash); err != nil {
		t.Errorf("CheckHash of a hash = %v", err)
	}
	if err := CheckHash(secret); err == nil {
		t.Error("CheckHash took a secret for a hash")
	}
	now := time.Now()
	if (Credential{}).Expired(now) || !(Credential{ExpiresAt: now}).Expired(now) || (Credential{ExpiresAt: now.Add(time.Second)}).Expired(now) {
		t.Error("Expired: want never for no expiry, expired at its time, not before")
	}
}
