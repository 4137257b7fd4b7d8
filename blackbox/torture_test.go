package blackbox

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestTortureNodes: three nodes on one database, a node killed with
// SIGKILL and restarted every 3 s, and twelve clients that take four
// locks with no lease, each waiting for it (?wait=2s), holding it a
// moment and giving it back. A client whose node dies under it asks again
// on the next node with the same Idempotency-Key, until it has an answer,
// as the README tells clients to. Once the clients stop, and the killed
// nodes' waiters are taken for dead (5 s), no lock may be held (a dead
// waiter granted and never told would hold its lock for good) and no
// waiter may be left in locker_queue. 12 s in make test; 60 s in make
// stress.
func TestTortureNodes(t *testing.T) {
	t.Parallel()
	db := testutil.PostgresSchema(t)
	d := 12 * time.Second
	if stress() {
		d = 60 * time.Second
	}
	bin := buildLocker(t)
	var nodes [3]*testutil.Server
	var mu sync.RWMutex // guards nodes; held for writing while a node restarts
	for i := range nodes {
		nodes[i] = testutil.StartServer(t, bin, "LOCKER_DATABASE_URL="+db)
	}
	url := func(i int) string {
		mu.RLock()
		defer mu.RUnlock()
		return nodes[i%3].URL
	}

	var grants, refusals, retries, replays atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 12 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			client := &http.Client{Timeout: 5 * time.Second}
			body := fmt.Sprintf(`{"key": "c%d", "lock_by": "c%d"}`, c, c)
			// ask sends one change until some node answers it, with one
			// Idempotency-Key, starting on node c and moving on after a
			// failure: a killed node's clients are cut off.
			ask := func(method, path string, ok ...int) int {
				idem := newKey()
				for try, node := 0, c; ; try, node = try+1, node+1 {
					req, _ := http.NewRequest(method, url(node)+path, strings.NewReader(body))
					req.Header.Set("Idempotency-Key", idem)
					resp, err := client.Do(req)
					if err == nil {
						resp.Body.Close()
						if resp.Header.Get("Idempotent-Replayed") == "true" {
							replays.Add(1)
						}
						for _, s := range ok {
							if resp.StatusCode == s {
								return s
							}
						}
					}
					if try == 200 {
						t.Errorf("client %d: %s %s: no answer in %d tries (last: %v)", c, method, path, try, err)
						return 0
					}
					retries.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				path := fmt.Sprintf("/lock/t%d", rng.IntN(4))
				switch ask("PUT", path+"?wait=2s", http.StatusOK, http.StatusLocked) {
				case http.StatusOK:
					grants.Add(1)
					time.Sleep(10 * time.Millisecond)
					ask("DELETE", path, http.StatusOK)
				case http.StatusLocked:
					refusals.Add(1)
				}
			}
		})
	}

	rng := rand.New(rand.NewPCG(3, 3))
	kills := 0
	for began := time.Now(); time.Since(began) < d; kills++ {
		time.Sleep(3 * time.Second)
		i := rng.IntN(3)
		mu.Lock()
		nodes[i].Kill()
		nodes[i] = testutil.StartServer(t, bin, "LOCKER_DATABASE_URL="+db)
		mu.Unlock()
	}
	close(stop)
	wg.Wait()

	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// What must be gone once the clients stop and the killed nodes'
	// waiters are taken for dead: every hold and every waiting row. A
	// place kept for a client's next round (left_at set, after a wait that
	// ran out with an Idempotency-Key) is no waiter: the engine drops it
	// after 30 s, the database after a minute; it is counted, not failed.
	var held, waitingRows, deadRows, kept int
	var holders string
	deadline := time.Now().Add(time.Minute) // as leftBehind: a node's takeOut may take a while
	for {
		err := conn.QueryRow(context.Background(), `SELECT
			(SELECT count(*) FROM locker_locks WHERE lock IS NOT NULL),
			(SELECT coalesce(string_agg(name || ': ' || lock::text, '; '), '') FROM locker_locks WHERE lock IS NOT NULL),
			(SELECT count(*) FROM locker_queue WHERE left_at IS NULL),
			(SELECT count(*) FROM locker_queue WHERE left_at IS NULL AND node NOT IN (SELECT node FROM locker_nodes WHERE seen > clock_timestamp() - interval '5 seconds')),
			(SELECT count(*) FROM locker_queue WHERE left_at IS NOT NULL)`).
			Scan(&held, &holders, &waitingRows, &deadRows, &kept)
		if err == nil && held == 0 && waitingRows == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the clients stopped: %d locks held (%s), %d waiting rows in locker_queue, %d of them dead nodes' (%v); want none",
				held, holders, waitingRows, deadRows, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%v, %d kills: %d grants, %d refusals, %d retries after a lost answer, %d answered as replays; then 0 locks held, 0 waiting rows in locker_queue (%d places kept for a next round, which expire)",
		d, kills, grants.Load(), refusals.Load(), retries.Load(), replays.Load(), kept)
	if grants.Load() == 0 {
		t.Error("no client was granted a lock: the run tested nothing")
	}
}

// newKey returns a random Idempotency-Key.
func newKey() string {
	b := make([]byte, 12)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}
