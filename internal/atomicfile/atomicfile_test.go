package atomicfile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
	d := &Faulty{}
	n, err := WriteFile(d, path, writeString("hello\n"))
	if err != nil || n != 6 {
		t.Fatalf("WriteFile = %d, %v; want 6, nil", n, err)
	}
	// The data is synced before the rename makes it visible, and the
	// directory is synced after, so that the rename survives a crash.
	if got, want := d.Took(), []string{"create", "write", "sync", "close", "rename", "syncdir"}; !slices.Equal(got, want) {
		t.Errorf("WriteFile did %v; want %v", got, want)
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
		t.Errorf("directory after WriteFile = %v; want only the file", names)
	}
}

func TestWriteFileFailureLeavesFileAsItWas(t *testing.T) {
	for _, failAt := range []string{"create", "write", "sync", "close", "rename"} {
		t.Run(failAt, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "locks.yml")
			if _, err := WriteFile(OS{}, path, writeString("old")); err != nil {
				t.Fatal(err)
			}
			_, err := WriteFile(&Faulty{FailAt: failAt}, path, writeString("new"))
			if !errors.Is(err, ErrInjected) {
				t.Fatalf("WriteFile with %s failing = %v; want the injected fault", failAt, err)
			}
			if errors.Is(err, ErrUncertain) {
				t.Errorf("WriteFile failing at %s reported an uncertain outcome; the old file was never replaced", failAt)
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
	_, err := WriteFile(&Faulty{FailAt: "syncdir"}, path, writeString("x"))
	if !errors.Is(err, ErrUncertain) || !errors.Is(err, ErrInjected) {
		t.Fatalf("WriteFile with the directory sync failing = %v; want ErrUncertain wrapping the fault", err)
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
	if err := RemoveTemps(OS{}, path); err != nil {
		t.Fatal(err)
	}
	if got, want := testutil.DirEntries(t, dir), []string{".other.tmp-1", "locks.yml", "unrelated.txt"}; !slices.Equal(got, want) {
		t.Errorf("directory after RemoveTemps = %v; want %v", got, want)
	}
}
