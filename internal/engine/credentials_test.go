package engine_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
)

// TestCredentialsAreKept: a credential made is listed with its grants and
// its secret's hash (no secret: the engine never sees one), a second of
// the same name is refused, a rotation changes the hash alone, a
// revocation removes it, and each of these is refused for a name that is
// not there. Both stores.
func TestCredentialsAreKept(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		ctx := context.Background()
		_, hash := access.NewSecret()
		at := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
		c := access.Credential{Name: "team-a-ci", Hash: hash, Grants: []access.Grant{{Role: access.Lock, Prefix: "team-a/"}},
			CreatedBy: "admin", CreatedAt: at, ExpiresAt: at.Add(90 * 24 * time.Hour)}
		if err := tab.CreateCredential(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := tab.CreateCredential(ctx, c); !errors.Is(err, engine.ErrCredentialExists) {
			t.Errorf("a second credential called team-a-ci = %v; want ErrCredentialExists", err)
		}
		creds, err := tab.Credentials(ctx)
		if err != nil || !reflect.DeepEqual(creds, map[string]access.Credential{"team-a-ci": c}) {
			t.Fatalf("credentials = %+v, %v; want team-a-ci as made", creds, err)
		}
		_, newHash := access.NewSecret()
		rotated, err := tab.RotateCredential(ctx, "team-a-ci", newHash, "admin")
		want := c
		want.Hash = newHash
		if err != nil || !reflect.DeepEqual(rotated, want) {
			t.Errorf("rotated = %+v, %v; want the same credential with the new hash", rotated, err)
		}
		if err := tab.DeleteCredential(ctx, "team-a-ci", "admin"); err != nil {
			t.Fatal(err)
		}
		if creds, err := tab.Credentials(ctx); err != nil || len(creds) != 0 {
			t.Errorf("credentials after the revocation = %+v, %v; want none", creds, err)
		}
		if err := tab.DeleteCredential(ctx, "team-a-ci", "admin"); !errors.Is(err, engine.ErrNoCredential) {
			t.Errorf("revoking it again = %v; want ErrNoCredential", err)
		}
		if _, err := tab.RotateCredential(ctx, "nobody", newHash, "admin"); !errors.Is(err, engine.ErrNoCredential) {
			t.Errorf("rotating no credential = %v; want ErrNoCredential", err)
		}
	})
}

// TestCredentialsSurviveARestart: the file store keeps credentials in its
// journal and its state file, hashes only.
func TestCredentialsSurviveARestart(t *testing.T) {
	tab := enginetest.File(t, nil)
	_, hash := access.NewSecret()
	c := access.Credential{Name: "ops", Hash: hash, Grants: []access.Grant{{Role: access.Operate, Prefix: ""}}}
	if err := tab.CreateCredential(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"from the journal", "from the state file"} {
		again := enginetest.Load(t, tab.Path, nil, time.Now)
		creds, err := again.Credentials(context.Background())
		if err != nil || !reflect.DeepEqual(creds["ops"], c) {
			t.Errorf("%s: credentials = %+v, %v; want ops", name, creds, err)
		}
		if err := again.Store.Close(true); err != nil { // a checkpoint: the next opening reads the state file
			t.Fatal(err)
		}
	}
}
