// Package filelock takes an exclusive lock on a file that the kernel drops
// when the process dies, however it dies: a kill -9 leaves nothing behind
// to clean up, unlike a pid file.
package filelock

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// HeldError says that another process holds the lock.
type HeldError struct {
	Path string
	PID  int // the holder's pid as it wrote it, or 0 if unknown
}

func (e *HeldError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("%s is held by process %d", e.Path, e.PID)
	}
	return fmt.Sprintf("%s is held by another process", e.Path)
}

// Lock is a held lock.
type Lock struct {
	f *os.File
}

// Acquire takes the lock on path, creating the file (mode 0600) if
// needed, without waiting, and writes this process's pid into it for the
// next one to read. It fails with *HeldError if another process holds it.
func Acquire(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) // a path the operator configured
	if err != nil {
		return nil, err
	}
	held, err := tryLock(f)
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if held {
		data, _ := os.ReadFile(path) // best effort: the pid only makes the message better
		pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
		_ = f.Close()
		return nil, &HeldError{Path: path, PID: pid}
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0) // best effort, as above
	}
	return &Lock{f: f}, nil
}

// Release drops the lock. The file stays: removing it would let a third
// process lock a new file while a second one waits on the old.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the descriptor drops the lock
	l.f = nil
	return err
}
