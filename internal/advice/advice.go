// Package advice holds the phrases with which the server's error messages
// tell an HTTP client what to do next ("send ?wait=5m to wait for it").
// The server ends its messages with them; a client with commands of its
// own (the locker command line, the Concourse resource) says the same in
// its own terms, by Terms.
package advice

import (
	"fmt"
	"strings"
)

// The phrases. Limit and Check are followed by a value: the lock's limit,
// the lock's name.
const (
	Wait        = "send ?wait=5m to wait for it"
	WaitForThem = "send ?wait=5m to wait for them"
	Take        = "take the lock with PUT"
	ReleaseKey  = "a release must send the key the lock was taken with"
	Auth        = "send a credential's name and secret, or AUTH_USER and AUTH_PASS, with HTTP basic auth (curl -u NAME:SECRET)"
	RenewTTL    = `PATCH renews a lease and needs its length, e.g. {"key": "prod-cf", "lock_by": "my-job", "ttl": "10m"}`
	ShorterTTL  = "ask for a shorter lease and renew it with PATCH"
	Limit       = `send "limit": `
	Pools       = `GET /pools lists them, and PUT /pool/<pool> with {"members": [...]} makes one`
	Resume      = "reconnect with Last-Event-ID set to the last id received to go on"
	TakeAgain   = "send a new request with a new Idempotency-Key to take the lock again"
	Credentials = "GET /credentials lists them"
	ReadAgain   = "read it again (GET /lock/<name>: its ETag) and decide again"
)

// Terms says each phrase in a client's own words: a phrase it leaves out
// stays as the server said it.
type Terms map[string]string

// Replace returns msg with each phrase in terms said the client's way.
func (t Terms) Replace(msg string) string {
	if len(t) == 0 {
		return msg
	}
	pairs := make([]string, 0, 2*len(t))
	for phrase, own := range t {
		pairs = append(pairs, phrase, own)
	}
	return strings.NewReplacer(pairs...).Replace(msg)
}

// Plural says n of something: "1 request", "2 requests".
func Plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
