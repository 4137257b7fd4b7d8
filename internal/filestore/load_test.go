package filestore

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/statefile"
	"github.com/locker-ci/locker/internal/testutil"
)

func TestLoadMissingFileCreatesIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	st, _, err := (&Store{path: path, fsys: atomicfile.OS{}}).load()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Locks) != 0 || st.LastToken != 0 {
		t.Errorf("load of a missing file = %+v; want no locks", st)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatalf("state file was not created: %v", err)
	}
	if got := info.Mode().Perm(); got != 0o600 {
		t.Errorf("state file mode = %v; want 0600 (it holds the keys)", got)
	}
	if _, err := statefile.Decode(testutil.ReadFile(t, path)); err != nil {
		t.Errorf("created file does not parse: %v", err)
	}
}

func TestLoadCorruptFileIsLeftAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	corrupt := []byte("version: 1\nlocks:\n  prod: [\n")
	if err := os.WriteFile(path, corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := (&Store{path: path, fsys: atomicfile.OS{}}).load()
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("load of a corrupt file = %v; want an error naming %s", err, path)
	}
	if got := testutil.ReadFile(t, path); !bytes.Equal(got, corrupt) {
		t.Errorf("corrupt file was changed to %q", got)
	}
}

func TestLoadRemovesLeftoverTempFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "locks.yml")
	for _, name := range []string{".locks.yml.tmp-123", ".locks.yml.tmp-456", ".locks.yml.journal.tmp-7", "unrelated.txt"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("half a file"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := (&Store{path: path, fsys: atomicfile.OS{}}).load(); err != nil {
		t.Fatal(err)
	}
	got := testutil.DirEntries(t, dir)
	if want := []string{"locks.yml", "unrelated.txt"}; !slices.Equal(got, want) {
		t.Errorf("directory after load = %v; want %v", got, want)
	}
}
