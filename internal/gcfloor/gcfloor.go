// Package gcfloor keeps the garbage collector from running more often than
// a small heap needs. Go collects when the heap has doubled since the last
// collection (GOGC=100): a lock server holding a few megabytes, serving
// thousands of requests a second, each leaving garbage behind, collects
// twenty times a second, and spends several per cent of its CPU on it
// (about 5% of the server's in a profile under load). With a floor,
// the heap may grow to the floor before a collection however little of it
// is live; a heap whose live part is above half the floor is collected as
// GOGC says, so a large lock table costs no more memory than before.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// Set makes the collector run when the heap reaches floor bytes, or when
// GOGC says (twice the live heap by default) if that is later, from the
// next collection on, until stop is called. It adjusts GOGC after each
// collection. With GOGC=off it does nothing.
func Set(floor uint64) (stop func()) {
	base := debug.SetGCPercent(100) // read it; set back below
	debug.SetGCPercent(base)
	if base < 0 {
		return func() {}
	}
	t := &tuner{floor: floor, base: base, sample: []metrics.Sample{{Name: liveHeap}, {Name: stacks}, {Name: globals}}}
	t.arm()
	return func() {
		t.stopped.Store(true)
		debug.SetGCPercent(base)
	}
}

// The runtime's measures of what the last collection found: the heap
// that survived it, and the stacks and globals it scanned. The runtime's
// goal for the next collection is live + (live + stacks + globals) x
// GOGC/100, and at least heapMinimum x GOGC/100.
const (
	heapMinimum = 4 << 20 // the runtime's least goal at GOGC=100

	liveHeap = "/gc/heap/live:bytes"
	stacks   = "/gc/scan/stack:bytes"
	globals  = "/gc/scan/globals:bytes"
)

type tuner struct {
	floor   uint64
	base    int
	sample  []metrics.Sample
	stopped atomic.Bool
}

// sentinel is garbage whose finalizer runs once a collection has found it
// unreachable: after each collection, as the finalizer makes a new one.
type sentinel struct{ t *tuner }

func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{t}, func(s *sentinel) {
		if !s.t.stopped.Load() {
			s.t.tune()
			s.t.arm()
		}
	})
}

// tune sets GOGC so that the next collection comes at the floor, or at
// the base's growth of the live heap if that is later.
func (t *tuner) tune() {
	metrics.Read(t.sample)
	for _, s := range t.sample {
		if s.Value.Kind() != metrics.KindUint64 {
			return // a runtime without the measure: leave GOGC be
		}
	}
	live := t.sample[0].Value.Uint64()
	scanned := max(live+t.sample[1].Value.Uint64()+t.sample[2].Value.Uint64(), 1)
	percent := t.base
	if live < t.floor {
		// The runtime's goal is also never below 4 MB x GOGC/100: the
		// percent is capped so that this minimum is the floor.
		percent = max(percent, int(min((t.floor-live)*100/scanned, t.floor*100/heapMinimum)))
	}
	if !t.stopped.Load() {
		debug.SetGCPercent(percent)
	}
}
