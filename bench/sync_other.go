//go:build !linux

package main

import "os"

// allocate gives f size bytes of room.
func allocate(f *os.File, size int64) error { return f.Truncate(size) }

// datasync makes what was written to f durable.
func datasync(f *os.File) error { return f.Sync() }
