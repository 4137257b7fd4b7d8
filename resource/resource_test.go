package resource

import (
	"strings"
	"testing"

	"github.com/locker-ci/locker/client"
)

func TestSourceValidate(t *testing.T) {
	good := Source{LockerURI: "https://locker.example.com", LockName: "prod"}
	tests := []struct {
		name   string
		change func(*Source)
		want   []string // parts of the error; none when valid
	}{
		{"valid", func(*Source) {}, nil},
		{"valid with bosh_lock", func(s *Source) { s.LockName, s.BoshLock = "", "https://10.0.0.6:25555" }, nil},
		{"missing locker_uri", func(s *Source) { s.LockerURI = "" }, []string{"source.locker_uri is missing"}},
		{"locker_uri not a URL", func(s *Source) { s.LockerURI = "locker:3000" }, []string{`"locker:3000" is not an http:// or https:// URL`}},
		{"neither lock_name nor bosh_lock", func(s *Source) { s.LockName = "" }, []string{"set one of source.lock_name"}},
		{"both lock_name and bosh_lock", func(s *Source) { s.BoshLock = "https://bosh" }, []string{"more than one of source.lock_name, source.bosh_lock and source.pool is set: keep one"}},
		{"username without password", func(s *Source) { s.Username = "ci" }, []string{"set both, or neither"}},
		{"ca_cert not PEM", func(s *Source) { s.CACert = "not a cert" }, []string{"source.ca_cert holds no PEM certificate"}},
		{
			"every problem at once", func(s *Source) { *s = Source{Password: "x"} },
			[]string{"3 problems", "locker_uri is missing", "set one of source.lock_name", "set both, or neither"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.change(&s)
			err := s.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Errorf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil; want %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q; want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestOutParamsValidate(t *testing.T) {
	tests := []struct {
		name   string
		params OutParams
		want   string // part of the error; "" when valid
	}{
		{"lock", OutParams{LockOp: "lock", Key: "k", TTL: "2h", Timeout: "30m", Note: "n"}, ""},
		{"unlock all", OutParams{LockOp: "unlock", Key: "k", LockedBy: "me", All: true}, ""},
		{"aliases that agree", OutParams{LockOp: "lock", Key: "k", LockedBy: "me", LockBy: "me"}, ""},
		{"missing lock_op", OutParams{Key: "k"}, "params.lock_op is missing"},
		{"unknown lock_op", OutParams{LockOp: "grab", Key: "k"}, `params.lock_op is "grab"`},
		{"missing key", OutParams{LockOp: "lock"}, "params.key is missing"},
		{"aliases that disagree", OutParams{LockOp: "lock", Key: "k", LockedBy: "a", LockBy: "b"}, "keep one"},
		{"bad ttl", OutParams{LockOp: "lock", Key: "k", TTL: "2 hours"}, `params.ttl is "2 hours"`},
		{"negative timeout", OutParams{LockOp: "lock", Key: "k", Timeout: "-1m"}, `params.timeout is "-1m"`},
		{"ttl on unlock", OutParams{LockOp: "unlock", Key: "k", TTL: "1h"}, "only apply to lock_op: lock"},
		{"all on lock", OutParams{LockOp: "lock", Key: "k", All: true}, "only apply to lock_op: unlock"},
		{"claim without a pool", OutParams{Claim: true, Key: "k"}, "params.claim and params.release apply to a pool: set source.pool"},
		{"pool: a claim", OutParams{Claim: true, Key: "k", TTL: "1h"}, ""},
		{"pool: a release", OutParams{Release: "env", Key: "k"}, ""},
		{"pool: neither", OutParams{Key: "k"}, "with source.pool, set params.claim: true to claim a free member, or params.release"},
		{"pool: both", OutParams{Claim: true, Release: "env", Key: "k"}, "with source.pool, set params.claim: true"},
		{"pool: a lock_op", OutParams{LockOp: "lock", Claim: true, Key: "k"}, "params.lock_op does not apply"},
		{"pool: ttl on a release", OutParams{Release: "env", Key: "k", TTL: "1h"}, "only apply to lock_op: lock (or claim)"},
		{"a set", OutParams{LockOp: "lock", Key: "k", Locks: []string{"a", "b"}}, ""},
		{"a limit", OutParams{LockOp: "lock", Key: "k", Limit: 3}, ""},
		{"a limit on an unlock", OutParams{LockOp: "unlock", Key: "k", Limit: 3}, "params.limit is 3"},
		{"a negative limit", OutParams{LockOp: "lock", Key: "k", Limit: -1}, "params.limit is -1"},
		{"supersede on an unlock", OutParams{LockOp: "unlock", Key: "k", Supersede: true}, "params.supersede applies to lock_op: lock"},
		{"a set naming a lock twice", OutParams{LockOp: "lock", Key: "k", Locks: []string{"a", "b", "a"}}, "names a lock twice"},
		{"pool: a set", OutParams{Claim: true, Key: "k", Locks: []string{"a"}}, "params.locks applies to a resource with source.lock_name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.params.Validate(strings.HasPrefix(tt.name, "pool: "))
			if tt.want == "" {
				if err != nil {
					t.Errorf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestVersionFollowsTheLock(t *testing.T) {
	held := func(key string, token uint64, lockedBy map[string]int) client.Lock {
		return client.Lock{Key: key, Token: token, LockedBy: lockedBy}
	}
	base := held("k", 3, map[string]int{"a": 1, "b": 2})
	same := held("k", 3, map[string]int{"b": 2, "a": 1})
	if version(base) != version(same) {
		t.Errorf("the same lock has two versions: %v, %v", version(base), version(same))
	}
	for name, other := range map[string]client.Lock{
		"another token":    held("k", 4, map[string]int{"a": 1, "b": 2}),
		"another count":    held("k", 3, map[string]int{"a": 2, "b": 2}),
		"another holder":   held("k", 3, map[string]int{"a": 1, "c": 2}),
		"another key":      held("j", 3, map[string]int{"a": 1, "b": 2}),
		"the lock is free": {},
	} {
		if version(other) == version(base) {
			t.Errorf("%s: version did not change (%v)", name, version(base))
		}
	}
}

func TestBuildNote(t *testing.T) {
	env := map[string]string{
		"ATC_EXTERNAL_URL":    "https://ci.example.com/",
		"BUILD_TEAM_NAME":     "main",
		"BUILD_PIPELINE_NAME": "deploy prod",
		"BUILD_JOB_NAME":      "upgrade",
		"BUILD_NAME":          "42",
	}
	get := func(k string) string { return env[k] }
	if got, want := buildNote(get), "https://ci.example.com/teams/main/pipelines/deploy%20prod/jobs/upgrade/builds/42"; got != want {
		t.Errorf("buildNote = %q; want %q", got, want)
	}
	delete(env, "BUILD_JOB_NAME")
	env["BUILD_ID"] = "1234"
	if got, want := buildNote(get), "https://ci.example.com/builds/1234"; got != want {
		t.Errorf("buildNote for a one-off build = %q; want %q", got, want)
	}
	if got := buildNote(func(string) string { return "" }); got != "" {
		t.Errorf("buildNote outside a build = %q; want none", got)
	}
}
