//go:build pprof

package main

import (
	"os"
	"runtime/pprof"
)

// With the pprof build tag (go build -tags pprof), the server writes a
// CPU profile of its whole run to $LOCKER_CPU_PROFILE, and its heap at the
// end to $LOCKER_CPU_PROFILE.heap, for the benchmark:
//
//	go build -tags pprof -o bin/locker-pprof .
//	bin/locker-bench -locker bin/locker-pprof -only parallel -server-env LOCKER_CPU_PROFILE=/tmp/cpu.out
//	go tool pprof -top bin/locker-pprof /tmp/cpu.out
func init() {
	path := os.Getenv("LOCKER_CPU_PROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		panic(err)
	}
	stopProfile = func() {
		pprof.StopCPUProfile()
		_ = f.Close()
		writeHeapProfile()
	}
}

// writeHeapProfile writes the heap as it is at the end of the run to
// $LOCKER_CPU_PROFILE.heap: what the server keeps.
func writeHeapProfile() {
	f, err := os.Create(os.Getenv("LOCKER_CPU_PROFILE") + ".heap")
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup("heap").WriteTo(f, 0)
}
