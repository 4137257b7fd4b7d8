package blackbox

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestLinearizableNodes runs three servers on one PostgreSQL database,
// the eight clients spread over them, kills one node with SIGKILL and
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
	rec := newRecorder(8)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 8 {
		node := func() string {
			mu.RLock()
			defer mu.RUnlock()
			return urls[c%3]
		}
		wg.Go(func() { runClient(t, rec, c, 2, node, stop) })
	}

	began := time.Now()
	half := began.Add(d / 2)
	rng := rand.New(rand.NewPCG(5, 3))
	kills, outages := 0, 0
	for rec.running(began, d, minOps(d)) {
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
	rec.check(t, d, fmt.Sprintf("3 nodes, %d kills, %d database outage", kills, outages), func(keep string) {
		for i, n := range nodes {
			_ = os.WriteFile(filepath.Join(keep, fmt.Sprintf("node-%d.log", i)), []byte(n.Log.String()), 0o600)
		}
	})
}
