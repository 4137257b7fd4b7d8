package engine_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestTheQueueFollowsItsModel is a model check of priorities and
// superseding, on each store: rounds of random waiting requests (three
// requestors, priorities -1 to 1, one in four superseding) queue for a
// held lock, each with a key of its own. A model of the queue (a list in
// the order it is served: priority, then arrival; a superseding request
// first drops its requestor's earlier ones) says which are answered
// ErrRemoved, the order the queue is shown in after each request, and
// the order the rest are granted in as each holder gives the lock back.
func TestTheQueueFollowsItsModel(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		for round := range 6 {
			rng := rand.New(rand.NewPCG(uint64(round), 35))
			name := fmt.Sprintf("model-%d", round)
			if _, err := enginetest.Acquire(tab, name, "k-holder", "holder"); err != nil {
				t.Fatal(err)
			}
			type request struct {
				key, requestor string
				priority       int
				supersede      bool
				done           chan error
			}
			var model []request // waiting, in the order they are served
			var removed []request
			for i := range 14 {
				r := request{key: fmt.Sprintf("k%d", i), requestor: fmt.Sprintf("r%d", rng.IntN(3)), priority: rng.IntN(3) - 1,
					supersede: rng.IntN(4) == 0, done: make(chan error, 1)}
				if r.supersede {
					for _, m := range model {
						if m.requestor == r.requestor {
							removed = append(removed, m)
						}
					}
					model = slices.DeleteFunc(model, func(m request) bool { return m.requestor == r.requestor })
				}
				at := len(model)
				for at > 0 && model[at-1].priority < r.priority {
					at--
				}
				model = slices.Insert(model, at, r)
				go func() {
					_, err := tab.Acquire(context.Background(), name, engine.Request{
						Request: lock.Request{Key: r.key, Requestor: r.requestor, Named: true}, Wait: time.Minute,
						Priority: r.priority, Supersede: r.supersede})
					r.done <- err
				}()
				var shown []string
				testutil.WaitFor(t, fmt.Sprintf("round %d, request %d to queue", round, i), func() bool {
					shown = shown[:0]
					s := enginetest.Get(t, tab, name)
					for _, w := range s.Waiting {
						shown = append(shown, w.Key)
					}
					return slices.Contains(shown, r.key) && len(shown) == len(model)
				})
				var want []string
				for _, m := range model {
					want = append(want, m.key)
				}
				if !slices.Equal(shown, want) {
					t.Fatalf("round %d: after %+v the queue is %v; the model says %v", round, r, shown, want)
				}
			}
			for _, r := range removed {
				if err := <-r.done; !errors.Is(err, engine.ErrRemoved) {
					t.Errorf("round %d: %s's request (superseded) = %v; want ErrRemoved", round, r.key, err)
				}
			}
			holder := request{key: "k-holder", requestor: "holder"}
			for _, next := range model {
				if _, _, err := tab.Release(context.Background(), name, holder.key, holder.requestor, true, nil); err != nil {
					t.Fatal(err)
				}
				if err := <-next.done; err != nil {
					t.Fatalf("round %d: %s's request = %v; want it granted next", round, next.key, err)
				}
				if s := enginetest.Get(t, tab, name); s.Key != next.key {
					t.Fatalf("round %d: the lock went to key %q; the model says %s (%+v)", round, s.Key, next.key, next)
				}
				holder = next
			}
			if _, _, err := tab.Release(context.Background(), name, holder.key, holder.requestor, true, nil); err != nil {
				t.Fatal(err)
			}
		}
	})
}
