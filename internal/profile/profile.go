//go:build pprof

// Package profile writes the server's profiles in a build with the pprof
// tag (go build -tags pprof), for the benchmark: the CPU profile of the
// whole run to $LOCKER_CPU_PROFILE, and the heap at its end to
// $LOCKER_CPU_PROFILE.heap. A build without the tag has none of it:
//
//	go build -tags pprof -o bin/locker-pprof .
//	bin/locker-bench -locker bin/locker-pprof -only parallel -server-env LOCKER_CPU_PROFILE=/tmp/cpu.out
//	go tool pprof -top bin/locker-pprof /tmp/cpu.out
package profile

import (
	"os"
	"runtime/pprof"
)

// Start starts the CPU profile $LOCKER_CPU_PROFILE names, if any, and
// returns what ends it and writes the heap.
func Start() (stop func()) {
	path := os.Getenv("LOCKER_CPU_PROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		panic(err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
		writeHeap(path + ".heap")
	}
}

// writeHeap writes the heap as it is now to path: what the server keeps.
func writeHeap(path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup("heap").WriteTo(f, 0)
}
