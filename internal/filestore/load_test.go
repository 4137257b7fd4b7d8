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
	st, _, err := newDisk(path, atomicfile.OS{}, 0, nil).load()
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
	_, _, err := newDisk(path, atomicfile.OS{}, 0, nil).load()
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
	if _, _, err := newDisk(path, atomicfile.OS{}, 0, nil).load(); err != nil {
		t.Fatal(err)
	}
	got := testutil.DirEntries(t, dir)
	if want := []string{"locks.yml", "locks.yml.journal", "unrelated.txt"}; !slices.Equal(got, want) {
		t.Errorf("directory after load = %v; want %v", got, want)
	}
}

// TestALinkIsTheFileItPointsTo: a second server whose LOCKER_CONFIG is a
// symbolic link to the first's state file is refused, as on the file
// itself; alone, it keeps the state in the file the link points to and
// leaves the link a link.
func TestALinkIsTheFileItPointsTo(t *testing.T) {
	dir := t.TempDir()
	real, link := filepath.Join(dir, "locks.yml"), filepath.Join(dir, "link.yml")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	first := openTest(t, real, nil, nil)
	if _, err := Open(link, atomicfile.OS{}, Options{}); err == nil || !strings.Contains(err.Error(), "in use by another locker server") {
		t.Fatalf("a second server through a link = %v; want it refused", err)
	}
	if err := take(first, "l", "k", "a", 0); err != nil {
		t.Fatal(err)
	}
	_ = first.Close(true)
	s := openTest(t, link, nil, nil)
	if l := table(t, s)["l"]; l.Free() {
		t.Errorf("through the link the lock is %+v; want what the first server left", l)
	}
	if err := s.Close(true); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Lstat(link); err != nil || info.Mode()&os.ModeSymlink == 0 {
		t.Errorf("after a checkpoint through it, the link is %v, %v; want it still a link", info, err)
	}
}

// TestReadCreatesNothing: locker migrate's source that does not exist is
// an error naming it, and nothing is made; one that exists is left as it
// was, without a lock file beside it.
func TestReadCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(filepath.Join(dir, "typo.yml"), atomicfile.OS{}); err == nil || !strings.Contains(err.Error(), "typo.yml") {
		t.Errorf("reading a state file that does not exist = %v; want an error naming it", err)
	}
	if got := testutil.DirEntries(t, dir); len(got) != 0 {
		t.Errorf("reading a missing state file made %v", got)
	}
	path := filepath.Join(dir, "locks.yml")
	const original = `{"prod":{"locked_by":{"a":1},"key":"k"}}`
	if err := os.WriteFile(path, []byte(original), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path, atomicfile.OS{}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.DirEntries(t, dir); !slices.Equal(got, []string{"locks.yml"}) {
		t.Errorf("after reading, the directory holds %v; want the state file alone", got)
	}
}

// TestOriginalLocksGetTokens: the original locker's locks have no fencing
// token; they get tokens on load, the same at every start until a
// checkpoint writes them, and later grants get higher ones.
func TestOriginalLocksGetTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	if err := os.WriteFile(path, []byte(`{"staging":{"locked_by":{"b":1},"key":"k"},"prod":{"locked_by":{"a":1},"key":"k"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s := openTest(t, path, nil, nil)
	first := table(t, s)
	if first["prod"].Token != 1 || first["staging"].Token != 2 {
		t.Fatalf("tokens of the original locker's locks = %d, %d; want 1, 2 (in name order)", first["prod"].Token, first["staging"].Token)
	}
	if err := take(s, "new", "k", "c", 0); err != nil {
		t.Fatal(err)
	}
	again := table(t, openTest(t, path, nil, nil)) // the journal replayed onto the original file
	if again["prod"].Token != 1 || again["staging"].Token != 2 || again["new"].Token != 3 {
		t.Errorf("after a restart, tokens = %d, %d, %d; want 1, 2, 3", again["prod"].Token, again["staging"].Token, again["new"].Token)
	}
}
