//go:build lazyfs

package lazyfs

import (
	"sync"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
)

// With -tags lazyfs, after Jepsen's LazyFS, the journal file keeps what is
// written in memory until Sync, so that a SIGKILL loses every write that
// was not synced, as a power cut would (a killed process leaves its written
// pages to the kernel, which saves them). Sync also takes lazySyncDelay, as
// on a slower disk, so that a server that answers before its change is
// synced is found out.

const lazySyncDelay = 2 * time.Millisecond

// FS returns fsys, with the journal's files made lazy.
func FS(fsys atomicfile.FS) atomicfile.FS { return lazyFS{fsys} }

type lazyFS struct{ atomicfile.FS }

func (l lazyFS) OpenInPlace(name string) (atomicfile.InPlaceFile, error) {
	f, err := l.FS.OpenInPlace(name)
	if err != nil {
		return nil, err
	}
	return &lazyFile{InPlaceFile: f}, nil
}

type lazyFile struct {
	atomicfile.InPlaceFile

	mu      sync.Mutex  // guards pending
	pending []lazyWrite // written, not synced: lost at a crash
}

type lazyWrite struct {
	p   []byte
	off int64
}

func (f *lazyFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = append(f.pending, lazyWrite{p: append([]byte(nil), p...), off: off})
	return len(p), nil
}

func (f *lazyFile) Sync() error {
	time.Sleep(lazySyncDelay)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.pending {
		if _, err := f.InPlaceFile.WriteAt(w.p, w.off); err != nil {
			return err
		}
	}
	f.pending = nil
	return f.InPlaceFile.Sync()
}

// Allocate grows the file without fallocate: the zeros are written, so
// that the lazy writes above land in a file of the right size.
func (f *lazyFile) Allocate(size int64) error { return f.InPlaceFile.Truncate(max(size, 0)) }

func (f *lazyFile) Truncate(size int64) error {
	f.mu.Lock()
	f.pending = nil
	f.mu.Unlock()
	return f.InPlaceFile.Truncate(size)
}

func (f *lazyFile) Close() error {
	f.mu.Lock()
	f.pending = nil
	f.mu.Unlock()
	return f.InPlaceFile.Close()
}
