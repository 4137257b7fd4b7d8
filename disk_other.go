//go:build !linux && !lazyfs

package main

import "os"

// osJournal is a journal file where fdatasync and fallocate are not
// available: fsync, and a sparse file for room.
type osJournal struct{ *os.File }

func newJournalFile(f *os.File) journalFile { return osJournal{f} }

// Allocate gives the file size bytes, zero-filled.
func (f osJournal) Allocate(size int64) error { return f.File.Truncate(size) }
