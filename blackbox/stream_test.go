package blackbox

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestTheStreamResumesAcrossKills follows GET /events while clients change
// locks and the server is killed with SIGKILL, over and over, resuming
// each time with the Last-Event-ID of the last event it received. At the
// end, what the stream delivered must be exactly every lock's history:
// every event once, in order, and none that the history does not hold
// (an event sent before its change was durable would be lost by the kill).
func TestTheStreamResumesAcrossKills(t *testing.T) {
	t.Parallel() // mostly waits on kills and restarts
	state := filepath.Join(t.TempDir(), "locks.yml")
	const clients, cycles = 4, 8
	env := "LOCKER_HISTORY=100000" // every event stays, to compare with
	rng := rand.New(rand.NewPCG(3, 4))
	var got []lock.Event
	last := ""
	receive := func(events []testutil.SSE) {
		for _, e := range events {
			if e.Kind != "" {
				continue // a notice, not a lock's event
			}
			ev := testutil.LockEvent(t, e)
			if n := len(got); n > 0 && ev.ID <= got[n-1].ID {
				t.Fatalf("event %d came after event %d", ev.ID, got[n-1].ID)
			}
			got = append(got, ev)
			last = strconv.FormatUint(ev.ID, 10)
		}
	}
	for range cycles {
		p := startProc(t, state, env)
		s := testutil.OpenStream(t, p.URL, "", last)
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for c := range clients {
			seed := rng.Uint64()
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, 0))
				client := &http.Client{Timeout: 5 * time.Second}
				name := fmt.Sprintf("%s/lock/s%d", p.URL, c)
				held := 0
				for {
					select {
					case <-stop:
						return
					default:
					}
					method := "PUT"
					if held > 0 && r.IntN(2) == 0 {
						method = "DELETE"
					}
					status, _, err := send(client, method, name, `{"key": "k"}`)
					if err == nil && status == http.StatusOK {
						held += map[string]int{"PUT": 1, "DELETE": -1}[method]
					} else if err == nil {
						t.Errorf("%s %s = %d", method, name, status)
					}
				}
			})
		}
		time.Sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
		p.Kill()
		close(stop)
		wg.Wait()
		receive(s.Drain(5 * time.Second)) // the stream ends with the server
	}
	p := startProc(t, state, env)
	receive(testutil.OpenStream(t, p.URL, "", last).Drain(time.Second))

	var kept []lock.Event
	for c := range clients {
		status, body := httpGet(t, p.URL, fmt.Sprintf("/history/s%d?limit=1000", c))
		var h struct{ Events []lock.Event }
		if err := json.Unmarshal([]byte(body), &h); status != http.StatusOK || err != nil {
			t.Fatalf("GET /history/s%d = %d %s", c, status, body)
		}
		if len(h.Events) == 1000 {
			t.Fatalf("s%d has more than 1000 events: the test reads only 1000", c)
		}
		kept = append(kept, h.Events...)
	}
	slices.SortFunc(kept, func(a, b lock.Event) int { return int(a.ID) - int(b.ID) })
	if len(got) < 100 {
		t.Fatalf("only %d events in %d cycles: too few to tell", len(got), cycles)
	}
	if !slices.EqualFunc(got, kept, func(a, b lock.Event) bool {
		return a.ID == b.ID && a.Lock == b.Lock && a.Kind == b.Kind && a.At.Equal(b.At)
	}) {
		t.Fatalf("the stream delivered %d events; the histories hold %d. First difference: %s", len(got), len(kept), firstDifference(got, kept))
	}
	t.Logf("%d events over %d kills, each delivered once", len(got), cycles)
}

func firstDifference(a, b []lock.Event) string {
	for i := range min(len(a), len(b)) {
		if a[i].ID != b[i].ID || a[i].Kind != b[i].Kind || a[i].Lock != b[i].Lock {
			return fmt.Sprintf("at %d: streamed %d %s %s, history %d %s %s", i, a[i].ID, a[i].Lock, a[i].Kind, b[i].ID, b[i].Lock, b[i].Kind)
		}
	}
	return fmt.Sprintf("one is longer: streamed %d, history %d", len(a), len(b))
}

// TestTheStreamMovesToAnotherNode follows GET /events on one PostgreSQL
// node while clients change locks on two, kills that node with SIGKILL,
// and resumes on the other with the Last-Event-ID it had. Every event of
// every lock's history must arrive, each lock's in order, and none that
// no history holds; an event may come twice around the resumption (the
// stream says so in its documentation), never more.
func TestTheStreamMovesToAnotherNode(t *testing.T) {
	t.Parallel()
	env := []string{"LOCKER_DATABASE_URL=" + testutil.PostgresSchema(t), "LOCKER_HISTORY=100000"}
	a := testutil.StartServer(t, buildLocker(t), env...)
	b := testutil.StartServer(t, buildLocker(t), env...)
	// Node a's stream follows from before the first change: it is sent
	// every event (on a busy machine, changes made before it subscribed
	// were in the histories and never on a stream).
	sa := testutil.OpenStream(t, a.URL, "", "")
	const clients = 6
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var madeOnA atomic.Int64 // changes node a made, which its stream sends
	for c := range clients {
		wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second}
			held := 0
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				node := b.URL // a client on a dies with it; half of them go to b
				if c%2 == 0 {
					node = a.URL
				}
				method := "PUT"
				if held > 0 && i%2 == 1 {
					method = "DELETE"
				}
				status, _, err := send(client, method, fmt.Sprintf("%s/lock/n%d", node, c), `{"key": "k"}`)
				if err == nil && status == http.StatusOK {
					held += map[string]int{"PUT": 1, "DELETE": -1}[method]
					if node == a.URL {
						madeOnA.Add(1)
					}
				}
				if err != nil && c%2 == 0 {
					time.Sleep(10 * time.Millisecond) // its node is gone
				}
			}
		})
	}
	var got []lock.Event
	// Half a second of changes, at least 20 on a, and a's stream has sent
	// one of them (a busy machine's first half second may have none, and
	// a node hands its events on within a poll of the database).
	time.Sleep(500 * time.Millisecond)
	for deadline := time.Now().Add(30 * time.Second); madeOnA.Load() < 20 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	for e, ok := sa.Next(t); ok; e, ok = sa.Next(t) {
		if e.Kind == "" {
			got = append(got, testutil.LockEvent(t, e))
			break
		}
	}
	a.Kill()
	for _, e := range sa.Drain(5 * time.Second) {
		if e.Kind == "" {
			got = append(got, testutil.LockEvent(t, e))
		}
	}
	if len(got) == 0 {
		t.Fatal("node a's stream sent nothing before it was killed")
	}
	sb := testutil.OpenStream(t, b.URL, "", strconv.FormatUint(got[len(got)-1].ID, 10))
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	// Every event kept, read a page at a time; then the stream is read
	// until each has come (node b hears of the last ones when it next
	// looks, later on a busy machine), and a little longer, for events
	// sent twice.
	kept := map[uint64]lock.Event{}
	for c := range clients {
		for page := fmt.Sprintf("/history/n%d?limit=1000", c); page != ""; {
			status, body := httpGet(t, b.URL, page)
			var h struct {
				Events []lock.Event
				Next   string
			}
			if err := json.Unmarshal([]byte(body), &h); status != http.StatusOK || err != nil {
				t.Fatalf("GET %s = %d %v", page, status, err)
			}
			for _, e := range h.Events {
				kept[e.ID] = e
			}
			page = h.Next
		}
	}
	arrived := map[uint64]bool{}
	for _, e := range got {
		arrived[e.ID] = true
	}
	for len(arrived) < len(kept) {
		e, ok := sb.Next(t)
		if !ok {
			t.Fatalf("node b's stream ended with %d of the %d events kept", len(arrived), len(kept))
		}
		if e.Kind == "" {
			ev := testutil.LockEvent(t, e)
			got = append(got, ev)
			arrived[ev.ID] = true
		}
	}
	for _, e := range sb.Drain(500 * time.Millisecond) {
		if e.Kind == "" {
			got = append(got, testutil.LockEvent(t, e))
		}
	}
	seen := map[uint64]int{}
	last := map[string]uint64{}
	for _, e := range got {
		if _, ok := kept[e.ID]; !ok {
			t.Fatalf("the stream sent event %d (%s of %s), which no history holds", e.ID, e.Kind, e.Lock)
		}
		if seen[e.ID]++; seen[e.ID] > 2 {
			t.Fatalf("event %d came %d times", e.ID, seen[e.ID])
		}
		if seen[e.ID] == 1 {
			if e.ID <= last[e.Lock] {
				t.Fatalf("event %d of %s came after event %d of it", e.ID, e.Lock, last[e.Lock])
			}
			last[e.Lock] = e.ID
		}
	}
	for id, e := range kept {
		if seen[id] == 0 {
			t.Fatalf("event %d (%s of %s by %s) is in the history but never came on a stream", id, e.Kind, e.Lock, e.Holder)
		}
	}
	twice := 0
	for _, n := range seen {
		twice += n - 1
	}
	t.Logf("%d events, %d of them sent again after the move to node b", len(kept), twice)
}
