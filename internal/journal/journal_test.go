package journal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/faults"
)

// open opens the journal at path, collecting the replayed payloads, each
// of which is its own seq in decimal.
func open(tb testing.TB, path string, fsys atomicfile.FS, onFail FailFunc) (*Journal, []string) {
	tb.Helper()
	var got []string
	j, _, err := Open(path, fsys, 0, func(p []byte) (uint64, error) {
		got = append(got, string(p))
		return strconv.ParseUint(string(p), 10, 64)
	}, onFail)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = j.Close(false) })
	return j, got
}

func appendAll(tb testing.TB, j *Journal, from, to uint64) {
	tb.Helper()
	for seq := from; seq <= to; seq++ {
		if err := j.Append(seq, []byte(strconv.FormatUint(seq, 10))); err != nil {
			tb.Fatal(err)
		}
	}
	if err := j.Wait(to); err != nil {
		tb.Fatal(err)
	}
}

func TestReplayCutsATornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _ := open(t, path, atomicfile.OS{}, nil)
	appendAll(t, j, 1, 3)
	if err := j.Close(false); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, tail := range map[string]string{
		"no newline":      string(Line([]byte("4"))[:10]),
		"bad checksum":    "00000000 4\n",
		"zeros allocated": "\x00\x00\x00\x00",
	} {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, append(slices.Clone(good), tail...), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, old := range corrupt(t, path) {
				_ = os.Remove(old)
			}
			j, got := open(t, path, atomicfile.OS{}, nil)
			if want := []string{"1", "2", "3"}; !slices.Equal(got, want) {
				t.Errorf("replayed %q; want %q", got, want)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(after, good) {
				t.Errorf("the torn tail was not cut off: %q", after[len(good):])
			}
			// What was cut off is kept aside, unless it was only zeros.
			n, kept := j.Torn()
			files := corrupt(t, path)
			if strings.Trim(tail, "\x00") == "" {
				if n != 0 || len(files) != 0 {
					t.Errorf("zeros were kept aside: %d bytes, %v", n, files)
				}
				return
			}
			if data, err := os.ReadFile(kept); err != nil || string(data) != tail || n != len(tail) || !slices.Equal(files, []string{kept}) {
				t.Errorf("the torn tail kept as %q (%d bytes): %q, %v; files %v; want %q", kept, n, data, err, files, tail)
			}
		})
	}
}

// corrupt lists the files the journal at path kept torn tails in.
func corrupt(tb testing.TB, path string) []string {
	tb.Helper()
	files, err := filepath.Glob(path + ".corrupt-*")
	if err != nil {
		tb.Fatal(err)
	}
	return files
}

func TestDamageBeforeAGoodLineIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	data := append(Line([]byte("1")), "00000000 2\n"...)
	data = append(data, Line([]byte("3"))...)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := Open(path, atomicfile.OS{}, 0, func([]byte) (uint64, error) { return 1, nil }, nil)
	if err == nil {
		t.Fatal("a journal damaged in the middle opened")
	}
}

// TestFailedWriteIsDiscardedBeforeItIsReported checks the failure
// protocol: a failed write drops its batch, Append refuses while FailFunc
// runs, Wait reports the failed seqs and only those, and appends work
// again afterwards.
func TestFailedWriteIsDiscardedBeforeItIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	d := &faults.Faulty{}
	var j *Journal
	var mu sync.Mutex
	var refused error
	j, _ = open(t, path, d, func(from uint64, err error) uint64 {
		mu.Lock()
		defer mu.Unlock()
		refused = j.Append(99, []byte("99")) // a change made on top of the failed one
		return 5
	})
	appendAll(t, j, 1, 2)
	d.Fail("jwrite")
	if err := j.Append(3, []byte("3")); err != nil {
		t.Fatal(err)
	}
	if err := j.Wait(3); !errors.Is(err, faults.ErrInjected) {
		t.Fatalf("Wait(3) after a failed write = %v; want the fault", err)
	}
	mu.Lock()
	if refused == nil {
		t.Error("Append during FailFunc was taken; want it refused")
	}
	mu.Unlock()
	for seq := uint64(3); seq <= 5; seq++ {
		if err := j.Wait(seq); err == nil {
			t.Errorf("Wait(%d) = nil; want the failure (FailFunc undid up to 5)", seq)
		}
	}
	if err := j.Wait(2); err != nil {
		t.Errorf("Wait(2) = %v; want nil: it was written before the failure", err)
	}
	d.Fail("")
	appendAll(t, j, 6, 7)
	if err := j.Close(false); err != nil {
		t.Fatal(err)
	}
	_, got := open(t, path, atomicfile.OS{}, nil)
	if want := []string{"1", "2", "6", "7"}; !slices.Equal(got, want) {
		t.Errorf("replayed %q; want %q (nothing of the failed batch)", got, want)
	}
}

func TestCompactKeepsOnlyLaterRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _ := open(t, path, atomicfile.OS{}, nil)
	appendAll(t, j, 1, 10)
	if err := j.Compact(7); err != nil {
		t.Fatal(err)
	}
	appendAll(t, j, 11, 11)
	if err := j.Close(false); err != nil {
		t.Fatal(err)
	}
	_, got := open(t, path, atomicfile.OS{}, nil)
	if want := []string{"8", "9", "10", "11"}; !slices.Equal(got, want) {
		t.Errorf("replayed %q; want %q", got, want)
	}
}

// FuzzReadLines feeds anything to the replay: it must not panic, and the
// payloads it takes must be the whole lines that start the data, each
// after its checksum.
func FuzzReadLines(f *testing.F) {
	f.Add(Line([]byte(`{"seq":1}`)))
	f.Add([]byte("00000000 x\n"))
	f.Add(append(Line([]byte("a")), 0, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		var took [][]byte
		good, err := readLines(data, func(p []byte) error {
			took = append(took, slices.Clone(p))
			return nil
		})
		if good > len(data) || (good > 0 && data[good-1] != '\n') {
			t.Fatalf("readLines took %d bytes of %d, not ending a line", good, len(data))
		}
		if err != nil {
			return
		}
		lines := bytes.SplitAfter(data[:good], []byte("\n"))
		lines = lines[:len(lines)-1] // SplitAfter leaves an empty last piece
		if len(lines) != len(took) {
			t.Fatalf("took %d payloads from %d lines", len(took), len(lines))
		}
		for i, l := range lines {
			if !bytes.Equal(l[9:len(l)-1], took[i]) {
				t.Fatalf("line %d: took %q from %q", i, took[i], l)
			}
		}
	})
}

// smallDisk is the real file system with room for so many bytes of
// journal: allocating past them fails as a full disk does.
type smallDisk struct {
	atomicfile.FS
	room atomic.Int64
}

func (d *smallDisk) OpenInPlace(name string) (atomicfile.InPlaceFile, error) {
	f, err := d.FS.OpenInPlace(name)
	return smallFile{f, d}, err
}

type smallFile struct {
	atomicfile.InPlaceFile
	disk *smallDisk
}

func (f smallFile) Allocate(size int64) error {
	if size > f.disk.room.Load() {
		return fmt.Errorf("allocating %d bytes: %w", size, syscall.ENOSPC)
	}
	return f.InPlaceFile.Allocate(size)
}

// TestAFullDiskRecoversWhenTheNextRecordFits: with less room than a chunk
// the journal still takes the records that fit; once none fits, the
// write fails saying how much it needs, and as soon as that much is free
// the next one goes through.
func TestAFullDiskRecoversWhenTheNextRecordFits(t *testing.T) {
	disk := &smallDisk{FS: atomicfile.OS{}}
	disk.room.Store(64) // a few records, far less than a chunk
	j, _ := open(t, filepath.Join(t.TempDir(), "j"), disk, func(from uint64, err error) uint64 { return from })
	appendAll(t, j, 1, 3) // 11 bytes each
	if err := j.Append(4, []byte(strings.Repeat("x", 100))); err != nil {
		t.Fatal(err)
	}
	err := j.Wait(4)
	var room *NoRoomError
	if !errors.As(err, &room) || room.Need < 100 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a record the disk has no room for = %v; want a NoRoomError saying it needs at least 100 bytes", err)
	}
	if err := j.Healthy(); !errors.As(err, &room) {
		t.Errorf("Healthy after a full disk = %v; want it to say how much room is needed", err)
	}
	disk.room.Store(64 + room.Need) // just enough freed
	appendAll(t, j, 5, 5)
	if err := j.Healthy(); err != nil {
		t.Errorf("Healthy after a write went through = %v", err)
	}
}
