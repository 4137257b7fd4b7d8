package blackbox

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// The tests here drive the locker binary as its own process, over HTTP on
// loopback, and read the files it leaves: crashes (SIGKILL) and restarts,
// linearizability, SIGTERM under load, thousands of waiters. They know
// nothing of the server's code but its file format.

// binDir holds the binary built for these tests; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "locker-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// stress reports whether the long runs were asked for (make stress).
func stress() bool { return os.Getenv("LOCKER_STRESS") != "" }

// checkpointBytes is the journal size at which the servers here
// checkpoint: a few dozen changes.
const checkpointBytes = "4096"

var (
	buildOnce   sync.Once
	lockerBin   string
	buildFailed error
)

// buildLocker builds the locker binary once for the tests that need a real
// process to signal.
func buildLocker(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		lockerBin = filepath.Join(binDir, "locker")
		// The crash tests kill this binary: lazyfs makes a kill lose what
		// was not synced, as a power cut would (see internal/lazyfs/lazyfs.go).
		out, err := testutil.GoBuild(lockerBin, "github.com/locker-ci/locker", "lazyfs")
		if err != nil {
			buildFailed = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildFailed != nil {
		tb.Fatal(buildFailed)
	}
	return lockerBin
}

// startProc starts the locker binary on state and waits until it serves.
// A small checkpoint threshold makes kills land during and right after
// checkpoints, not only between journal writes.
func startProc(tb testing.TB, state string, env ...string) *testutil.Server {
	tb.Helper()
	return testutil.StartServer(tb, buildLocker(tb), append([]string{"LOCKER_CONFIG=" + state, "LOCKER_CHECKPOINT_BYTES=" + checkpointBytes}, env...)...)
}

func httpGet(tb testing.TB, base, path string) (int, string) {
	tb.Helper()
	return httpDo(tb, base, http.MethodGet, path, "")
}

// httpDo sends a request with body and returns its status and its body.
func httpDo(tb testing.TB, base, method, path, body string) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, string(reply)
}

// waiting returns how many requests wait for the lock called name.
func waiting(tb testing.TB, base, name string) int {
	tb.Helper()
	status, body := httpGet(tb, base, "/lock/"+name)
	var v lock.View
	if err := json.Unmarshal([]byte(body), &v); status != http.StatusOK || err != nil {
		tb.Fatalf("GET /lock/%s = %d %s", name, status, body)
	}
	return len(v.Waiting)
}

// gauge returns the value of an unlabelled gauge from GET /metrics: a
// cheap poll where a lock's JSON would be a megabyte of waiters.
func gauge(tb testing.TB, base, name string) float64 {
	tb.Helper()
	status, body := httpGet(tb, base, "/metrics")
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(line, name+" "); ok && status == http.StatusOK {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				tb.Fatalf("GET /metrics: %s is %q: %v", name, v, err)
			}
			return f
		}
	}
	tb.Fatalf("GET /metrics = %d without %s:\n%s", status, name, body)
	return 0
}
