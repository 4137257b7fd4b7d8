package atomicfile_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/faults"
	"github.com/locker-ci/locker/internal/testutil"
)

func writeString(s string) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := io.WriteString(w, s)
		return err
	}
}

func TestWriteFileIsAtomicAndDurable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "locks.yml")
	d := &faults.Faulty{}
	n, err := atomicfile.WriteFile(d, path, writeString("hello\n"))
	if err != nil || n != 6 {
		t.Fatalf("atomicfile.WriteFile = %d, %v; want 6, nil", n, err)
	}
	// The data is synced before the rename makes it visible, and the
	// directory is synced after, so that the rename survives a crash.
	if got, want := d.Took(), []string{"create", "write", "sync", "close", "rename", "syncdir"}; !slices.Equal(got, want) {
		t.Errorf("atomicfile.WriteFile did %v; want %v", got, want)
	}
	if got, _ := os.ReadFile(path); string(got) != "hello\n" {
		t.Errorf("file holds %q; want %q", got, "hello\n")
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o600 {
		t.Errorf("file mode = %v; want 0600 (state files hold keys)", got)
	}
	if names := testutil.DirEntries(t, dir); !slices.Equal(names, []string{"locks.yml"}) {
		t.Errorf("directory after atomicfile.WriteFile = %v; want only the file", names)
	}
}

func TestWriteFileFailureLeavesFileAsItWas(t *testing.T) {
	for _, failAt := range []string{"create", "write", "sync", "close", "rename"} {
		t.Run(failAt, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "locks.yml")
			if _, err := atomicfile.WriteFile(atomicfile.OS{}, path, writeString("old")); err != nil {
				t.Fatal(err)
			}
			_, err := atomicfile.WriteFile(&faults.Faulty{FailAt: failAt}, path, writeString("new"))
			if !errors.Is(err, faults.ErrInjected) {
				t.Fatalf("atomicfile.WriteFile with %s failing = %v; want the injected fault", failAt, err)
			}
			if errors.Is(err, atomicfile.ErrUncertain) {
				t.Errorf("atomicfile.WriteFile failing at %s reported an uncertain outcome; the old file was never replaced", failAt)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, []byte("old")) {
				t.Errorf("file changed after a failed write: %q", got)
			}
			if names := testutil.DirEntries(t, dir); !slices.Equal(names, []string{"locks.yml"}) {
				t.Errorf("directory after a failed write = %v; want the temporary file removed", names)
			}
		})
	}
}

func TestWriteFileDirSyncFailureIsUncertain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	_, err := atomicfile.WriteFile(&faults.Faulty{FailAt: "syncdir"}, path, writeString("x"))
	if !errors.Is(err, atomicfile.ErrUncertain) || !errors.Is(err, faults.ErrInjected) {
		t.Fatalf("atomicfile.WriteFile with the directory sync failing = %v; want atomicfile.ErrUncertain wrapping the fault", err)
	}
}

func TestRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "locks.yml")
	for _, name := range []string{".locks.yml.tmp-123", ".locks.yml.tmp-456", "locks.yml", "unrelated.txt", ".other.tmp-1"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("half a file"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := atomicfile.RemoveTemps(atomicfile.OS{}, path); err != nil {
		t.Fatal(err)
	}
	if got, want := testutil.DirEntries(t, dir), []string{".other.tmp-1", "locks.yml", "unrelated.txt"}; !slices.Equal(got, want) {
		t.Errorf("directory after atomicfile.RemoveTemps = %v; want %v", got, want)
	}
}
