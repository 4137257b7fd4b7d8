package blackbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestLinearizableNodes runs three servers on one PostgreSQL database,
// the eight clients spread over them (taking l0, l1, both at once with
// PUT and DELETE /locks, and either as a claim on the pool pl of both),
// kills one node with SIGKILL and
// restarts it every 2-5 s, and once cuts every connection to the database
// for a second (through a proxy in front of it); then checks with
// porcupine that the history is linearizable against the lock rules.
func TestLinearizableNodes(t *testing.T) {
	t.Parallel()
	db := testutil.PostgresSchema(t)
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	px := testutil.NewProxy(t, u.Host)
	u.Host = px.Addr()
	env := "LOCKER_DATABASE_URL=" + u.String()
	d := 12 * time.Second
	if stress() {
		d = 60 * time.Second
	}

	var nodes [3]*testutil.Server
	var urls [3]string
	var mu sync.RWMutex // guards urls; held for writing while a node restarts
	start := func(i int) {
		nodes[i] = testutil.StartServer(t, buildLocker(t), env)
		urls[i] = nodes[i].URL
	}
	for i := range nodes {
		start(i)
	}
	makePairPool(t, urls[0])
	rec := newRecorder(8)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 8 {
		node := func() string {
			mu.RLock()
			defer mu.RUnlock()
			return urls[c%3]
		}
		wg.Go(func() { runClient(t, rec, c, []string{"l0", "l1", bothLocks, pairPool}, node, "", false, stop) })
	}
	// Waiters on every node, on locks of their own: a killed node has
	// some. Their history is not checked (a waiter granted as its node
	// dies holds the lock for a dead client until the node is taken for
	// dead, which the model cannot tell from a hold); what they must not
	// leave behind is, once it is over (leftBehind).
	for n := range 3 {
		node := func() string {
			mu.RLock()
			defer mu.RUnlock()
			return urls[n]
		}
		wg.Go(func() { runWaiter(n, node, stop) })
	}

	began := time.Now()
	half := began.Add(d / 2)
	rng := rand.New(rand.NewPCG(5, 3))
	kills, outages, lostCommits := 0, 0, 0
	for rec.running(began, d, minOps(d)) {
		// The next COMMIT's answer is lost on its way back: the change is
		// made, the node cannot know it, and its connection is gone.
		px.DropCommitAnswer()
		lostCommits++
		time.Sleep(time.Duration(2000+rng.IntN(3000)) * time.Millisecond)
		if outages == 0 && time.Now().After(half) {
			px.Outage(time.Second)
			rec.settle() // what was cut took effect before the database came back, or never
			outages++
			continue
		}
		rec.awaitRelease()
		i := rng.IntN(3)
		mu.Lock()
		nodes[i].Kill()
		start(i)
		rec.settle()
		mu.Unlock()
		kills++
	}
	close(stop)
	wg.Wait()
	rec.settle()
	rec.check(t, d, setModel, fmt.Sprintf("3 nodes, waiters, %d kills, %d lost COMMIT answers, %d database outage", kills, lostCommits, outages), func(keep string) {
		for i, n := range nodes {
			_ = os.WriteFile(filepath.Join(keep, fmt.Sprintf("node-%d.log", i)), []byte(n.Log.String()), 0o600)
		}
	})
	leftBehind(t, db, urls[0], 2)
}

// runWaiter takes the locks w0 and w1 in turn with a key of its own,
// waiting for them, holds each a moment and gives it back, until stop.
func runWaiter(n int, url func() string, stop <-chan struct{}) {
	client := &http.Client{Timeout: 3 * time.Second}
	body := fmt.Sprintf(`{"key": "waiter-%d", "lock_by": "waiter-%d"}`, n, n)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		l := fmt.Sprintf("%s/lock/w%d", url(), i%2)
		if status, _, _ := send(client, "PUT", l+"?wait=500ms", body); status == http.StatusOK {
			time.Sleep(20 * time.Millisecond)
			_, _, _ = send(client, "DELETE", l, body)
		}
	}
}

// leftBehind checks what a run leaves once its clients have let go of
// every lock: nothing held, and no row in the queue, once the waiters of
// the killed nodes were taken for dead (5 s). A grant to a waiter no
// request will take up, left in the queue or on a lock, would stay. A
// waiter whose request ended while the database was cut away is taken
// out by that request's node, trying for a while (takeOut: up to twelve
// tries of up to 10 s each); so this waits a minute, not the 30 s it
// waited before one such row outlived them under a loaded make test.
func leftBehind(t *testing.T, db, url string, locks int) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	for n := range 3 {
		for l := range 2 {
			body := fmt.Sprintf(`{"key": "waiter-%d", "lock_by": "waiter-%d", "all": true}`, n, n)
			testutil.WaitFor(t, "a waiter to let go", func() bool {
				status, _, _ := send(client, "DELETE", fmt.Sprintf("%s/lock/w%d", url, l), body)
				return status == http.StatusOK || status == http.StatusLocked
			})
		}
	}
	for c := range 8 {
		key, requestor := []string{"A", "B", "C", "D"}[c%4], fmt.Sprintf("client-%d", c)
		for l := range locks {
			body := fmt.Sprintf(`{"key": %q, "lock_by": %q, "all": true}`, key, requestor)
			testutil.WaitFor(t, "a client to let go", func() bool {
				// 423: the lock is held with another key, not this client's.
				status, _, _ := send(client, "DELETE", fmt.Sprintf("%s/lock/l%d", url, l), body)
				return status == http.StatusOK || status == http.StatusLocked
			})
		}
	}
	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var held, queued int
	deadline := time.Now().Add(time.Minute)
	for {
		err := conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM locker_locks WHERE lock IS NOT NULL),
			(SELECT count(*) FROM locker_queue)`).Scan(&held, &queued)
		if err == nil && held == 0 && queued == 0 {
			t.Logf("once every client let go: no lock held, the queue empty")
			return
		}
		if time.Now().After(deadline) {
			var rows string
			_ = conn.QueryRow(context.Background(), `SELECT coalesce(string_agg(format('id %s lock %s node %s (%s) requestor %s since %s left %s granted %s round %s',
				id, name, node, CASE WHEN node IN (SELECT node FROM locker_nodes WHERE seen > clock_timestamp() - interval '5 seconds') THEN 'alive' ELSE 'gone' END,
				requestor, since, left_at, granted IS NOT NULL, round), '; '), '') FROM locker_queue`).Scan(&rows)
			t.Fatalf("a minute after every client let go: %d locks held, %d rows in the queue (%v): %s; want none", held, queued, err, rows)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
