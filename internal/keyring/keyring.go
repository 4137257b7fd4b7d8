// Package keyring is every credential a server knows, and logins against
// them: AUTH_USER's (an admin on every name), those of the credentials
// file, and those the store keeps, read again whenever they change. A
// login compares secrets in constant time, and a client address that
// fails too often is made to wait.
package keyring

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"gopkg.in/yaml.v2"
)

// Where a credential comes from.
const (
	FromAPI  = "api"       // made over the API, kept by the store
	FromFile = "file"      // the credentials file
	FromEnv  = "AUTH_USER" // the environment's AUTH_USER and AUTH_PASS
)

// Login throttling: a client address that fails to log in Failures times
// within Window is refused until the window passes.
const (
	Failures = 20
	Window   = time.Minute
	// Addresses is how many addresses' failures are kept before those of
	// the addresses that have not failed within Window are forgotten, so
	// that failures from ever new addresses do not grow without end.
	Addresses = 10000
)

// Keyring is the credentials a server knows.
type Keyring struct {
	admin     *access.Credential // AUTH_USER's; nil without
	reloading sync.Mutex         // one Reload at a time
	mu        sync.RWMutex       // guards what follows
	byName    map[string]access.Credential
	byHash    map[string]access.Credential // the ones a bearer secret may present
	stored    map[string]access.Credential
	file      []access.Credential
	lastUsed  map[string]time.Time // on this node
	failures  map[string][]time.Time
}

// New returns the keyring of a server whose AUTH_USER is user (none for
// ""), with pass its password.
func New(user, pass string) *Keyring {
	k := &Keyring{lastUsed: map[string]time.Time{}, failures: map[string][]time.Time{}}
	if user != "" {
		k.admin = &access.Credential{Name: user, Hash: access.HashSecret(pass), Grants: []access.Grant{{Role: access.Admin}}}
	}
	k.index()
	return k
}

// Closed reports whether the keyring asks for a credential at all: with
// no AUTH_USER and no credentials file, the API is open to everyone.
func (k *Keyring) Closed() bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.admin != nil || len(k.file) > 0
}

// Admin returns AUTH_USER's name, or "".
func (k *Keyring) Admin() string {
	if k.admin == nil {
		return ""
	}
	return k.admin.Name
}

// SetStored makes stored the credentials the store keeps.
func (k *Keyring) SetStored(stored map[string]access.Credential) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stored = stored
	k.reindex()
}

// Reload makes what read returns the stored credentials, one reload at
// a time: two reloads that ran at once could otherwise land out of order,
// the one that read older credentials last, and leave a credential just
// made out until the next.
func (k *Keyring) Reload(read func() (map[string]access.Credential, error)) error {
	k.reloading.Lock()
	defer k.reloading.Unlock()
	stored, err := read()
	if err != nil {
		return err
	}
	k.SetStored(stored)
	return nil
}

// SetFile makes file the credentials file's credentials.
func (k *Keyring) SetFile(file []access.Credential) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.file = file
	k.reindex()
}

// index builds the maps a login reads.
func (k *Keyring) index() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.reindex()
}

// reindex builds the maps a login reads. Callers hold k.mu.
func (k *Keyring) reindex() {
	byName := make(map[string]access.Credential, len(k.stored)+len(k.file)+1)
	for _, c := range k.stored {
		byName[c.Name] = c
	}
	for _, c := range k.file {
		byName[c.Name] = c // the file, which an operator wrote, wins
	}
	if k.admin != nil {
		byName[k.admin.Name] = *k.admin
	}
	// A bearer secret names no credential, only its secret: made at
	// random (access.NewSecret) for every credential but AUTH_USER's,
	// whose password a person chose, and which goes with its name alone.
	byHash := make(map[string]access.Credential, len(byName))
	for _, c := range byName {
		if k.admin == nil || c.Name != k.admin.Name {
			byHash[c.Hash] = c
		}
	}
	k.byName, k.byHash = byName, byHash
}

// Source says where the credential called name comes from: FromEnv,
// FromFile, FromAPI, or "" for none.
func (k *Keyring) Source(name string) string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.source(name)
}

// source is Source; callers hold k.mu.
func (k *Keyring) source(name string) string {
	switch {
	case k.admin != nil && name == k.admin.Name:
		return FromEnv
	case slices.ContainsFunc(k.file, func(c access.Credential) bool { return c.Name == name }):
		return FromFile
	}
	if _, ok := k.stored[name]; ok {
		return FromAPI
	}
	return ""
}

// Entry is a credential as the keyring knows it.
type Entry struct {
	access.Credential
	Source   string
	LastUsed time.Time // on this node; zero when not since it started
}

// List returns every credential, by name.
func (k *Keyring) List() []Entry {
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make([]Entry, 0, len(k.byName))
	for _, name := range slices.Sorted(maps.Keys(k.byName)) {
		out = append(out, Entry{Credential: k.byName[name], Source: k.source(name), LastUsed: k.lastUsed[name]})
	}
	return out
}

// Login returns the credential a request presents, if the keyring knows
// it, its secret is right and it has not expired at now: by its name
// and secret (basic auth), or by its secret alone (bearer, when name is
// "" and bearer is set).
func (k *Keyring) Login(name, secret string, bearer bool, now time.Time) (access.Credential, bool) {
	k.mu.RLock()
	var c access.Credential
	var found bool
	if bearer {
		c, found = k.byHash[access.HashSecret(secret)]
	} else {
		c, found = k.byName[name]
	}
	k.mu.RUnlock()
	// The secret is compared even when no credential was found, so that
	// a wrong name and a wrong secret take the same time.
	if !found {
		c = access.Credential{Hash: access.HashSecret("")}
	}
	if !c.Matches(secret) || !found || c.Expired(now) {
		return access.Credential{}, false
	}
	k.mu.Lock()
	k.lastUsed[c.Name] = now
	k.mu.Unlock()
	return c, true
}

// Throttled returns how long the client at addr must wait before it may
// try to log in again, or 0.
func (k *Keyring) Throttled(addr string, now time.Time) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	recent := slices.DeleteFunc(k.failures[addr], func(t time.Time) bool { return now.Sub(t) >= Window })
	if len(recent) == 0 {
		delete(k.failures, addr)
		return 0
	}
	k.failures[addr] = recent
	if len(recent) < Failures {
		return 0
	}
	return Window - now.Sub(recent[0])
}

// Failed notes a failed login from addr at now.
func (k *Keyring) Failed(addr string, now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, known := k.failures[addr]; !known && len(k.failures) >= Addresses {
		maps.DeleteFunc(k.failures, func(_ string, ts []time.Time) bool { return now.Sub(ts[len(ts)-1]) >= Window })
	}
	k.failures[addr] = append(k.failures[addr], now)
}

// failingAddresses returns how many addresses' failures are kept.
func (k *Keyring) failingAddresses() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.failures)
}

// file is the credentials file's shape.
type file struct {
	Credentials []access.Credential `yaml:"credentials"`
}

// ReadFile reads the credentials file at path: YAML, a list under
// "credentials" of names, hashes (never secrets) and grants. Anything
// else is an error naming what is wrong.
func ReadFile(path string) ([]access.Credential, error) {
	data, err := os.ReadFile(path) // a path the operator configured
	if err != nil {
		return nil, err
	}
	var f file
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%s: not a credentials file (a list under \"credentials\" of name, hash and grants): %w", path, err)
	}
	seen := map[string]bool{}
	for i, c := range f.Credentials {
		for _, err := range []error{access.CheckName(c.Name), access.CheckHash(c.Hash), access.CheckGrants(c.Grants)} {
			if err != nil {
				return nil, fmt.Errorf("%s: credential %d (%q): %w", path, i+1, c.Name, err)
			}
		}
		if seen[c.Name] {
			return nil, fmt.Errorf("%s: the credential %q is given twice", path, c.Name)
		}
		seen[c.Name] = true
	}
	return f.Credentials, nil
}
