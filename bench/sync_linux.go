//go:build linux

package main

import (
	"os"
	"syscall"
)

// allocate gives f size bytes of room, as the locker's journal does on
// Linux: syncing into allocated space does not change the file's size.
func allocate(f *os.File, size int64) error { return syscall.Fallocate(int(f.Fd()), 0, 0, size) }

// datasync makes what was written to f durable, as the locker's journal
// does on Linux.
func datasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
