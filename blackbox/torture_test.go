package blackbox

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestTortureNodes: three nodes on one database, a node killed with
// SIGKILL and restarted every 3 s, and twelve clients that take, each
// waiting for it (?wait=2s), a lock, a set of two or a member of a pool
// (of four locks and a pool of two, no lease), hold it a moment and give
// it back. A client whose node dies under it asks again on the next node
// with the same Idempotency-Key, until it has an answer, as the README
// tells clients to; and now and then, as a client restarted from a key
// it saved would, it sends a request of an earlier round again with that
// round's key: it must be told that grant has ended (409), never answered
// as if it held. No two clients may ever hold one lock. Once the clients
// stop, and the killed nodes' waiters are taken for dead (5 s), no lock
// may be held (a dead waiter granted and never told would hold its lock
// for good) and no waiter may be left in locker_queue. 12 s in make test;
// 60 s in make stress.
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
	if status := testutil.HTTPDo(t, url(0), "PUT", "/pool/tp", `{"members": ["m0", "m1"]}`); status != http.StatusOK {
		t.Fatalf("PUT /pool/tp = %d", status)
	}

	var grants, refusals, retries, replays, ended atomic.Int64
	var holding sync.Map // lock name -> the client that was told it holds it
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 12 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			tc := tortureClient{t: t, c: c, url: url, client: &http.Client{Timeout: 5 * time.Second}, retries: &retries, replays: &replays}
			var saved []tortureRequest // granted requests of earlier rounds, with their keys
			for {
				select {
				case <-stop:
					return
				default:
				}
				if len(saved) > 0 && rng.IntN(4) == 0 {
					old := saved[rng.IntN(len(saved))]
					if status, _ := tc.ask(old, http.StatusOK, http.StatusConflict, http.StatusLocked); status != http.StatusConflict {
						t.Errorf("client %d: %s sent again with the key of a round whose grant it gave back = %d; want 409, the grant has ended", c, old.path, status)
					}
					ended.Add(1)
				}
				r := tortureRound(c, rng)
				status, got := tc.ask(r, http.StatusOK, http.StatusLocked)
				if status != http.StatusOK {
					refusals.Add(1)
					continue
				}
				grants.Add(1)
				for _, name := range got {
					if other, taken := holding.LoadOrStore(name, c); taken {
						t.Errorf("client %d was granted %s (%s) while client %d holds it", c, name, r.path, other)
					}
				}
				saved = append(saved, r)
				time.Sleep(10 * time.Millisecond)
				for _, name := range got {
					holding.Delete(name)
				}
				tc.ask(tortureRequest{method: "DELETE", path: "/locks", body: fmt.Sprintf(`{"key": "c%d", "lock_by": "c%d", "locks": %s}`, c, c, jsonList(got)), idem: newKey()}, http.StatusOK)
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
	t.Logf("%v, %d kills: %d grants, %d refusals, %d retries after a lost answer, %d answered as replays, %d earlier rounds' requests sent again and told their grant ended; then 0 locks held, 0 waiting rows in locker_queue (%d places kept for a next round, which expire)",
		d, kills, grants.Load(), refusals.Load(), retries.Load(), replays.Load(), ended.Load(), kept)
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

// tortureRequest is one request of a torture client, with the
// Idempotency-Key it is sent with.
type tortureRequest struct {
	method, path, body, idem string
}

// tortureRound is client c's next request: a lock, a set of two locks or
// a member of the pool, each waiting up to 2 s, with a new key.
func tortureRound(c int, rng *rand.Rand) tortureRequest {
	who := fmt.Sprintf(`"key": "c%d", "lock_by": "c%d"`, c, c)
	r := tortureRequest{method: "PUT", idem: newKey()}
	switch rng.IntN(3) {
	case 0:
		r.path, r.body = fmt.Sprintf("/lock/t%d?wait=2s", rng.IntN(4)), "{"+who+"}"
	case 1:
		pair := rng.Perm(4)[:2]
		slices.Sort(pair)
		r.path, r.body = "/locks?wait=2s", fmt.Sprintf(`{%s, "locks": ["t%d", "t%d"]}`, who, pair[0], pair[1])
	default:
		r.path, r.body = "/pool/tp/claim?wait=2s", "{"+who+"}"
	}
	return r
}

// tortureClient sends requests through the nodes.
type tortureClient struct {
	t                *testing.T
	c                int
	url              func(i int) string
	client           *http.Client
	retries, replays *atomic.Int64
}

// ask sends r until some node answers it with one of ok, starting on node
// c and moving on after a failure (a killed node's clients are cut off),
// and returns the status and the locks the answer holds (its name, for
// one lock).
func (tc tortureClient) ask(r tortureRequest, ok ...int) (int, []string) {
	for try, node := 0, tc.c; ; try, node = try+1, node+1 {
		req, _ := http.NewRequest(r.method, tc.url(node)+r.path, strings.NewReader(r.body))
		req.Header.Set("Idempotency-Key", r.idem)
		resp, err := tc.client.Do(req)
		if err == nil {
			var reply struct {
				Name  string                     `json:"name"`
				Locks map[string]json.RawMessage `json:"locks"`
			}
			err = json.NewDecoder(resp.Body).Decode(&reply)
			resp.Body.Close()
			if resp.Header.Get("Idempotent-Replayed") == "true" {
				tc.replays.Add(1)
			}
			if slices.Contains(ok, resp.StatusCode) {
				names := slices.Sorted(maps.Keys(reply.Locks))
				if reply.Name != "" {
					names = []string{reply.Name}
				}
				return resp.StatusCode, names
			}
			err = fmt.Errorf("%d (%v)", resp.StatusCode, err)
		}
		if try == 200 {
			tc.t.Errorf("client %d: %s %s: no answer in %d tries (last: %v)", tc.c, r.method, r.path, try, err)
			return 0, nil
		}
		tc.retries.Add(1)
		time.Sleep(100 * time.Millisecond)
	}
}

// jsonList is names as a JSON list.
func jsonList(names []string) string {
	data, _ := json.Marshal(names)
	return string(data)
}
