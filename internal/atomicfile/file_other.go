//go:build !linux

package atomicfile

import "os"

// osFile is an in-place file where fdatasync and fallocate are not
// available: fsync, and a sparse file for room.
type osFile struct{ *os.File }

// Allocate gives the file size bytes, zero-filled.
func (f osFile) Allocate(size int64) error { return f.File.Truncate(size) }
