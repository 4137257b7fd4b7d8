//go:build linux

package atomicfile

import (
	"os"
	"syscall"
)

// osFile is an in-place file on Linux: fdatasync, and fallocate for room.
type osFile struct{ *os.File }

// Sync flushes the file's data and what is needed to read it back, without
// the timestamps fsync would also write.
func (f osFile) Sync() error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

// Allocate gives the file size bytes, zero-filled, without writing them.
func (f osFile) Allocate(size int64) error {
	for {
		err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EOPNOTSUPP:
			return f.File.Truncate(size) // a file system without fallocate
		}
		return err
	}
}
