package main

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v2"
)

// faultyDisk is the real file system, except that the operation named in
// failAt fails; ops records every operation in order.
type faultyDisk struct {
	mu     sync.Mutex
	failAt string // an operation's name, or ""
	ops    []string

	// When holdAt names an operation, it signals held and waits for
	// release before going on (and failing, if failAt names it too).
	holdAt  string
	held    chan struct{}
	release chan struct{}
}

var errInjected = errors.New("injected disk fault")

func (d *faultyDisk) step(op string) error {
	d.mu.Lock()
	d.ops = append(d.ops, op)
	hold := d.holdAt == op
	if hold {
		d.holdAt = "" // once
	}
	d.mu.Unlock()
	if hold {
		d.held <- struct{}{}
		<-d.release
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failAt == op {
		return errInjected
	}
	return nil
}

// hold makes the next op wait until the test releases it.
func (d *faultyDisk) hold(op string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.holdAt, d.held, d.release = op, make(chan struct{}), make(chan struct{})
}

// fail makes the operation op fail from now on ("" for none).
func (d *faultyDisk) fail(op string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failAt = op
}

// took returns the operations done so far, and forgets them.
func (d *faultyDisk) took() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	ops := d.ops
	d.ops = nil
	return ops
}

func (d *faultyDisk) CreateTemp(dir, pattern string) (tempFile, error) {
	if err := d.step("create"); err != nil {
		return nil, err
	}
	f, err := osDisk{}.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &faultyFile{tempFile: f, disk: d}, nil
}

func (d *faultyDisk) OpenJournal(name string) (journalFile, error) {
	if err := d.step("open"); err != nil {
		return nil, err
	}
	f, err := osDisk{}.OpenJournal(name)
	if err != nil {
		return nil, err
	}
	return &faultyJournal{journalFile: f, disk: d}, nil
}

func (d *faultyDisk) Rename(oldpath, newpath string) error {
	if err := d.step("rename"); err != nil {
		return err
	}
	return osDisk{}.Rename(oldpath, newpath)
}

func (d *faultyDisk) Remove(name string) error {
	_ = d.step("remove")
	return osDisk{}.Remove(name)
}

func (d *faultyDisk) SyncDir(dir string) error {
	if err := d.step("syncdir"); err != nil {
		return err
	}
	return osDisk{}.SyncDir(dir)
}

// faultyJournal is a journal file whose writes ("jwrite"), syncs ("jsync")
// and truncations ("truncate") can be made to fail.
type faultyJournal struct {
	journalFile
	disk *faultyDisk
}

func (f *faultyJournal) WriteAt(p []byte, off int64) (int, error) {
	if err := f.disk.step("jwrite"); err != nil {
		// A failed write may still leave part of the data in the file.
		n, _ := f.journalFile.WriteAt(p[:len(p)/2], off)
		return n, err
	}
	return f.journalFile.WriteAt(p, off)
}

func (f *faultyJournal) Sync() error {
	if err := f.disk.step("jsync"); err != nil {
		return err
	}
	return f.journalFile.Sync()
}

func (f *faultyJournal) Truncate(size int64) error {
	if err := f.disk.step("truncate"); err != nil {
		return err
	}
	return f.journalFile.Truncate(size)
}

type faultyFile struct {
	tempFile
	disk *faultyDisk
}

func (f *faultyFile) Write(p []byte) (int, error) {
	if err := f.disk.step("write"); err != nil {
		return 0, err
	}
	return f.tempFile.Write(p)
}

func (f *faultyFile) Sync() error {
	if err := f.disk.step("sync"); err != nil {
		return err
	}
	return f.tempFile.Sync()
}

func (f *faultyFile) Close() error {
	if err := f.disk.step("close"); err != nil {
		_ = f.tempFile.Close()
		return err
	}
	return f.tempFile.Close()
}

// readFile returns the bytes of path, failing the test if it cannot.
func readFile(tb testing.TB, path string) []byte {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// dirEntries lists the names in dir.
func dirEntries(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestStateRoundTrip(t *testing.T) {
	locks := map[string]Lock{
		"prod":             lockOf("prod-cf", map[string]int{"prod-cf": 2, "node-a": 1}),
		"a/b":              lockOf("k", map[string]int{"k": 1}),
		"déploy vers prod": lockOf("clé", map[string]int{"qui: moi": 3}),
		"line\nbreak\x00":  lockOf("- not a list", map[string]int{"{}": 1}),
		"version":          lockOf("true", map[string]int{"null": 1, "123": 4}),
		"locks":            lockOf("~", map[string]int{"#": 1}),
	}
	at := time.Date(2026, 11, 25, 9, 30, 15, 123456789, time.UTC)
	locks["leased"] = Lock{Key: "k", Token: 41, AcquiredAt: at, Holders: []Holder{
		{Name: "a", Count: 2, Since: at, ExpiresAt: at.Add(time.Hour), Note: "https://ci.example.com/builds/42?x=1&y=2"},
		{Name: "b", Count: 1},
	}}
	st := state{LastToken: 42, Locks: locks}
	var buf bytes.Buffer
	if err := encodeState(&buf, st, 1234); err != nil {
		t.Fatal(err)
	}
	got, seq, err := decodeState(buf.Bytes())
	if seq != 1234 {
		t.Errorf("seq = %d; want 1234", seq)
	}
	if err != nil {
		t.Fatalf("decodeState(encodeState(locks)) = %v\nfile:\n%s", err, buf.String())
	}
	if !reflect.DeepEqual(got, st) {
		t.Errorf("round trip = %+v; want %+v", got, st)
	}
}

// TestOwnParserAgreesWithYAML checks that the fast parser reads what the
// encoder writes, and reads it as yaml.v2 does.
func TestOwnParserAgreesWithYAML(t *testing.T) {
	at := time.Date(2026, 11, 25, 9, 30, 15, 120000000, time.UTC)
	states := []state{
		{},
		{LastToken: 7, Locks: map[string]Lock{"prod": lockOf("prod-cf", map[string]int{"prod-cf": 2, "node-a": 1})}},
		{LastToken: 9, Locks: map[string]Lock{
			"a/b: c #d":       {Key: "yes", Token: 3, AcquiredAt: at, Holders: []Holder{{Name: "123", Count: 1, Since: at, Note: "line\nbreak \"quoted\" ü"}}},
			"line\nbreak\x00": {Key: "- not a list", Holders: []Holder{{Name: "{}", Count: 4, ExpiresAt: at.Add(time.Hour)}}},
			"plain.name/ok-1": {Key: "k", Token: 9, AcquiredAt: at, Holders: []Holder{{Name: "a", Count: 1}, {Name: "b", Count: 2, Since: at, ExpiresAt: at, Note: "n"}}},
		}},
	}
	for i, st := range states {
		var buf bytes.Buffer
		if err := encodeState(&buf, st, uint64(i)); err != nil {
			t.Fatal(err)
		}
		fast, ok := decodeOwnState(buf.Bytes())
		if !ok {
			t.Fatalf("state %d: the fast parser refused the encoder's output:\n%s", i, buf.String())
		}
		var slow stateFile
		if err := yaml.UnmarshalStrict(buf.Bytes(), &slow); err != nil {
			t.Fatal(err)
		}
		if len(slow.Locks) == 0 {
			slow.Locks = map[string]lockEntry{}
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("state %d: fast parser read\n%+v\nyaml.v2 read\n%+v", i, fast, slow)
		}
	}
	// Anything else goes to yaml.v2.
	for _, other := range []string{
		"version: 1\nlocks:\n  prod:\n    key: k\n    locked_by: {a: 1}\n",
		"version: 1\nseq: 0\nlast_token: 0\nlocks:\n  prod:\n     key: k\n",
		"version: 1\nseq: 0\nlast_token: 0\nlocks:\n  prod:\n    key: k\n    locked_by:\n      a: 1\n  prod:\n    key: k\n    locked_by:\n      a: 1\n",
	} {
		if _, ok := decodeOwnState([]byte(other)); ok {
			t.Errorf("the fast parser took a file it does not own:\n%s", other)
		}
	}
}

func TestDecodeState(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    map[string]Lock
		wantErr string // "" when the file is valid
	}{
		{name: "empty", data: "", want: map[string]Lock{}},
		{name: "white space", data: "\n  \n", want: map[string]Lock{}},
		{name: "original empty", data: "{}", want: map[string]Lock{}},
		{
			name: "original JSON",
			data: `{"prod":{"locked_by":{"prod-cf":2,"node-a":1},"key":"prod-cf"},"staging":{"locked_by":{"x":1},"key":"k"}}`,
			want: map[string]Lock{
				"prod":    lockOf("prod-cf", map[string]int{"prod-cf": 2, "node-a": 1}),
				"staging": lockOf("k", map[string]int{"x": 1}),
			},
		},
		{
			name: "original JSON drops released entries and zero counts",
			data: `{"old":{"locked_by":{"x":0},"key":""},"prod":{"locked_by":{"a":0,"b":1},"key":"k"},"gone":{"locked_by":{},"key":"k"}}`,
			want: map[string]Lock{"prod": lockOf("k", map[string]int{"b": 1})},
		},
		{
			name: "YAML",
			data: "version: 1\nlocks:\n  prod:\n    key: prod-cf\n    locked_by:\n      prod-cf: 2\n",
			want: map[string]Lock{"prod": lockOf("prod-cf", map[string]int{"prod-cf": 2})},
		},
		{name: "YAML without locks", data: "version: 1\n", want: map[string]Lock{}},
		{name: "wrong version", data: "version: 7\nlocks: {}\n", wantErr: `"version: 7" is not a format this locker reads`},
		{name: "no version", data: "locks: {}\n", wantErr: `"version: 0" is not a format`},
		{name: "unknown field", data: "version: 1\nlocks:\n  p:\n    key: k\n    lokced_by: {a: 1}\n", wantErr: "lokced_by"},
		{name: "legacy shape written as YAML", data: "prod:\n  key: k\n  locked_by: {a: 1}\n", wantErr: "not a valid Locker state file"},
		{name: "invalid YAML", data: "version: 1\nlocks: [\n", wantErr: "not a valid Locker state file"},
		{name: "truncated JSON", data: `{"prod":{"locked_by":{"a":1},"ke`, wantErr: "not valid JSON"},
		{name: "JSON with trailing data", data: `{"prod":{"locked_by":{"a":1},"key":"k"}} {}`, wantErr: "data after the closing brace"},
		{name: "JSON unknown field", data: `{"prod":{"locked_by":{"a":1},"key":"k","owner":"x"}}`, wantErr: "owner"},
		{name: "negative count", data: `{"prod":{"locked_by":{"a":-1},"key":"k"}}`, wantErr: `lock "prod": holder "a" has a negative count (-1)`},
		{name: "holder without key", data: `{"prod":{"locked_by":{"a":1},"key":""}}`, wantErr: `lock "prod": held by a (1) but has no key`},
		{name: "empty holder name", data: `{"prod":{"locked_by":{"":1},"key":"k"}}`, wantErr: "a holder has an empty name"},
		{name: "empty lock name", data: `{"":{"locked_by":{"a":1},"key":"k"}}`, wantErr: "a lock has an empty name"},
		{name: "count not a number", data: "version: 1\nlocks:\n  p:\n    key: k\n    locked_by: {a: many}\n", wantErr: "not a valid Locker state file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := decodeState([]byte(tt.data))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("decodeState = %v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeState: %v", err)
			}
			if !reflect.DeepEqual(got.Locks, tt.want) {
				t.Errorf("decodeState = %v; want %v", got.Locks, tt.want)
			}
		})
	}
}

func TestLoadMissingFileCreatesIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	s := newFileStore(path, osDisk{})
	st, _, _, err := s.load()
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
	if _, _, err := decodeState(readFile(t, path)); err != nil {
		t.Errorf("created file does not parse: %v", err)
	}
}

func TestLoadCorruptFileIsLeftAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	corrupt := []byte("version: 1\nlocks:\n  prod: [\n")
	if err := os.WriteFile(path, corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, _, err := newFileStore(path, osDisk{}).load()
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("load of a corrupt file = %v; want an error naming %s", err, path)
	}
	if got := readFile(t, path); !bytes.Equal(got, corrupt) {
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
	if _, _, _, err := newFileStore(path, osDisk{}).load(); err != nil {
		t.Fatal(err)
	}
	got := dirEntries(t, dir)
	if want := []string{"locks.yml", "unrelated.txt"}; !slices.Equal(got, want) {
		t.Errorf("directory after load = %v; want %v", got, want)
	}
}

func TestSaveIsAtomicAndDurable(t *testing.T) {
	dir := t.TempDir()
	d := &faultyDisk{}
	s := newFileStore(filepath.Join(dir, "locks.yml"), d)
	locks := map[string]Lock{"prod": lockOf("k", map[string]int{"a": 1})}
	if _, err := s.save(state{Locks: locks}, 0); err != nil {
		t.Fatal(err)
	}
	// The data is synced before the rename makes it visible, and the
	// directory is synced after, so that the rename survives a crash.
	if want := []string{"create", "write", "sync", "close", "rename", "syncdir"}; !slices.Equal(d.ops, want) {
		t.Errorf("save did %v; want %v", d.ops, want)
	}
	got, _, err := decodeState(readFile(t, s.path))
	if err != nil || !reflect.DeepEqual(got.Locks, locks) {
		t.Errorf("file holds %v, %v; want %v", got, err, locks)
	}
	if names := dirEntries(t, dir); !slices.Equal(names, []string{"locks.yml"}) {
		t.Errorf("directory after save = %v; want only the state file", names)
	}
}

func TestSaveFailureLeavesFileAsItWas(t *testing.T) {
	old := state{Locks: map[string]Lock{"prod": lockOf("k", map[string]int{"a": 1})}}
	next := state{Locks: map[string]Lock{"prod": lockOf("k", map[string]int{"a": 2})}}
	for _, failAt := range []string{"create", "write", "sync", "close", "rename"} {
		t.Run(failAt, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "locks.yml")
			if _, err := newFileStore(path, osDisk{}).save(old, 0); err != nil {
				t.Fatal(err)
			}
			before := readFile(t, path)

			d := &faultyDisk{failAt: failAt}
			s := newFileStore(path, d)
			_, err := s.save(next, 0)
			if !errors.Is(err, errInjected) {
				t.Fatalf("save with %s failing = %v; want the injected fault", failAt, err)
			}
			if errors.Is(err, errUncertain) {
				t.Errorf("save failing at %s reported an uncertain outcome; the old file was never replaced", failAt)
			}
			if got := readFile(t, path); !bytes.Equal(got, before) {
				t.Errorf("state file changed after a failed save:\n%s", got)
			}
			if names := dirEntries(t, dir); !slices.Equal(names, []string{"locks.yml"}) {
				t.Errorf("directory after failed save = %v; want the temp file removed", names)
			}
		})
	}
}

func TestSaveDirSyncFailureIsUncertain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.yml")
	s := newFileStore(path, &faultyDisk{failAt: "syncdir"})
	_, err := s.save(state{Locks: map[string]Lock{"prod": lockOf("k", map[string]int{"a": 1})}}, 0)
	if !errors.Is(err, errUncertain) || !errors.Is(err, errInjected) {
		t.Fatalf("save with the directory sync failing = %v; want errUncertain wrapping the fault", err)
	}
}

// lockOf returns a lock held with key by requestors with the given counts.
func lockOf(key string, counts map[string]int) Lock {
	var l Lock
	for _, r := range slices.Sorted(maps.Keys(counts)) {
		l.Holders = append(l.Holders, Holder{Name: r, Count: counts[r]})
	}
	l.Key = key
	return l
}
