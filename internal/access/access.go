// Package access says who may do what to which locks: a credential is a
// name, the hash of a secret, and grants, each a role on a name prefix;
// the longest prefix that matches a lock's (or a pool's) name decides
// the role on it. Pure functions and values: no I/O, no clock of its own.
package access

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Role is what a grant allows; each role includes the ones before it.
type Role int

// The roles, in order.
const (
	None    Role = iota // nothing: the name is not covered
	Read                // see locks, pools, queues, histories, the stream, the status page
	Lock                // take, renew and give back holds; take sets; claim pools
	Operate             // force-release; change and remove pools; remove a waiter
	Admin               // everything, and manage credentials
)

var roleNames = []string{"none", "read", "lock", "operate", "admin"}

// String is the role's name, as the API and the credential file write it.
func (r Role) String() string {
	if r < None || r > Admin {
		return fmt.Sprintf("role(%d)", int(r))
	}
	return roleNames[r]
}

// ParseRole reads a role's name.
func ParseRole(s string) (Role, error) {
	if i := slices.Index(roleNames, s); i > 0 {
		return Role(i), nil
	}
	return None, fmt.Errorf("%q is not a role: a role is read, lock, operate or admin", s)
}

// MarshalText writes the role's name.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a role's name.
func (r *Role) UnmarshalText(b []byte) error {
	role, err := ParseRole(string(b))
	*r = role
	return err
}

// MarshalYAML writes the role's name (gopkg.in/yaml.v2's interface).
func (r Role) MarshalYAML() (any, error) { return r.String(), nil }

// UnmarshalYAML reads a role's name (gopkg.in/yaml.v2's interface).
func (r *Role) UnmarshalYAML(unmarshal func(any) error) error {
	var s string
	if err := unmarshal(&s); err != nil {
		return err
	}
	return r.UnmarshalText([]byte(s))
}

// Grant is a role on the names that start with Prefix ("" is every name).
type Grant struct {
	Role   Role   `json:"role" yaml:"role"`
	Prefix string `json:"prefix" yaml:"prefix"`
}

// Credential is one client's name, its secret's hash and its grants. The
// secret itself is shown once, when it is made, and kept nowhere.
type Credential struct {
	Name      string    `json:"name" yaml:"name"`
	Hash      string    `json:"hash" yaml:"hash"` // HashSecret of its secret
	Grants    []Grant   `json:"grants" yaml:"grants"`
	CreatedBy string    `json:"created_by,omitempty" yaml:"created_by,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero" yaml:"created_at,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero" yaml:"expires_at,omitempty"` // zero: never
}

// RoleOn returns c's role on the lock or pool called name: the role of
// the grant with the longest prefix that name starts with, or None.
func (c Credential) RoleOn(name string) Role {
	return RoleOn(c.Grants, name)
}

// RoleOn returns the role grants give on name: the grant with the
// longest prefix that name starts with decides, or None.
func RoleOn(grants []Grant, name string) Role {
	best, role := -1, None
	for _, g := range grants {
		if len(g.Prefix) > best && strings.HasPrefix(name, g.Prefix) {
			best, role = len(g.Prefix), g.Role
		}
	}
	return role
}

// Expired reports whether c has expired at now.
func (c Credential) Expired(now time.Time) bool {
	return !c.ExpiresAt.IsZero() && !now.Before(c.ExpiresAt)
}

// maxName limits a credential's name: it is in every event it causes.
const maxName = 128

// CheckName refuses a credential name that is empty, too long, has a
// slash (it is a path segment) or a character that is not printable.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("a credential needs a name, e.g. \"team-a-ci\"")
	case len(name) > maxName:
		return fmt.Errorf("a credential's name is at most %d bytes; %q is %d", maxName, name, len(name))
	case strings.Contains(name, "/"):
		return fmt.Errorf("a credential's name has no slash (%q): it is part of the path /credentials/<name>", name)
	case !utf8.ValidString(name):
		return errors.New("a credential's name is printable text, and this one is not valid UTF-8")
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f || r == ':' }):
		return fmt.Errorf("a credential's name has no control character and no colon (%q): it is the user of HTTP basic auth", name)
	}
	return nil
}

// CheckGrants refuses grants that name no role, or two of one prefix.
func CheckGrants(grants []Grant) error {
	if len(grants) == 0 {
		return errors.New("a credential needs at least one grant, e.g. {\"role\": \"lock\", \"prefix\": \"team-a/\"}")
	}
	seen := map[string]bool{}
	for _, g := range grants {
		if g.Role <= None || g.Role > Admin {
			return fmt.Errorf("the grant on %q has no role: give read, lock, operate or admin", g.Prefix)
		}
		if seen[g.Prefix] {
			return fmt.Errorf("two grants are on the prefix %q: give each prefix one role (the longest prefix decides)", g.Prefix)
		}
		seen[g.Prefix] = true
	}
	return nil
}

// secretBytes is how much randomness a secret holds: 192 bits.
const secretBytes = 24

// secretPrefix marks a Locker secret, so that a secret pasted where it
// should not be is recognised (and scanners can find it).
const secretPrefix = "lkr_"

// NewSecret returns a new random secret and its hash.
func NewSecret() (secret, hash string) {
	b := make([]byte, secretBytes)
	_, _ = rand.Read(b) // crypto/rand does not fail on the systems Go supports
	secret = secretPrefix + base64.RawURLEncoding.EncodeToString(b)
	return secret, HashSecret(secret)
}

// HashSecret returns the hash a credential keeps of its secret: SHA-256.
// A secret is random (NewSecret), so a slow hash would add nothing.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Matches reports, in constant time, whether secret is c's.
func (c Credential) Matches(secret string) bool {
	h := HashSecret(secret)
	return subtle.ConstantTimeCompare([]byte(h), []byte(c.Hash)) == 1
}

// CheckHash refuses a hash that is not one HashSecret makes: a
// credential file must hold hashes, never secrets.
func CheckHash(hash string) error {
	hexPart, ok := strings.CutPrefix(hash, "sha256:")
	if b, err := hex.DecodeString(hexPart); !ok || err != nil || len(b) != sha256.Size {
		return errors.New("a credential's hash is \"sha256:\" and 64 hex digits (locker credential hash prints one); a secret itself is never kept")
	}
	return nil
}
