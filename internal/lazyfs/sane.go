//go:build !lazyfs

// Package lazyfs is what the crash tests build into the server with the
// lazyfs tag, after Jepsen's LazyFS: a journal file that keeps its writes
// in memory until synced, so that a kill -9 loses what was not synced, as
// a power cut would (lazyfs.go). A normal build gets FS as the identity,
// below, and nothing else. Never ship a binary built with the tag.
package lazyfs

import "github.com/locker-ci/locker/internal/atomicfile"

// FS returns fsys as it is: this build has no lazy journal.
func FS(fsys atomicfile.FS) atomicfile.FS { return fsys }
