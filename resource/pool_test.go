package resource

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/locker-ci/locker/client"
)

// TestPoolClaimAndRelease: with source.pool, put claims a free member
// (the version names it), the get after it writes the member's name, and
// a put with params.release gives back the member that get names; a claim
// when none is free waits for one.
func TestPoolClaimAndRelease(t *testing.T) {
	ls := startLocker(t)
	c, err := client.New(client.Config{URL: ls.url})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetPool(t.Context(), "envs", []string{"env-1", "env-2"}); err != nil {
		t.Fatal(err)
	}
	src := Source{LockerURI: ls.url, Pool: "envs"}
	claim := OutRequest{Source: src, Params: OutParams{Claim: true, Key: "e2e"}}
	first := mustSucceed(t, "first claim", runBinary(t, "out", claim, t.TempDir()))
	if first.Version.Lock != "env-1" || metadata(first, "lock_name") != "env-1" {
		t.Fatalf("the first claim = %+v; want env-1 named in the version", first)
	}
	build := t.TempDir()
	got := mustSucceed(t, "get after the claim", runBinary(t, "in", InRequest{Source: src, Version: &first.Version}, filepath.Join(build, "env")))
	name, err := os.ReadFile(filepath.Join(build, "env", "name"))
	if err != nil || string(name) != "env-1" || got.Version != first.Version {
		t.Fatalf("the get wrote name %q (%v), version %+v; want env-1 and the claim's version", name, err, got.Version)
	}
	if meta, err := os.ReadFile(filepath.Join(build, "env", "metadata")); err != nil || !strings.Contains(string(meta), `"locked_by":{"e2e":1}`) {
		t.Errorf("metadata = %q, %v; want the member's lock", meta, err)
	}
	second := mustSucceed(t, "second claim", runBinary(t, "out", claim, t.TempDir()))
	if second.Version.Lock != "env-2" {
		t.Fatalf("the second claim got %q; want env-2", second.Version.Lock)
	}
	third := startBinary(t, "out", claim, t.TempDir())
	waitUntil(t, "the third claim to wait", func() bool {
		p, err := c.Pool(t.Context(), "envs")
		return err == nil && len(p.Waiting) == 1
	})
	mustSucceed(t, "release", runBinary(t, "out", OutRequest{Source: src, Params: OutParams{Release: "env", Key: "e2e"}}, build))
	if resp := mustSucceed(t, "third claim", third.wait(t)); resp.Version.Lock != "env-1" {
		t.Errorf("the third claim got %q; want env-1, given back", resp.Version.Lock)
	}
	if r := runBinary(t, "out", OutRequest{Source: src, Params: OutParams{Release: "nowhere", Key: "e2e"}}, build); r.code == 0 || !strings.Contains(r.stderr, "params.release") {
		t.Errorf("a release naming no get step = exit %d, %q; want it to fail saying params.release", r.code, r.stderr)
	}
	r := runBinary(t, "check", CheckRequest{Source: src})
	var versions []Version
	if err := json.Unmarshal([]byte(r.stdout), &versions); r.code != 0 || err != nil || len(versions) != 1 || !strings.HasPrefix(versions[0].Ref, "0:") {
		t.Errorf("check of a pool = exit %d, %q; want one version of the pool", r.code, r.stdout)
	}
}

// TestSetOfLocks: params.locks takes every lock named, the resource's own
// among them, in one change, and gives them back in one; an unlock that
// gives back nothing fails; a set without the resource's own lock is
// refused.
func TestSetOfLocks(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "prod-app"}
	lock := OutRequest{Source: src, Params: OutParams{LockOp: "lock", Key: "deploy", Locks: []string{"prod-db", "prod-app"}}}
	resp := mustSucceed(t, "lock the set", runBinary(t, "out", lock, t.TempDir()))
	if metadata(resp, "locks") != "prod-app prod-db" || metadata(resp, "lock_name") != "prod-app" {
		t.Errorf("the set's metadata = %+v", resp.Metadata)
	}
	for _, name := range []string{"prod-app", "prod-db"} {
		if l := ls.getLock(t, name, src); l.LockedBy["deploy"] != 1 {
			t.Errorf("%s after the set's put = %+v; want it held by deploy", name, l.Lock)
		}
	}
	unlock := OutRequest{Source: src, Params: OutParams{LockOp: "unlock", Key: "deploy", Locks: []string{"prod-app", "prod-db"}}}
	mustSucceed(t, "unlock the set", runBinary(t, "out", unlock, t.TempDir()))
	for _, name := range []string{"prod-app", "prod-db"} {
		if l := ls.getLock(t, name, src); len(l.LockedBy) != 0 {
			t.Errorf("%s after the set's unlock = %+v; want it free", name, l.Lock)
		}
	}
	if r := runBinary(t, "out", unlock, t.TempDir()); r.code == 0 || !strings.Contains(r.stderr, "gave back nothing") {
		t.Errorf("unlocking the set again = exit %d, %q; want it to fail, nothing given back", r.code, r.stderr)
	}
	other := OutRequest{Source: src, Params: OutParams{LockOp: "lock", Key: "deploy", Locks: []string{"prod-db", "test-db"}}}
	if r := runBinary(t, "out", other, t.TempDir()); r.code == 0 || !strings.Contains(r.stderr, `does not name the resource's own lock "prod-app"`) {
		t.Errorf("a set without the resource's lock = exit %d, %q; want it refused", r.code, r.stderr)
	}
}

// TestLimitFromAPipeline: params.limit caps the holders of a shared lock;
// the next holder with the key waits until one gives it back.
func TestLimitFromAPipeline(t *testing.T) {
	ls := startLocker(t)
	src := Source{LockerURI: ls.url, LockName: "browsers"}
	lock := func(by string) OutRequest {
		return OutRequest{Source: src, Params: OutParams{LockOp: "lock", Key: "e2e", LockedBy: by, Limit: 1}}
	}
	mustSucceed(t, "first", runBinary(t, "out", lock("e2e-1"), t.TempDir()))
	second := startBinary(t, "out", lock("e2e-2"), t.TempDir())
	waitUntil(t, "the second holder to wait", func() bool { return len(ls.getLock(t, "browsers", src).Waiting) == 1 })
	if l := ls.getLock(t, "browsers", src); l.Limit != 1 || len(l.LockedBy) != 1 {
		t.Fatalf("browsers = %+v; want one holder under a limit of 1", l.Lock)
	}
	mustSucceed(t, "unlock", runBinary(t, "out", outReq(src, "unlock", "e2e", "e2e-1"), t.TempDir()))
	mustSucceed(t, "second", second.wait(t))
}
