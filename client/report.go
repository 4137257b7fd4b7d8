package client

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Telling a waiting caller where its request stands.

// reportWhileWaiting tells o.Progress, after o.ReportFirst and then every
// o.ReportEvery until stopped, where r stands (report: who holds the lock
// or the pool's members, and r's place in the queue).
func reportWhileWaiting(ctx context.Context, report reporter, r Request, o Options) (stop func()) {
	if o.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTimer(cmp.Or(o.ReportFirst, time.Second))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			report(ctx, r, o)
			t.Reset(cmp.Or(o.ReportEvery, 30*time.Second))
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-finished
	}
}

// A reporter tells o.Progress where a waiting request r stands.
type reporter func(ctx context.Context, r Request, o Options)

// lockReport reports who holds the lock called name and where r stands
// in its queue.
func (c *Client) lockReport(name string) reporter {
	return func(ctx context.Context, r Request, o Options) { c.reportLockWait(ctx, name, r, o) }
}

// poolReport reports who holds the members of the pool called pool and
// where a claim of count stands in its queue.
func (c *Client) poolReport(pool string, count int) reporter {
	return func(ctx context.Context, r Request, o Options) {
		p, err := c.Pool(ctx, pool)
		if err != nil {
			if ctx.Err() == nil {
				o.say("still waiting for %d of the pool %q (could not see who holds its members: %v)", count, pool, err)
			}
			return
		}
		var held []string
		for _, name := range slices.Sorted(maps.Keys(p.Members)) {
			if l := p.Members[name]; l.Key != "" {
				var by []string
				for _, h := range slices.Sorted(maps.Keys(l.LockedBy)) {
					by = append(by, fmt.Sprintf("%s (%d)", h, l.LockedBy[h]))
				}
				held = append(held, fmt.Sprintf("%s by %s", name, strings.Join(by, ", ")))
			}
		}
		msg := fmt.Sprintf("waiting for %d of the pool %q: %d of %d members free", count, pool, len(p.Free), len(p.Members))
		if len(held) > 0 {
			msg += "; held: " + strings.Join(held, ", ")
		}
		o.say("%s%s", msg, queuePlace(r, len(p.Waiting), func(i int) Waiter { return p.Waiting[i].Waiter }))
	}
}

// queuePlace says where r stands in a queue of n: "; number 2 of 3 in
// the queue", or how many wait when r is not among them.
func queuePlace(r Request, n int, at func(int) Waiter) string {
	me := cmp.Or(r.Requestor, r.Key)
	for i := range n {
		if w := at(i); w.Requestor == me && w.Key == r.Key {
			return fmt.Sprintf("; number %d of %d in the queue", i+1, n)
		}
	}
	if n > 0 {
		return fmt.Sprintf("; %d request(s) in the queue", n)
	}
	return ""
}

// reportLockWait tells o.Progress who holds the lock and where r stands
// in its queue.
func (c *Client) reportLockWait(ctx context.Context, name string, r Request, o Options) {
	l, err := c.Get(ctx, name)
	if err != nil {
		if ctx.Err() == nil {
			o.say("still waiting for %q (could not see who holds it: %v)", name, err)
		}
		return
	}
	msg := fmt.Sprintf("waiting for %q: held with key %q by %s", name, l.Key, cmp.Or(l.HoldersString(), "no one"))
	o.say("%s%s", msg, queuePlace(r, len(l.Waiting), func(i int) Waiter { return l.Waiting[i] }))
}
