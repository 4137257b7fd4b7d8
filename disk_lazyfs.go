//go:build lazyfs

package main

import (
	"os"
	"sync"
	"time"
)

// A journal file for crash tests only, built with -tags lazyfs, after
// Jepsen's LazyFS: what is written stays in memory until Sync, so that a
// SIGKILL loses every write that was not synced, as a power cut would (a
// killed process leaves its written pages to the kernel, which saves them).
// Sync also takes lazySyncDelay, as on a slower disk, so that a server that
// answers before its change is synced is found out. Never ship it.

const lazySyncDelay = 2 * time.Millisecond

type lazyJournal struct {
	*os.File

	mu      sync.Mutex
	pending []lazyWrite // written, not synced: lost at a crash
}

type lazyWrite struct {
	p   []byte
	off int64
}

func newJournalFile(f *os.File) journalFile { return &lazyJournal{File: f} }

func (f *lazyJournal) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = append(f.pending, lazyWrite{p: append([]byte(nil), p...), off: off})
	return len(p), nil
}

func (f *lazyJournal) Sync() error {
	time.Sleep(lazySyncDelay)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.pending {
		if _, err := f.File.WriteAt(w.p, w.off); err != nil {
			return err
		}
	}
	f.pending = nil
	return f.File.Sync()
}

func (f *lazyJournal) Allocate(size int64) error { return f.File.Truncate(max(size, 0)) }

func (f *lazyJournal) Truncate(size int64) error {
	f.mu.Lock()
	f.pending = nil
	f.mu.Unlock()
	return f.File.Truncate(size)
}

func (f *lazyJournal) Close() error {
	f.mu.Lock()
	f.pending = nil
	f.mu.Unlock()
	return f.File.Close()
}
