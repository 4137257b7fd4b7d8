package faults

import (
	"errors"
	"sync"

	"github.com/locker-ci/locker/internal/atomicfile"
)

// ErrInjected is the error Faulty's operations fail with.
var ErrInjected = errors.New("injected disk fault")

// Faulty is the real file system for tests, except that the operation
// named FailAt fails with ErrInjected. It records every operation by name,
// in order: "create", "write", "sync", "close" (a temporary file),
// "rename", "remove", "syncdir", and "open", "jwrite", "jsync", "truncate"
// (an in-place file).
type Faulty struct {
	mu     sync.Mutex // guards the fields below
	FailAt string     // an operation's name, or ""
	ops    []string

	// When holdAt names an operation, it signals held and waits for
	// release before going on (and failing, if FailAt names it too).
	holdAt  string
	held    chan struct{}
	release chan struct{}
}

func (d *Faulty) step(op string) error {
	d.mu.Lock()
	d.ops = append(d.ops, op)
	hold := d.holdAt == op
	if hold {
		d.holdAt = "" // once
	}
	held, release := d.held, d.release
	d.mu.Unlock()
	if hold {
		held <- struct{}{}
		<-release
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.FailAt == op {
		return ErrInjected
	}
	return nil
}

// Hold makes the next op wait until the caller calls release; held is
// signalled when it starts waiting.
func (d *Faulty) Hold(op string) (held <-chan struct{}, release func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.holdAt, d.held, d.release = op, make(chan struct{}), make(chan struct{})
	return d.held, sync.OnceFunc(func() { close(d.release) })
}

// Fail makes the operation op fail from now on ("" for none).
func (d *Faulty) Fail(op string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.FailAt = op
}

// Took returns the operations done so far, and forgets them.
func (d *Faulty) Took() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	ops := d.ops
	d.ops = nil
	return ops
}

func (d *Faulty) CreateTemp(dir, pattern string) (atomicfile.TempFile, error) {
	if err := d.step("create"); err != nil {
		return nil, err
	}
	f, err := atomicfile.OS{}.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &faultyTemp{TempFile: f, disk: d}, nil
}

func (d *Faulty) OpenInPlace(name string) (atomicfile.InPlaceFile, error) {
	if err := d.step("open"); err != nil {
		return nil, err
	}
	f, err := atomicfile.OS{}.OpenInPlace(name)
	if err != nil {
		return nil, err
	}
	return &faultyInPlace{InPlaceFile: f, disk: d}, nil
}

func (d *Faulty) Rename(oldpath, newpath string) error {
	if err := d.step("rename"); err != nil {
		return err
	}
	return atomicfile.OS{}.Rename(oldpath, newpath)
}

func (d *Faulty) Remove(name string) error {
	_ = d.step("remove")
	return atomicfile.OS{}.Remove(name)
}

func (d *Faulty) SyncDir(dir string) error {
	if err := d.step("syncdir"); err != nil {
		return err
	}
	return atomicfile.OS{}.SyncDir(dir)
}

type faultyInPlace struct {
	atomicfile.InPlaceFile
	disk *Faulty
}

func (f *faultyInPlace) WriteAt(p []byte, off int64) (int, error) {
	if err := f.disk.step("jwrite"); err != nil {
		// A failed write may still leave part of the data in the file.
		n, _ := f.InPlaceFile.WriteAt(p[:len(p)/2], off)
		return n, err
	}
	return f.InPlaceFile.WriteAt(p, off)
}

func (f *faultyInPlace) Sync() error {
	if err := f.disk.step("jsync"); err != nil {
		return err
	}
	return f.InPlaceFile.Sync()
}

func (f *faultyInPlace) Truncate(size int64) error {
	if err := f.disk.step("truncate"); err != nil {
		return err
	}
	return f.InPlaceFile.Truncate(size)
}

type faultyTemp struct {
	atomicfile.TempFile
	disk *Faulty
}

func (f *faultyTemp) Write(p []byte) (int, error) {
	if err := f.disk.step("write"); err != nil {
		return 0, err
	}
	return f.TempFile.Write(p)
}

func (f *faultyTemp) Sync() error {
	if err := f.disk.step("sync"); err != nil {
		return err
	}
	return f.TempFile.Sync()
}

func (f *faultyTemp) Close() error {
	if err := f.disk.step("close"); err != nil {
		_ = f.TempFile.Close()
		return err
	}
	return f.TempFile.Close()
}
