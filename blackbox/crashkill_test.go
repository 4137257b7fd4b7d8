package blackbox

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestCrashKill kills the server with SIGKILL while clients change locks,
// over and over, and after every restart checks that each change the server
// acknowledged is there, each acknowledged release is gone, no token
// goes backwards, and each lock's history tells exactly the changes made,
// in order.
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
	told := ledger{told: map[string][]string{}, pending: map[string]string{}}
	rng := rand.New(rand.NewPCG(1, 2))
	checkpoints := 0 // across all cycles: kills must land among them

	for cycle := range cycles {
		p := startProc(t, state, "LOCKER_HISTORY="+strconv.Itoa(historyKept))
		check(t, cycle, p.URL, counts, maybe, &maxToken, &told)

		// Traffic for a random while, then SIGKILL.
		var mu sync.Mutex
		var wg sync.WaitGroup
		stop := make(chan struct{})
		var stalled []string // requests the server did not answer before the kill
		for c := range clients {
			seed := rng.Uint64()
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, uint64(c)))
				// Long enough for a busy machine's fsync: a request that
				// takes longer is a server that hangs, and fails the test.
				client := &http.Client{Timeout: 30 * time.Second}
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
						// Wait for the restart to tell; without spinning,
						// which would take the cores from the server.
						time.Sleep(time.Millisecond)
						continue
					}
					method, query, next, kind := "PUT", "", n+1, "taken"
					switch x := r.IntN(20); {
					case n > 0 && x == 0:
						method, query, next, kind = "DELETE", "?force=true", 0, "forced"
					case n > 0 && x < 10:
						method, next, kind = "DELETE", n-1, "released"
					}
					status, body, err := send(client, method, p.URL+"/lock/"+name+query, `{"key": "k"}`)
					mu.Lock()
					switch {
					case err != nil || status >= 500:
						maybe[name] = next // it may or may not have happened
						told.pending[name] = kind
						select {
						case <-stop:
						default:
							stalled = append(stalled, fmt.Sprintf("%s %s: %d %v", method, name, status, err))
						}
					case status == http.StatusOK:
						counts[name] = next
						told.told[name] = append(told.told[name], kind)
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
		// Each cycle meets a checkpoint before its kill, however slow a
		// busy machine makes the clients: on a quiet one it has met
		// several by now. A server that meets none within a minute, or
		// leaves a request unanswered, is made to print its goroutines.
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(p.Log.String(), "journal checkpointed into the state file") && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		mu.Lock()
		hung := slices.Clone(stalled)
		mu.Unlock()
		checkpointed := strings.Contains(p.Log.String(), "journal checkpointed into the state file")
		if !checkpointed || len(hung) > 0 {
			_ = p.Signal(syscall.SIGQUIT)
			select {
			case <-p.Done():
			case <-time.After(10 * time.Second):
			}
			t.Errorf("cycle %d: checkpointed %v; requests unanswered before the kill: %q", cycle, checkpointed, hung)
		}
		p.Kill()
		close(stop)
		wg.Wait()
		checkpoints += strings.Count(p.Log.String(), "journal checkpointed into the state file")
		if t.Failed() {
			t.Fatalf("cycle %d failed; server log:\n%s", cycle, p.Log)
		}
	}
	p := startProc(t, state, "LOCKER_HISTORY="+strconv.Itoa(historyKept))
	check(t, cycles, p.URL, counts, maybe, &maxToken, &told)
	t.Logf("%d cycles, %d checkpoints between the kills", cycles, checkpoints)
	if checkpoints < cycles {
		t.Errorf("only %d checkpoints counted in %d cycles, each of which waited for one", checkpoints, cycles)
	}
}

func hasKey(m map[string]int, k string) bool { _, ok := m[k]; return ok }

// historyKept is the crash test's LOCKER_HISTORY: small, so that the state
// file stays small and checkpoints come often (one comes each time the
// journal grows to twice the state file: with 8 events a lock, -race and
// the other tests beside it, 94 came in 120 cycles).
const historyKept = 3

// ledger is what the clients were told happened to each lock, as its
// history must tell it: the kind of each event, oldest first.
type ledger struct {
	told    map[string][]string
	pending map[string]string // the change to a lock that got no answer
}

// check compares what the restarted server shows with what was
// acknowledged, settles the uncertain locks, checks each lock's history
// against what was told, and checks that a new lock gets a token above
// every one handed out before.
func check(tb testing.TB, cycle int, url string, counts, maybe map[string]int, maxToken *uint64, told *ledger) {
	tb.Helper()
	client := &http.Client{Timeout: 30 * time.Second} // as the traffic's: a restarted server on a busy machine took over 10 s to answer a history
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
		if hasKey(maybe, name) && got == other && got != want {
			told.told[name] = append(told.told[name], told.pending[name]) // the change without an answer was made
		}
		delete(told.pending, name)
		counts[name] = got
		delete(maybe, name)
		checkHistory(tb, cycle, client, url, name, told.told[name])
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

// checkHistory checks that the history of the lock called name is the
// last historyKept events of want, in order.
func checkHistory(tb testing.TB, cycle int, client *http.Client, url, name string, want []string) {
	tb.Helper()
	if strings.HasPrefix(name, "token-probe-") {
		return
	}
	status, body, err := send(client, "GET", url+"/history/"+name+"?limit="+strconv.Itoa(historyKept+1), "")
	if err != nil || status != http.StatusOK {
		tb.Fatalf("cycle %d: GET /history/%s = %d %v", cycle, name, status, err)
	}
	var h struct {
		Events []struct {
			ID    uint64 `json:"id"`
			Event string `json:"event"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		tb.Fatal(err)
	}
	var got []string
	for i, e := range slices.Backward(h.Events) {
		if i < len(h.Events)-1 && e.ID <= h.Events[i+1].ID {
			tb.Fatalf("cycle %d: history of %s: event %d is newer than event %d", cycle, name, h.Events[i+1].ID, e.ID)
		}
		got = append(got, e.Event)
	}
	want = want[max(0, len(want)-historyKept):]
	if !slices.Equal(got, want) {
		tb.Fatalf("cycle %d: history of %s after the restart, oldest first:\n%v\nwant what the clients were told (the last %d):\n%v", cycle, name, got, historyKept, want)
	}
}

func send(client *http.Client, method, url, body string) (int, string, error) {
	return sendKeyed(client, method, url, body, "")
}

// sendKeyed sends a request with an Idempotency-Key, unless key is "".
func sendKeyed(client *http.Client, method, url, body, key string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
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
