//go:build !linux

package main

import "os"

// osJournal is a journal file where fdatasync and fallocate are not
// available: fsync, and a sparse file for room.
type osJournal struct{ *os.File }

// Allocate gives the file size bytes, zero-filled.
func (f osJournal) Allocate(size int64) error { return f.File.Truncate(size) }
