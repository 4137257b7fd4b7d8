package engine_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
)

// fencedCounter is a resource that a lock protects: a counter that clients
// read, add one to and write back. With fencing on, every access carries
// the lock's token, and an access with a token lower than the highest seen
// is refused.
type fencedCounter struct {
	fencing bool

	mu      sync.Mutex
	value   int
	highest uint64
}

// access runs f on the counter unless token is stale.
func (c *fencedCounter) access(token uint64, f func(*int)) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fencing {
		if token < c.highest {
			return false
		}
		c.highest = token
	}
	f(&c.value)
	return true
}

// TestFencedWrites has clients take a lock with a short lease, read the
// counter, pause (some longer than the lease, so that another client gets
// the lock meanwhile), and write it back plus one. With fencing, no update
// is lost; without it, updates are lost, which shows the test can see them.
func TestFencedWrites(t *testing.T) {
	for _, fencing := range []bool{true, false} {
		lost, writes := runFencedClients(t, fencing)
		t.Logf("fencing %v: %d writes accepted, %d lost", fencing, writes, lost)
		switch {
		case fencing && lost != 0:
			t.Errorf("with fencing, %d of %d updates were lost", lost, writes)
		case !fencing && lost == 0:
			t.Errorf("without fencing no update was lost in %d writes: the test did not make leases expire mid-update", writes)
		}
	}
}

func runFencedClients(t *testing.T, fencing bool) (lost, writes int) {
	tab := enginetest.File(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var loop sync.WaitGroup
	loop.Go(func() { tab.Run(ctx) })
	defer func() { cancel(); loop.Wait() }()

	counter := &fencedCounter{fencing: fencing}
	const clients, rounds = 4, 25
	const lease = 30 * time.Millisecond
	var mu sync.Mutex
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(c), 3))
			for range rounds {
				key := "client-" + string(rune('a'+c))
				s, err := tab.Acquire(context.Background(), "resource", engine.Request{Request: lock.Request{Key: key, Requestor: key, TTL: lease}, Wait: 10 * time.Second})
				if err != nil {
					t.Error(err)
					return
				}
				var seen int
				if !counter.access(s.Token, func(v *int) { seen = *v }) {
					continue // fenced out already: the lock was lost
				}
				// Work; one time in four for longer than the lease.
				pause := time.Duration(r.IntN(10)) * time.Millisecond
				if r.IntN(4) == 0 {
					pause = lease + 20*time.Millisecond
				}
				time.Sleep(pause)
				if counter.access(s.Token, func(v *int) { *v = seen + 1 }) {
					mu.Lock()
					writes++
					mu.Unlock()
				}
				_, _, _ = tab.Release(context.Background(), "resource", key, key, true, nil) // may have expired already
			}
		})
	}
	wg.Wait()
	return writes - counter.value, writes
}
