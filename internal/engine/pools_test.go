package engine_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// TestPoolClaims: claims take free members, the least recently claimed
// first; a claim for more than are free is refused, or waits and is
// granted in one change once enough are free; claims that wait are
// served in arrival order. Both stores.
func TestPoolClaims(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := tab.SetPool("staging", []string{"s3", "s1", "s2"}); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		var order []string
		for _, who := range []string{"a", "b"} {
			got, err := tab.Claim(ctx, "staging", claimRequest(who, who, 1, 0))
			if err != nil {
				t.Fatal(err)
			}
			order = append(order, claimed(got)...)
		}
		if !reflect.DeepEqual(order, []string{"s1", "s2"}) {
			t.Errorf("two claims got %v; want s1 then s2 (never claimed, by name)", order)
		}
		_, err := tab.Claim(ctx, "staging", claimRequest("c", "c", 2, 0))
		if !errors.Is(err, engine.ErrHeld) || !strings.Contains(err.Error(), `the pool "staging" has 1 of its 3 members free for a claim of 2`) {
			t.Fatalf("a claim of 2 with 1 free = %v; want 423 saying how many are free", err)
		}
		if s := enginetest.Get(t, tab, "s3"); !s.Free() {
			t.Errorf("s3 after the refused claim = %+v; want it free", s.Lock)
		}
		c := queuedClaim(t, tab, "staging", "c", 2)
		d := queuedClaim(t, tab, "staging", "d", 1)
		if _, _, err := tab.Release(context.Background(), "s1", "a", "a", false, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-c:
			if want := []string{"s1", "s3"}; !reflect.DeepEqual(claimed(got), want) {
				t.Errorf("c's claim of 2 got %v; want %v", claimed(got), want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("c's claim was not granted once two members were free")
		}
		select {
		case got := <-d:
			t.Fatalf("d, behind c, was granted %v with no member free", claimed(got))
		default:
		}
		if _, _, err := tab.Release(context.Background(), "s2", "b", "b", false, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-d:
			if !reflect.DeepEqual(claimed(got), []string{"s2"}) {
				t.Errorf("d got %v; want s2", claimed(got))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("d's claim was not granted once s2 was free")
		}
		if v, err := tab.Pool("staging"); err != nil || len(v.Waiting) != 0 {
			t.Errorf("the pool's queue after = %+v, %v; want empty", v.Waiting, err)
		}
	})
}

// TestPoolBadClaimsAndChanges: an unknown pool, a claim for more members
// than the pool has, and a member removed while held (it stays held, and
// is given back as any lock).
func TestPoolBadClaimsAndChanges(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		ctx := context.Background()
		if _, err := tab.Claim(ctx, "nope", claimRequest("k", "k", 1, 0)); !errors.Is(err, engine.ErrNoPool) {
			t.Errorf("a claim on no pool = %v; want engine.ErrNoPool", err)
		}
		if _, err := tab.SetPool("envs", []string{"e1", "e2"}); err != nil {
			t.Fatal(err)
		}
		if _, err := tab.Claim(ctx, "envs", claimRequest("k", "k", 3, 0)); !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), "has 2 members") {
			t.Errorf("a claim of 3 from 2 members = %v; want 400", err)
		}
		got, err := tab.Claim(ctx, "envs", claimRequest("k", "k", 1, 0))
		if err != nil || !reflect.DeepEqual(claimed(got), []string{"e1"}) {
			t.Fatalf("claim = %v, %v; want e1", claimed(got), err)
		}
		if _, err := tab.SetPool("envs", []string{"e2", "e3"}); err != nil {
			t.Fatal(err)
		}
		if enginetest.HolderOf(enginetest.Get(t, tab, "e1"), "k").Count != 1 {
			t.Error("e1, removed from the pool while held, is no longer held")
		}
		if _, released, err := tab.Release(context.Background(), "e1", "k", "k", false, nil); err != nil || released != 1 {
			t.Errorf("giving back e1 = %d, %v; want 1", released, err)
		}
		if err := tab.DeletePool("envs"); err != nil {
			t.Fatal(err)
		}
		if err := tab.DeletePool("envs"); !errors.Is(err, engine.ErrNoPool) {
			t.Errorf("deleting it again = %v; want engine.ErrNoPool", err)
		}
	})
}

// TestPoolNeverGivesAMemberTwice: 20 clients claim from a pool of 5 and
// give back what they got, for a while: no member ever has two claims.
func TestPoolNeverGivesAMemberTwice(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := tab.SetPool("p", []string{"m1", "m2", "m3", "m4", "m5"}); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		holding := map[string]string{}
		var wg sync.WaitGroup
		for c := range 20 {
			wg.Go(func() {
				me := fmt.Sprintf("c%d", c)
				for range 5 {
					got, err := tab.Claim(context.Background(), "p", claimRequest(me, me, 1+c%2, 30*time.Second))
					if err != nil {
						t.Errorf("%s: %v", me, err)
						return
					}
					mu.Lock()
					for m := range got {
						if other, ok := holding[m]; ok {
							t.Errorf("%s and %s both hold %s", me, other, m)
						}
						holding[m] = me
					}
					mu.Unlock()
					time.Sleep(time.Millisecond)
					mu.Lock()
					for m := range got {
						delete(holding, m)
					}
					mu.Unlock()
					if _, _, err := tab.ReleaseSet(context.Background(), claimed(got), me, me, false, nil); err != nil {
						t.Errorf("%s: %v", me, err)
						return
					}
				}
			})
		}
		wg.Wait()
		if l := enginetest.List(t, tab); len(l) != 0 {
			t.Errorf("after every claim was given back: %d locks held or waited for", len(l))
		}
	})
}

// TestPoolSurvivesARestart: a pool and when its members were claimed are
// kept in the state file and its journal.
func TestPoolSurvivesARestart(t *testing.T) {
	tab := enginetest.File(t, nil)
	path := tab.Path
	if _, err := tab.SetPool("p", []string{"m1", "m2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Claim(context.Background(), "p", claimRequest("k", "k", 1, 0)); err != nil {
		t.Fatal(err)
	}
	again := enginetest.Load(t, path, nil, time.Now)
	pools, err := again.Pools()
	if err != nil || !reflect.DeepEqual(pools["p"].Members, []string{"m1", "m2"}) || pools["p"].Claimed["m1"].IsZero() {
		t.Errorf("after a restart: %+v, %v; want p with m1 claimed", pools, err)
	}
}

// TestClaimsAndSetsAcrossNodes: on three nodes sharing one database,
// claims on a pool wait first come, first served whatever node they came
// to, and a set waiting on one node is granted when another node frees its
// last lock.
func TestClaimsAndSetsAcrossNodes(t *testing.T) {
	u := testutil.PostgresSchema(t)
	a, b, c := enginetest.Postgres(t, u, "a"), enginetest.Postgres(t, u, "b"), enginetest.Postgres(t, u, "c")
	if _, err := a.SetPool("p", []string{"m1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Claim(context.Background(), "p", claimRequest("holder", "holder", 1, 0)); err != nil {
		t.Fatal(err)
	}
	first := queuedClaim(t, b, "p", "first", 1)
	second := queuedClaim(t, c, "p", "second", 1)
	if _, _, err := a.Release(context.Background(), "m1", "holder", "holder", false, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-first:
		if !reflect.DeepEqual(claimed(got), []string{"m1"}) {
			t.Fatalf("first got %v; want m1", claimed(got))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first claim, on node b, was not granted when node a gave m1 back")
	}
	select {
	case got := <-second:
		t.Fatalf("second, behind first, was granted %v", claimed(got))
	case <-time.After(300 * time.Millisecond):
	}
	if _, _, err := b.Release(context.Background(), "m1", "first", "first", false, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-second:
		if !reflect.DeepEqual(claimed(got), []string{"m1"}) {
			t.Fatalf("second got %v; want m1", claimed(got))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second claim, on node c, was not granted")
	}

	if _, err := enginetest.Acquire(a, "y", "A", "a"); err != nil {
		t.Fatal(err)
	}
	set := queuedSet(t, context.Background(), b, []string{"x", "y"}, "S", "set")
	if _, _, err := a.Release(context.Background(), "y", "A", "a", false, nil); err != nil {
		t.Fatal(err)
	}
	mustGrant(t, set, "the set on node b")
	for _, name := range []string{"x", "y"} {
		if enginetest.HolderOf(enginetest.Get(t, c, name), "set").Count != 1 {
			t.Errorf("%s, seen from node c, is not held by the set", name)
		}
	}
}

// TestAnOrphanWaiterIsTakenOut: a waiter of a live node that no request
// watches any more (its request ended while the database could not be
// reached, and gave up taking it out) is taken out by its node, and what
// it was granted is given back: the lock is not held for no one.
func TestAnOrphanWaiterIsTakenOut(t *testing.T) {
	tab := enginetest.Postgres(t, testutil.PostgresSchema(t), "a")
	if _, err := enginetest.Acquire(tab, "l", "A", "holder"); err != nil {
		t.Fatal(err)
	}
	req := engine.Request{Request: lock.Request{Key: "B", Requestor: "gone"}, Wait: time.Hour}
	if err := engine.Update(tab.Engine, context.Background(), []string{"l"}, txn.Options{NewWait: true}, func(tx txn.Tx) error {
		engine.Enqueue(tx, []string{"l"}, req) // queued, with no request watching it
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tab.Release(context.Background(), "l", "A", "holder", false, nil); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the orphan to be taken out and its grant given back", func() bool {
		s := enginetest.Get(t, tab, "l")
		return s.Free() && len(s.Waiting) == 0 && len(enginetest.List(t, tab)) == 0
	})
}
