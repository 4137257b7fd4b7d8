//go:build !lazyfs

package faults

import "github.com/locker-ci/locker/internal/atomicfile"

// FS returns fsys as it is: this build has no lazy journal.
func FS(fsys atomicfile.FS) atomicfile.FS { return fsys }
