package gcfloor

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// sink keeps what the tests allocate from being optimised away.
var sink []byte

// collections returns how many collections it takes to allocate n bytes
// of garbage in 4 KB pieces, with live bytes kept live all the while.
func collections(live, n int) uint32 {
	keep := make([]byte, live)
	var before, after runtime.MemStats
	runtime.GC() // start from a collection, with keep live
	runtime.ReadMemStats(&before)
	for range n / 4096 {
		sink = make([]byte, 4096)
	}
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(keep)
	return after.NumGC - before.NumGC
}

// TestASmallHeapIsCollectedAtTheFloor: 512 MB of garbage beside 1 MB live
// takes about 512/64 collections with a 64 MB floor, where GOGC=100 alone
// collects at every 2 MB or so.
func TestASmallHeapIsCollectedAtTheFloor(t *testing.T) {
	without := collections(1<<20, 512<<20)
	stop := Set(64 << 20)
	defer stop()
	runtime.GC() // the tuner sets GOGC after a collection
	with := collections(1<<20, 512<<20)
	t.Logf("collections: %d with the floor, %d without", with, without)
	if with > 10 || without < 4*with {
		t.Errorf("512 MB of garbage beside 1 MB live: %d collections with a 64 MB floor, %d without; want at most 10 with, and 4 times as many without", with, without)
	}
}

// TestALargeHeapIsCollectedAsGOGCSays: with more live than the floor, the
// floor changes nothing, and stop gives GOGC back as it was.
func TestALargeHeapIsCollectedAsGOGCSays(t *testing.T) {
	keep := make([]byte, 128<<20)
	stop := Set(64 << 20)
	runtime.GC()
	runtime.GC() // the tuner has run after a collection with keep live
	runtime.KeepAlive(keep)
	if percent := debug.SetGCPercent(100); percent != 100 {
		t.Errorf("with 128 MB live and a 64 MB floor, GOGC = %d; want 100", percent)
	}
	small := Set(64 << 20)
	keep = nil
	runtime.GC()
	runtime.GC()
	if percent := debug.SetGCPercent(100); percent <= 100 {
		t.Errorf("with little live and a 64 MB floor, GOGC = %d; want it raised", percent)
	}
	small()
	stop()
	if percent := debug.SetGCPercent(100); percent != 100 {
		t.Errorf("after stop, GOGC = %d; want 100 again", percent)
	}
}
