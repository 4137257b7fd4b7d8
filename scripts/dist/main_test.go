package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestReleaseArchives builds the release archives, as `make dist` does,
// and checks each: SHA256SUMS matches it; it holds its files in one
// folder, owned by root, dated the commit's time; each binary is for the
// archive's OS and architecture; the linux/amd64 server, unpacked into an
// empty folder, says its version and serves a lock. Built again, every
// archive has the same bytes. make test builds this machine's platform's
// archives (cross-building the other three compiled every package three
// more times: minutes with empty caches); make stress (LOCKER_STRESS)
// builds them all.
func TestReleaseArchives(t *testing.T) {
	targets, only := platforms, ""
	if os.Getenv("LOCKER_STRESS") == "" {
		targets = []platform{{runtime.GOOS, runtime.GOARCH}}
		only = targets[0].String()
		t.Logf("only the %s archives: make stress builds all four platforms'", only)
	}
	const version = "v9.9.9-test"
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	date := time.Unix(1700000000, 0)
	// The tool runs as its own process, as make dist runs it: compressing
	// the archives in this test's binary, built with -race when make test
	// runs it, took five minutes.
	tool := filepath.Join(t.TempDir(), "dist")
	if out, err := exec.Command("go", "build", "-o", tool, ".").CombinedOutput(); err != nil {
		t.Fatalf("building the dist tool: %v\n%s", err, out)
	}
	dist := func(out string) {
		t.Helper()
		cmd := exec.Command(tool, "-version", version, "-out", out, "-platforms", only)
		cmd.Dir = "../.."
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dist -version %s -out %s: %v\n%s", version, out, err, msg)
		}
	}
	out := t.TempDir()
	dist(out)
	sums := checkSums(t, out)
	want := 0
	for _, p := range targets {
		want++ // the server's
		if p.OS == "linux" {
			want++ // the resource's
		}
	}
	if len(sums) != want {
		t.Errorf("SHA256SUMS names %d archives; want %d (the server's of each platform, the resource's of each Linux one)", len(sums), want)
	}
	for _, p := range targets {
		name := "locker-" + version + "-" + p.String()
		files := unpack(t, filepath.Join(out, name+".tar.gz"), name, date)
		if got, want := strings.Join(files.names, " "), "locker LICENSE README.md locker.service"; got != want {
			t.Errorf("%s holds %s; want %s", name, got, want)
		}
		checkBinary(t, name+"/locker", files.data["locker"], p)
		if p.OS != "linux" {
			continue
		}
		name = "locker-resource-" + version + "-" + p.String()
		files = unpack(t, filepath.Join(out, name+".tar.gz"), name, date)
		if got, want := strings.Join(files.names, " "), "check in out"; got != want {
			t.Errorf("%s holds %s; want %s", name, got, want)
		}
		for _, cmd := range files.names {
			checkBinary(t, name+"/"+cmd, files.data[cmd], p)
		}
	}
	if runtime.GOOS == "linux" && runtime.GOARCH == "amd64" {
		serveFromArchive(t, filepath.Join(out, "locker-"+version+"-linux-amd64.tar.gz"), version)
	} else {
		t.Logf("the linux/amd64 server was not run: this machine is %s/%s", runtime.GOOS, runtime.GOARCH)
	}

	again := t.TempDir()
	dist(again)
	first, _ := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	second, _ := os.ReadFile(filepath.Join(again, "SHA256SUMS"))
	if !bytes.Equal(first, second) {
		t.Errorf("built twice, the archives differ:\n%s\nthen\n%s", first, second)
	}
}

// checkSums checks each line of out/SHA256SUMS against its file, and
// returns the names it lists.
func checkSums(t *testing.T, out string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not \"SUM  NAME\"", sc.Text())
		}
		archive, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := sha256.Sum256(archive); hex.EncodeToString(got[:]) != sum {
			t.Errorf("%s: sha256 %x; SHA256SUMS says %s", name, got, sum)
		}
		names = append(names, name)
	}
	return names
}

// contents are an archive's files: their names in order, and their bytes.
type contents struct {
	names []string
	data  map[string][]byte
}

// unpack reads the archive at path, checking that everything in it is in
// the folder dir, owned by root and dated date.
func unpack(t *testing.T, path, dir string, date time.Time) contents {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !zr.ModTime.IsZero() {
		t.Errorf("%s: the gzip header holds a time, %v", path, zr.ModTime)
	}
	c := contents{data: map[string][]byte{}}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return c
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(date) {
			t.Errorf("%s: %s is owned by %d:%d, dated %v; want root's, dated %v", path, h.Name, h.Uid, h.Gid, h.ModTime, date)
		}
		name, ok := strings.CutPrefix(h.Name, dir+"/")
		switch {
		case !ok:
			t.Errorf("%s: %s is outside the folder %s", path, h.Name, dir)
		case h.Typeflag == tar.TypeDir:
		default:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			c.names, c.data[name] = append(c.names, name), data
		}
	}
}

// checkBinary checks that data is an executable for p.
func checkBinary(t *testing.T, name string, data []byte, p platform) {
	t.Helper()
	switch p.OS {
	case "linux":
		f, err := elf.NewFile(bytes.NewReader(data))
		if err != nil {
			t.Errorf("%s: not an ELF file: %v", name, err)
			return
		}
		want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[p.Arch]
		if f.Machine != want || f.Type != elf.ET_EXEC {
			t.Errorf("%s: an ELF %v for %v; want an executable for %v", name, f.Type, f.Machine, want)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s: asks for a dynamic loader: not static", name)
			}
		}
	case "darwin":
		f, err := macho.NewFile(bytes.NewReader(data))
		if err != nil {
			t.Errorf("%s: not a Mach-O file: %v", name, err)
			return
		}
		want := map[string]macho.Cpu{"amd64": macho.CpuAmd64, "arm64": macho.CpuArm64}[p.Arch]
		if f.Cpu != want || f.Type != macho.TypeExec {
			t.Errorf("%s: a Mach-O %v for %v; want an executable for %v", name, f.Type, f.Cpu, want)
		}
	default:
		t.Errorf("%s: no check for %s", name, p.OS)
	}
}

// serveFromArchive unpacks the server's archive at path into an empty
// folder with tar, as a user would, and runs the binary from there.
func serveFromArchive(t *testing.T, path, version string) {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xzf", path, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar -xzf %s: %v %s", path, err, out)
	}
	bin := filepath.Join(dir, "locker-"+version+"-linux-amd64", "locker")
	out, err := exec.Command(bin, "version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "locker "+version {
		t.Fatalf("%s version = %q, %v; want locker %s", bin, out, err, version)
	}
	srv := testutil.StartServer(t, bin, "LOCKER_CONFIG="+filepath.Join(dir, "locks.yml"))
	if status := testutil.HTTPDo(t, srv.URL, http.MethodPut, "/lock/prod", `{"key": "deploy", "lock_by": "job-1"}`); status != http.StatusOK {
		t.Errorf("PUT /lock/prod on the unpacked server = %d; want 200", status)
	}
	if status := testutil.HTTPDo(t, srv.URL, http.MethodPut, "/lock/prod", `{"key": "other", "lock_by": "job-2"}`); status != http.StatusLocked {
		t.Errorf("PUT /lock/prod with another key = %d; want 423", status)
	}
}
