package engine_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
)

// Several locks at once, on both stores: one change takes them all or
// none, and a set waits in every lock's queue without deadlock.

func TestSetIsAllOrNothing(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		if _, err := enginetest.Acquire(tab, "prod-app", "other", "x"); err != nil {
			t.Fatal(err)
		}
		_, err := tab.AcquireSet(context.Background(), []string{"prod-app", "prod-db"}, setRequest("deploy", "d", 0))
		if !errors.Is(err, engine.ErrHeld) || !strings.Contains(err.Error(), `"prod-app" is held with key "other"`) {
			t.Fatalf("a set with one lock held by another key = %v; want 423 naming prod-app", err)
		}
		if s := enginetest.Get(t, tab, "prod-db"); !s.Free() {
			t.Errorf("prod-db after the refused set = %+v; want it free (all or nothing)", s)
		}
		if _, _, err := tab.Release(context.Background(), "prod-app", "other", "x", false, nil); err != nil {
			t.Fatal(err)
		}
		got, err := tab.AcquireSet(context.Background(), []string{"prod-app", "prod-db"}, setRequest("deploy", "d", 0))
		if err != nil {
			t.Fatal(err)
		}
		app, db := got["prod-app"], got["prod-db"]
		if enginetest.HolderOf(app, "d").Count != 1 || enginetest.HolderOf(db, "d").Count != 1 || app.Token == 0 || db.Token == 0 || app.Token == db.Token {
			t.Errorf("the set granted %+v and %+v; want both held by d, each with its own token", app.Lock, db.Lock)
		}
		// Given back in one change; a wrong key gives back nothing.
		if _, _, err := tab.ReleaseSet(context.Background(), []string{"prod-app", "prod-db"}, "wrong", "d", false, nil); !errors.Is(err, engine.ErrHeld) {
			t.Errorf("ReleaseSet with the wrong key = %v; want engine.ErrHeld", err)
		}
		if enginetest.HolderOf(enginetest.Get(t, tab, "prod-db"), "d").Count != 1 {
			t.Error("a refused ReleaseSet gave back prod-db")
		}
		_, released, err := tab.ReleaseSet(context.Background(), []string{"prod-app", "prod-db"}, "deploy", "d", false, nil)
		if err != nil || released["prod-app"] != 1 || released["prod-db"] != 1 {
			t.Fatalf("ReleaseSet = %v, %v; want one count of each", released, err)
		}
		if len(enginetest.List(t, tab)) != 0 {
			t.Errorf("after ReleaseSet: %v; want no lock held", enginetest.List(t, tab))
		}
	})
}

// TestSetKeepsItsPlace: a set waiting for b keeps its place at the head
// of a's queue, though a is free: a request for a alone does not jump it;
// once b is free the set has both, in one change, then a's next waiter.
func TestSetKeepsItsPlace(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		ctx := context.Background()
		if _, err := enginetest.Acquire(tab, "b", "B", "holder"); err != nil {
			t.Fatal(err)
		}
		set := queuedSet(t, ctx, tab, []string{"a", "b"}, "S", "set")
		if _, err := enginetest.Acquire(tab, "a", "A", "jumper"); !errors.Is(err, engine.ErrHeld) {
			t.Fatalf("a request for a while a set waits at the head of its queue = %v; want it refused", err)
		}
		single := enginetest.Queued(t, ctx, tab, "a", "A", "single")
		if granted(t, set) || granted(t, single) {
			t.Fatal("granted while b is held")
		}
		if _, _, err := tab.Release(context.Background(), "b", "B", "holder", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, set, "the set")
		if granted(t, single) {
			t.Fatal("the single request for a was granted while the set holds it")
		}
		for _, name := range []string{"a", "b"} {
			if got := briefOf(enginetest.Get(t, tab, name).Lock); got.Key != "S" || got.LockedBy["set"] != 1 {
				t.Errorf("%s = %+v; want it held by the set", name, got)
			}
		}
		if _, _, err := tab.ReleaseSet(context.Background(), []string{"a", "b"}, "S", "set", false, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, single, "the single request")
	})
}

// TestSetsInOppositeOrders: many clients take random sets of 2 to 4 of 6
// locks, named in random orders, waiting for them: every request is
// granted (no deadlock), and no lock ever has two holders. Each request
// has an Idempotency-Key and a priority of -1, 0 or 1, and now and then
// a client sends a request of an earlier round again with its key, as a
// client restarted from a key it saved would: it must be told that grant has ended. 8 clients, 15
// sets each, in make test; with LOCKER_STRESS set (make stress), 50
// clients for 30 s on each store, and the longest wait is logged.
func TestSetsInOppositeOrders(t *testing.T) {
	clients, sets, d := 8, 15, time.Duration(0)
	if os.Getenv("LOCKER_STRESS") != "" {
		clients, sets, d = 50, 1<<30, 30*time.Second
	}
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		locks := []string{"l0", "l1", "l2", "l3", "l4", "l5"}
		var mu sync.Mutex
		holding := map[string]string{}
		var longest time.Duration
		granted := 0
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		end := time.Now().Add(d)
		for c := range clients {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(c), 1))
				me := fmt.Sprintf("c%d", c)
				type round struct {
					names []string
					req   engine.Request
				}
				var saved []round // granted and given back, with their keys
				for i := 0; i < sets && (d == 0 || time.Now().Before(end)); i++ {
					if len(saved) > 0 && rng.IntN(4) == 0 {
						old := saved[rng.IntN(len(saved))]
						if got, err := tab.AcquireSet(context.Background(), old.names, old.req); !errors.Is(err, engine.ErrGrantEnded) {
							errs <- fmt.Errorf("%s: set %v sent again with the key of a round it gave back = %v, %v; want engine.ErrGrantEnded", me, old.names, got, err)
							return
						}
					}
					perm := rng.Perm(len(locks))[:2+rng.IntN(3)]
					var names []string
					for _, i := range perm {
						names = append(names, locks[i])
					}
					slices.Sort(names)
					req := setRequest(me, me, time.Minute)
					// Mixed priorities: one order (priority, then arrival)
					// across every queue still leaves no circle of waits.
					req.Priority = rng.IntN(3) - 1
					key := fmt.Sprintf("%s-%d", me, i)
					req.Idem = &engine.IdempotencyKey{Scope: "PUT " + fmt.Sprint(names) + " " + key, Fingerprint: key}
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					asked := time.Now()
					_, err := tab.AcquireSet(ctx, names, req)
					cancel()
					saved = append(saved, round{names, req})
					if err != nil {
						errs <- fmt.Errorf("%s: set %v: %w", me, names, err)
						return
					}
					mu.Lock()
					longest, granted = max(longest, time.Since(asked)), granted+1
					for _, n := range names {
						if other, ok := holding[n]; ok {
							errs <- fmt.Errorf("%s and %s both hold %s", me, other, n)
						}
						holding[n] = me
					}
					mu.Unlock()
					time.Sleep(time.Millisecond)
					mu.Lock()
					for _, n := range names {
						delete(holding, n)
					}
					mu.Unlock()
					if _, _, err := tab.ReleaseSet(context.Background(), names, me, me, false, nil); err != nil {
						errs <- fmt.Errorf("%s: release %v: %w", me, names, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if l := enginetest.List(t, tab); len(l) != 0 {
			t.Errorf("after every client gave back its sets: %d locks held or waited for; want none", len(l))
		}
		t.Logf("%d clients: %d sets granted, the longest wait %v", clients, granted, longest.Round(time.Millisecond))
	})
}

// TestSetRetriedWithItsKey: a set sent again with its Idempotency-Key is
// answered as the first time, and takes nothing more.
func TestSetRetriedWithItsKey(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		names := []string{"a", "b"}
		req := setRequest("k", "r", 0)
		req.Idem = &engine.IdempotencyKey{Scope: "PUT " + fmt.Sprint(names) + " key-1", Fingerprint: "f"}
		first, err := tab.AcquireSet(context.Background(), names, req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := tab.AcquireSet(context.Background(), names, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if !again[n].Replayed || again[n].Token != first[n].Token || enginetest.HolderOf(enginetest.Get(t, tab, n), "r").Count != 1 {
				t.Errorf("%s sent again = %+v (replayed %v); want the first answer, token %d, one count", n, again[n].Lock, again[n].Replayed, first[n].Token)
			}
		}
	})
}
