package blackbox

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestHistoryTellsWhatHappenedAcrossNodes drives a random sequence of
// takings, releases, leases that run out and forced releases through two
// PostgreSQL nodes, one of them killed with SIGKILL and started again
// every moment, each request sent again to the other node with its
// Idempotency-Key when its node dies. Each lock's history must then be
// exactly what the clients were told happened, in order: nothing missing,
// nothing extra.
func TestHistoryTellsWhatHappenedAcrossNodes(t *testing.T) {
	t.Parallel()
	env := []string{"LOCKER_DATABASE_URL=" + testutil.PostgresSchema(t), "LOCKER_HISTORY=100000"}
	var mu sync.Mutex // guards nodes
	nodes := []*testutil.Server{testutil.StartServer(t, buildLocker(t), env...), testutil.StartServer(t, buildLocker(t), env...)}
	pick := func(r *rand.Rand) string {
		mu.Lock()
		defer mu.Unlock()
		return nodes[r.IntN(len(nodes))].URL
	}
	stop := make(chan struct{})
	var killer sync.WaitGroup
	killer.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(700 * time.Millisecond):
			}
			mu.Lock()
			old := nodes[i%2]
			mu.Unlock()
			old.Kill()
			fresh := testutil.StartServer(t, buildLocker(t), env...)
			mu.Lock()
			nodes[i%2] = fresh
			mu.Unlock()
		}
	})

	const clients = 4
	told := make([][]string, clients)
	var acked atomic.Int64 // changes acknowledged, all clients
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(c), 7))
			client := &http.Client{Timeout: 10 * time.Second}
			path := "/lock/r" + strconv.Itoa(c)
			// do sends the request until a node answers it, with one key.
			do := func(method, query, body string) int {
				key := fmt.Sprintf("c%d-%d", c, r.Uint64())
				for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
					req, _ := http.NewRequest(method, pick(r)+path+query, strings.NewReader(body))
					req.Header.Set("Idempotency-Key", key)
					resp, err := client.Do(req)
					if err != nil {
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode < 500 && resp.StatusCode != http.StatusConflict {
						return resp.StatusCode
					}
				}
				t.Errorf("%s %s: no node answered for a minute", method, path)
				return 0
			}
			note := func(event string) { told[c] = append(told[c], event); acked.Add(1) }
			held := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				x := r.IntN(20)
				switch {
				case held == 0 && x < 3: // a lease that runs out
					if do("PUT", "", `{"key": "k", "ttl": "1s"}`) != http.StatusOK {
						return
					}
					note("taken")
					for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
						if time.Now().After(deadline) {
							t.Errorf("%s: the lease did not run out in 20 s", path)
							return
						}
						resp, err := client.Get(pick(r) + path)
						if err != nil {
							continue
						}
						var v struct{ Holders map[string]any }
						err = json.NewDecoder(resp.Body).Decode(&v)
						resp.Body.Close()
						if err == nil && resp.StatusCode == http.StatusOK && len(v.Holders) == 0 {
							break
						}
					}
					note("expired")
				case held > 0 && x == 3:
					if do("DELETE", "?force=true", `{}`) != http.StatusOK {
						return
					}
					note("forced")
					held = 0
				case held > 0 && x < 12:
					if do("DELETE", "", `{"key": "k"}`) != http.StatusOK {
						return
					}
					note("released")
					held--
				default:
					if do("PUT", "", `{"key": "k"}`) != http.StatusOK {
						return
					}
					note("taken")
					held++
				}
			}
		})
	}
	// Enough changes to tell, however slow the machine: 150, or whatever
	// 90 s brought (too few then is a failure).
	for start := time.Now(); acked.Load() < 150 && time.Since(start) < 90*time.Second; {
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	killer.Wait()

	r := rand.New(rand.NewPCG(9, 9))
	total := 0
	for c := range clients {
		// A lease that ran out is ended within a heartbeat or two.
		var got []string
		testutil.WaitFor(t, "the history to hold every change", func() bool {
			status, body := httpGet(t, pick(r), "/history/r"+strconv.Itoa(c)+"?limit=1000")
			var h struct{ Events []struct{ Event string } }
			if err := json.Unmarshal([]byte(body), &h); err != nil || status != http.StatusOK {
				t.Fatalf("GET /history/r%d = %d %s", c, status, body)
			}
			got = got[:0]
			for _, e := range slices.Backward(h.Events) {
				got = append(got, e.Event)
			}
			return len(got) >= len(told[c])
		})
		if !slices.Equal(got, told[c]) {
			t.Errorf("history of r%d, oldest first:\n%v\nwhat its client was told:\n%v", c, got, told[c])
		}
		total += len(got)
	}
	if total < 100 {
		t.Errorf("only %d changes in all: too few to tell", total)
	}
	t.Logf("%d changes, each in its lock's history once, through a kill every 700 ms", total)
}
