// Package resource is a Concourse resource for the locker server: out takes
// or gives back a lock, check and in report who holds it.
//
// It talks to the server over HTTP only. Each command reads its request as
// JSON on stdin, logs to stderr, and writes only its JSON answer to stdout.
package resource

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Source is the resource's configuration in the pipeline.
type Source struct {
	LockerURI         string `json:"locker_uri"`
	Username          string `json:"username,omitempty"`
	Password          string `json:"password,omitempty"`
	CACert            string `json:"ca_cert,omitempty"`
	SkipSSLValidation bool   `json:"skip_ssl_validation,omitempty"`
	LockName          string `json:"lock_name,omitempty"`
	BoshLock          string `json:"bosh_lock,omitempty"` // a BOSH director URL; its name is the lock name
	Pool              string `json:"pool,omitempty"`      // a pool: put claims a free member, or gives one back
}

// Validate lists every problem with s at once, each saying what to fix.
func (s Source) Validate() error {
	var problems []string
	if s.LockerURI == "" {
		problems = append(problems, "source.locker_uri is missing: set it to the locker server's URL, e.g. https://locker.example.com:3000")
	} else if u, err := url.Parse(s.LockerURI); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		problems = append(problems, fmt.Sprintf("source.locker_uri %q is not an http:// or https:// URL", s.LockerURI))
	}
	switch n := countSet(s.LockName, s.BoshLock, s.Pool); {
	case n == 0:
		problems = append(problems, "set one of source.lock_name (the lock to use), source.bosh_lock (a BOSH director URL whose name is the lock) or source.pool (a pool whose free members put claims)")
	case n > 1:
		problems = append(problems, "more than one of source.lock_name, source.bosh_lock and source.pool is set: keep one")
	}
	if (s.Username == "") != (s.Password == "") {
		problems = append(problems, "source.username and source.password go together: set both, or neither")
	}
	if s.CACert != "" && !x509.NewCertPool().AppendCertsFromPEM([]byte(s.CACert)) {
		problems = append(problems, "source.ca_cert holds no PEM certificate: paste the CA certificate, -----BEGIN CERTIFICATE----- and all")
	}
	return joinProblems(problems)
}

// countSet counts the values that are not "".
func countSet(values ...string) int {
	n := 0
	for _, v := range values {
		if v != "" {
			n++
		}
	}
	return n
}

// Version identifies one state of the lock: its token and who holds it,
// as "<token>:<digest of key and holders>". A claim on a pool names the
// member it got in Lock.
type Version struct {
	Ref  string `json:"ref"`
	Lock string `json:"lock,omitempty"`
}

// token returns the fencing token in v.
func (v Version) token() (uint64, bool) {
	t, _, ok := strings.Cut(v.Ref, ":")
	n, err := strconv.ParseUint(t, 10, 64)
	return n, ok && err == nil
}

// MetadataField is one line of a build's metadata in the Concourse UI.
type MetadataField struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// CheckRequest is what check reads on stdin.
type CheckRequest struct {
	Source  Source   `json:"source"`
	Version *Version `json:"version"`
}

// InRequest is what in reads on stdin.
type InRequest struct {
	Source  Source         `json:"source"`
	Version *Version       `json:"version"`
	Params  map[string]any `json:"params,omitempty"` // in takes no params; accepted and ignored
}

// OutRequest is what out reads on stdin.
type OutRequest struct {
	Source Source    `json:"source"`
	Params OutParams `json:"params"`
}

// OutParams are the put step's params.
type OutParams struct {
	LockOp   string `json:"lock_op"`             // "lock" or "unlock"
	Key      string `json:"key"`                 // holders with the same key share the lock
	LockedBy string `json:"locked_by,omitempty"` // who holds it; defaults to the key
	LockBy   string `json:"lock_by,omitempty"`   // the same as locked_by
	TTL      string `json:"ttl,omitempty"`       // lock: a lease, e.g. "2h"; "none" for none; default defaultTTL
	Note     string `json:"note,omitempty"`      // lock: defaults to the build's URL
	Timeout  string `json:"timeout,omitempty"`   // give up after this long; default: never
	All      bool   `json:"all,omitempty"`       // unlock: every count of locked_by
	// AllowNotHeld lets an unlock that finds nothing to give back pass;
	// without it that fails the step, as it usually means a typo.
	AllowNotHeld bool `json:"allow_not_held,omitempty"`
	// Claim, with source.pool, claims a free member (waiting for one);
	// Release gives back the member named in the "name" file of that get
	// step's directory.
	Claim   bool   `json:"claim,omitempty"`
	Release string `json:"release,omitempty"`
	// Locks, with lock_op, takes or gives back every one of these locks in
	// one change, the resource's own among them.
	Locks []string `json:"locks,omitempty"`
	// Limit, with lock_op: lock, caps how many holders share the lock.
	Limit int `json:"limit,omitempty"`
	// Supersede, with lock_op: lock or claim, takes the place of the
	// earlier waiting puts of the same locked_by for the same lock(s) or
	// pool: they fail, saying a newer build superseded them.
	Supersede bool `json:"supersede,omitempty"`
	// Priority, with lock_op: lock or claim, serves this put before the
	// waiting ones of lower priority (default 0).
	Priority int `json:"priority,omitempty"`
	// EndWithBuild, with lock_op: lock or claim, ends the hold when the
	// build this put runs in ends as named: true for aborted and errored,
	// or a list (e.g. [aborted, errored, failed, succeeded] for a lock
	// that must never outlive its build). Not for a lock handed on to a
	// later job. The server needs LOCKER_CONCOURSE_URL to look builds up.
	EndWithBuild EndWith `json:"end_with_build,omitempty"`
}

// EndWith are build outcomes that end a hold: params.end_with_build, as
// true (aborted and errored), false, or a list.
type EndWith []string

// UnmarshalJSON reads true, false or a list of outcomes.
func (e *EndWith) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "true":
		*e = EndWith{"aborted", "errored"}
		return nil
	case "false", "null":
		*e = nil
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("params.end_with_build is true, false, or a list of build outcomes (succeeded, failed, errored, aborted), e.g. [aborted, errored]; got %s", b)
	}
	*e = list
	return nil
}

// Response is what in and out write on stdout.
type Response struct {
	Version  Version         `json:"version"`
	Metadata []MetadataField `json:"metadata"`
}

// defaultTTL is the lease a lock takes when params.ttl is not set: a job
// that is aborted, or whose grant never reached it, never runs its unlock
// step, and the lease is what frees the lock then. A day covers the
// longest deploys; "none" keeps a lock until it is unlocked.
const defaultTTL = "24h"

// noTTL in params.ttl asks for no lease.
const noTTL = "none"

// lease returns the ttl to send with a lock, "" for none.
func (p OutParams) lease() string {
	switch p.TTL {
	case "":
		return defaultTTL
	case noTTL:
		return ""
	}
	return p.TTL
}

// requestor returns the holder name the params give, or "" for the key.
func (p OutParams) requestor() string {
	if p.LockedBy != "" {
		return p.LockedBy
	}
	return p.LockBy
}

// Validate lists every problem with p at once, each saying what to fix;
// pool says the source is a pool.
func (p OutParams) Validate(pool bool) error {
	var problems []string
	switch {
	case pool && p.Claim == (p.Release != ""):
		problems = append(problems, "with source.pool, set params.claim: true to claim a free member, or params.release: <the get step's name> to give back the member it got")
	case pool && p.LockOp != "":
		problems = append(problems, "with source.pool, params.lock_op does not apply: set params.claim: true, or params.release")
	case !pool && (p.Claim || p.Release != ""):
		problems = append(problems, "params.claim and params.release apply to a pool: set source.pool")
	case pool:
	case p.LockOp == "lock" || p.LockOp == "unlock":
	case p.LockOp == "":
		problems = append(problems, `params.lock_op is missing: set it to "lock" or "unlock"`)
	default:
		problems = append(problems, fmt.Sprintf(`params.lock_op is %q: set it to "lock" or "unlock"`, p.LockOp))
	}
	if p.Key == "" {
		problems = append(problems, "params.key is missing: holders that use the same key share the lock, e.g. key: prod-deploy")
	}
	if p.LockedBy != "" && p.LockBy != "" && p.LockedBy != p.LockBy {
		problems = append(problems, fmt.Sprintf("params.locked_by (%q) and params.lock_by (%q) name the same thing: keep one", p.LockedBy, p.LockBy))
	}
	ttl := p.TTL
	if ttl == noTTL {
		ttl = ""
	}
	for _, d := range []struct{ name, value string }{{"ttl", ttl}, {"timeout", p.Timeout}} {
		if _, err := parseDuration(d.value); err != nil {
			problems = append(problems, fmt.Sprintf("params.%s is %q: use a duration such as 30m or 2h", d.name, d.value))
		}
	}
	if p.Limit < 0 || p.Limit > 0 && p.LockOp != "lock" {
		problems = append(problems, fmt.Sprintf("params.limit is %d: it is how many holders may share the lock, 1 or more, with lock_op: lock", p.Limit))
	}
	if p.Supersede && p.LockOp != "lock" && !p.Claim {
		problems = append(problems, "params.supersede applies to lock_op: lock (or claim): it takes the place of the earlier waiting puts of the same locked_by")
	}
	if pool && len(p.Locks) > 0 {
		problems = append(problems, "params.locks applies to a resource with source.lock_name or source.bosh_lock, not to a pool")
	}
	if slices.Contains(p.Locks, "") || len(slices.Compact(slices.Sorted(slices.Values(p.Locks)))) < len(p.Locks) {
		problems = append(problems, fmt.Sprintf("params.locks %q names a lock twice, or an empty one: name each lock once", p.Locks))
	}
	if (p.LockOp == "unlock" || p.Release != "") && (p.TTL != "" || p.Note != "") {
		problems = append(problems, "params.ttl and params.note only apply to lock_op: lock (or claim)")
	}
	if (p.LockOp == "lock" || p.Claim) && (p.All || p.AllowNotHeld) {
		problems = append(problems, "params.all and params.allow_not_held only apply to lock_op: unlock (or release)")
	}
	return joinProblems(problems)
}

// parseDuration parses a positive duration; "" is zero.
func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, errors.New("not positive")
	}
	return d, nil
}

func joinProblems(problems []string) error {
	switch len(problems) {
	case 0:
		return nil
	case 1:
		return errors.New(problems[0])
	}
	return fmt.Errorf("%d problems:\n  - %s", len(problems), strings.Join(problems, "\n  - "))
}
