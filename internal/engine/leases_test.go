package engine_test

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

func TestLeases(t *testing.T) {
	clock := testutil.NewFakeClock()
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := enginetest.Load(t, path, nil, clock.Now)
	start := clock.Now()
	if _, err := tab.Acquire(context.Background(), "l", engine.Request{Request: lock.Request{Key: "k", Requestor: "a", TTL: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	if _, err := enginetest.Acquire(tab, "l", "k", "b"); err != nil { // no lease
		t.Fatal(err)
	}
	if got := enginetest.HolderOf(enginetest.Get(t, tab, "l"), "a").ExpiresAt; !got.Equal(start.Add(time.Minute)) {
		t.Errorf("expires_at = %v; want %v", got, start.Add(time.Minute))
	}

	// Renewing moves the expiry without changing the count; a PUT without
	// ttl leaves the lease as it was.
	clock.Advance(50 * time.Second)
	if _, err := tab.Renew(context.Background(), "l", "k", "a", time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := enginetest.Acquire(tab, "l", "k", "a"); err != nil {
		t.Fatal(err)
	}
	h := enginetest.HolderOf(enginetest.Get(t, tab, "l"), "a")
	if want := start.Add(110 * time.Second); !h.ExpiresAt.Equal(want) || h.Count != 2 {
		t.Errorf("after renew: expires_at %v, count %d; want %v, 2", h.ExpiresAt, h.Count, want)
	}
	if _, err := tab.Renew(context.Background(), "l", "other", "a", time.Minute, nil); !errors.Is(err, engine.ErrHeld) {
		t.Errorf("renew with the wrong key = %v; want engine.ErrHeld", err)
	}
	if _, err := tab.Renew(context.Background(), "l", "k", "nobody", time.Minute, nil); !errors.Is(err, engine.ErrHeld) {
		t.Errorf("renew by a non-holder = %v; want engine.ErrHeld", err)
	}

	// The original expiry passes: nothing happens, it was renewed.
	clock.Advance(11 * time.Second)
	settleAll(t, tab)
	if got := enginetest.HolderOf(enginetest.Get(t, tab, "l"), "a").Count; got != 2 {
		t.Fatalf("count after the renewed lease's old expiry = %d; want 2", got)
	}

	// A waiter with another key queues; when a's lease runs out, every count
	// of a goes, b still holds, and the waiter keeps waiting.
	c := enginetest.Queued(t, context.Background(), tab, "l", "other", "c")
	clock.Advance(time.Minute)
	settleAll(t, tab)
	if got, want := briefOf(enginetest.Get(t, tab, "l").Lock), (brief{"k", map[string]int{"b": 1}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a's lease ran out, lock = %v; want %v", got, want)
	}
	if granted(t, c) {
		t.Fatal("c was granted while b holds the lock")
	}
	if _, _, err := tab.Release(context.Background(), "l", "k", "b", false, nil); err != nil {
		t.Fatal(err)
	}
	mustGrant(t, c, "c")

	// The expiry was saved.
	reloaded := enginetest.Load(t, path, nil, clock.Now)
	if got, want := briefOf(enginetest.Get(t, reloaded, "l").Lock), (brief{"other", map[string]int{"c": 1}}); !reflect.DeepEqual(got, want) {
		t.Errorf("file holds %v; want %v", got, want)
	}
}

func TestLeaseExpiresWhileStopped(t *testing.T) {
	clock := testutil.NewFakeClock()
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := enginetest.Load(t, path, nil, clock.Now)
	if _, err := tab.Acquire(context.Background(), "leased", engine.Request{Request: lock.Request{Key: "k", Requestor: "a", TTL: time.Minute, Note: "build 42"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := enginetest.Acquire(tab, "kept", "k", "a"); err != nil {
		t.Fatal(err)
	}
	// Restarted before the lease runs out: it is still there, note and all.
	early := enginetest.Load(t, path, nil, clock.Now)
	if h := enginetest.HolderOf(enginetest.Get(t, early, "leased"), "a"); h.Note != "build 42" || h.ExpiresAt.IsZero() {
		t.Errorf("holder after a restart = %+v; want its note and lease", h)
	}
	// Restarted after: it is gone, the other lock is not.
	clock.Advance(2 * time.Minute)
	late := enginetest.Load(t, path, nil, clock.Now)
	settleAll(t, late)
	if !enginetest.Get(t, late, "leased").Free() || enginetest.Get(t, late, "kept").Free() {
		t.Errorf("after a restart past the lease: leased = %+v, kept = %+v; want leased free, kept held",
			enginetest.Get(t, late, "leased").Lock, enginetest.Get(t, late, "kept").Lock)
	}
}

func TestExpireLoopReleasesOnTime(t *testing.T) {
	tab := enginetest.File(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tab.Run(ctx)
	}()
	defer func() { cancel(); <-done }()
	if _, err := tab.Acquire(context.Background(), "l", engine.Request{Request: lock.Request{Key: "k", Requestor: "a", TTL: 30 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the lease to expire", func() bool { return enginetest.Get(t, tab, "l").Free() })
}

// TestLeaseIsJudgedAtTheRequest lets a lease run out with no expiry loop
// running: every request must see it ended, not only the loop. A renewal
// is refused and another key is granted at once.
func TestLeaseIsJudgedAtTheRequest(t *testing.T) {
	t.Parallel() // mostly waits
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := tab.Acquire(context.Background(), "l", engine.Request{Request: lock.Request{Key: "k", Requestor: "a", TTL: time.Second, Named: true}}); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, "the lease to run out", func() bool { return enginetest.Get(t, tab, "l").Free() })
		if _, err := tab.Renew(context.Background(), "l", "k", "a", time.Minute, nil); !errors.Is(err, engine.ErrHeld) {
			t.Errorf("renewing a lease after it ran out = %v; want engine.ErrHeld", err)
		}
		if _, err := enginetest.Acquire(tab, "l", "other", "b"); err != nil {
			t.Errorf("another key after the only lease ran out = %v; want it granted", err)
		}
	})
}

func TestTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	tab := enginetest.Load(t, path, nil, time.Now)
	first, err := enginetest.Acquire(tab, "l", "k", "a")
	if err != nil {
		t.Fatal(err)
	}
	again, err := enginetest.Acquire(tab, "l", "k", "b") // still held: same token
	if err != nil || again.Token != first.Token {
		t.Fatalf("token while held = %d, %v; want %d", again.Token, err, first.Token)
	}
	other, err := enginetest.Acquire(tab, "m", "k", "a")
	if err != nil || other.Token <= first.Token {
		t.Fatalf("token of another lock = %d, %v; want above %d", other.Token, err, first.Token)
	}
	for _, r := range []string{"a", "b"} {
		if _, _, err := tab.Release(context.Background(), "l", "k", r, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := tab.Release(context.Background(), "m", "k", "a", false, nil); err != nil {
		t.Fatal(err)
	}
	// Every lock is free and gone from the file, yet a restart does not
	// hand out a token again.
	reloaded := enginetest.Load(t, path, nil, time.Now)
	next, err := enginetest.Acquire(reloaded, "l", "k", "a")
	if err != nil || next.Token <= other.Token {
		t.Errorf("token after a restart = %d, %v; want above %d", next.Token, err, other.Token)
	}
}

func TestForceRelease(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		for _, r := range []string{"a", "b", "a"} {
			if _, err := enginetest.Acquire(tab, "l", "k", r); err != nil {
				t.Fatal(err)
			}
		}
		c := enginetest.Queued(t, context.Background(), tab, "l", "other", "c")
		old, _, err := tab.ForceRelease(context.Background(), "l", "test", nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := briefOf(old), (brief{"k", map[string]int{"a": 2, "b": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("force release returned %v; want what was held, %v", got, want)
		}
		mustGrant(t, c, "c")
		if got, want := briefOf(enginetest.Get(t, tab, "l").Lock), (brief{"other", map[string]int{"c": 1}}); !reflect.DeepEqual(got, want) {
			t.Errorf("lock after force release = %v; want the waiter's, %v", got, want)
		}
	})
}
