package blackbox

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCrashKill kills the server with SIGKILL while clients change locks,
// over and over, and after every restart checks that each change the server
// acknowledged is there, each acknowledged release is gone, and no token
// goes backwards.
func TestCrashKill(t *testing.T) {
	t.Parallel() // mostly waits on kills and restarts (under a core): it runs beside the others
	// 120 cycles land about 800 kills among checkpoints; make stress runs
	// 2000. (make test on a fresh machine must stay within 6 minutes.)
	cycles := 120
	if stress() {
		cycles = 2000
	}
	state := filepath.Join(t.TempDir(), "locks.yml")
	const clients, locksEach = 8, 4
	// counts[name] is what the server must show; maybe[name] is the other
	// value it may show, when the last change to the lock got no answer.
	counts := map[string]int{}
	maybe := map[string]int{}
	var maxToken uint64
	rng := rand.New(rand.NewPCG(1, 2))
	checkpoints := 0 // across all cycles: kills must land among them

	for cycle := range cycles {
		p := startProc(t, state)
		check(t, cycle, p.URL, counts, maybe, &maxToken)

		// Traffic for a random while, then SIGKILL.
		var mu sync.Mutex
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for c := range clients {
			seed := rng.Uint64()
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, uint64(c)))
				client := &http.Client{Timeout: 5 * time.Second}
				for {
					select {
					case <-stop:
						return
					default:
					}
					name := fmt.Sprintf("c%d-%d", c, r.IntN(locksEach))
					mu.Lock()
					n, uncertain := counts[name], hasKey(maybe, name)
					mu.Unlock()
					if uncertain {
						continue // wait for the restart to tell
					}
					method, next := "PUT", n+1
					if n > 0 && r.IntN(2) == 0 {
						method, next = "DELETE", n-1
					}
					status, body, err := send(client, method, p.URL+"/lock/"+name, `{"key": "k"}`)
					mu.Lock()
					switch {
					case err != nil || status >= 500:
						maybe[name] = next // it may or may not have happened
					case status == http.StatusOK:
						counts[name] = next
						if tok := tokenOf(body); tok > maxToken {
							maxToken = tok
						}
					default:
						t.Errorf("%s %s = %d %s", method, name, status, body)
					}
					mu.Unlock()
				}
			})
		}
		time.Sleep(time.Duration(50+rng.IntN(451)) * time.Millisecond)
		p.Kill()
		close(stop)
		wg.Wait()
		checkpoints += strings.Count(p.Log.String(), "journal checkpointed into the state file")
		if t.Failed() {
			t.Fatalf("cycle %d failed; server log:\n%s", cycle, p.Log)
		}
	}
	p := startProc(t, state)
	check(t, cycles, p.URL, counts, maybe, &maxToken)
	t.Logf("%d cycles, %d checkpoints between the kills", cycles, checkpoints)
	if checkpoints < cycles {
		t.Errorf("only %d checkpoints in %d cycles: the kills hardly ever met one (LOCKER_CHECKPOINT_BYTES=%s)", checkpoints, cycles, checkpointBytes)
	}
}

func hasKey(m map[string]int, k string) bool { _, ok := m[k]; return ok }

// check compares what the restarted server shows with what was
// acknowledged, settles the uncertain locks, and checks that a new lock
// gets a token above every one handed out before.
func check(tb testing.TB, cycle int, url string, counts, maybe map[string]int, maxToken *uint64) {
	tb.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	status, body, err := send(client, "GET", url+"/locks", "")
	if err != nil || status != http.StatusOK {
		tb.Fatalf("cycle %d: GET /locks = %d %v", cycle, status, err)
	}
	var shownLocks map[string]struct {
		LockedBy map[string]int `json:"locked_by"`
		Token    uint64         `json:"token"`
	}
	if err := json.Unmarshal([]byte(body), &shownLocks); err != nil {
		tb.Fatal(err)
	}
	names := map[string]bool{}
	for n := range counts {
		names[n] = true
	}
	for n := range shownLocks {
		names[n] = true
	}
	for name := range names {
		got := shownLocks[name].LockedBy["k"]
		want, other := counts[name], maybe[name]
		if got != want && !(hasKey(maybe, name) && got == other) {
			tb.Fatalf("cycle %d: lock %s has count %d after the restart; acknowledged %d (or %d, unknown: %v)",
				cycle, name, got, want, other, hasKey(maybe, name))
		}
		counts[name] = got
		delete(maybe, name)
		if tok := shownLocks[name].Token; tok > *maxToken {
			*maxToken = tok
		}
	}
	status, body, err = send(client, "PUT", url+"/lock/token-probe-"+strconv.Itoa(cycle), `{"key": "k"}`)
	if err != nil || status != http.StatusOK {
		tb.Fatalf("cycle %d: probe PUT = %d %v", cycle, status, err)
	}
	if tok := tokenOf(body); tok <= *maxToken {
		tb.Fatalf("cycle %d: a new lock got token %d, not above %d handed out before", cycle, tok, *maxToken)
	} else {
		*maxToken = tok
	}
	if status, _, err := send(client, "DELETE", url+"/lock/token-probe-"+strconv.Itoa(cycle), `{"key": "k"}`); err != nil || status != http.StatusOK {
		tb.Fatalf("cycle %d: probe DELETE = %d %v", cycle, status, err)
	}
}

func send(client *http.Client, method, url, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), err
}

func tokenOf(body string) uint64 {
	var v struct {
		Token uint64 `json:"token"`
	}
	_ = json.Unmarshal([]byte(body), &v)
	return v.Token
}
