package blackbox

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testutil"
)

// TestFailover runs three nodes on a PostgreSQL primary with a streaming
// standby (testutil.Cluster), clients taking and giving back l0, l1,
// both at once, and claims on the pool of both, with waits; then stops the
// primary at once (-m immediate) and promotes the standby. Two nodes name
// both servers (target_session_attrs=read-write), in either order; the
// third reaches the database through one address, a proxy that is moved
// to the standby as it stops (the RDS or HAProxy shape).
//
// With synchronous replication nothing acknowledged is lost: the history
// is linearizable across the failover, tokens included. With asynchronous
// replication the standby is cut off first, so that it misses the last
// second of commits: what the clients were told then is lost (the test
// says how much), but no token is handed out twice: every token after the
// promotion is above every token before it.
func TestFailover(t *testing.T) {
	t.Parallel()
	t.Run("synchronous", func(t *testing.T) { failover(t, true) })
	t.Run("asynchronous", func(t *testing.T) { failover(t, false) })
}

func failover(t *testing.T, synchronous bool) {
	c := testutil.NewCluster(t, synchronous)
	px := testutil.NewProxy(t, c.Primary.Addr())
	databases := []string{
		c.URL(c.Primary, c.Standby),
		c.URL(c.Standby, c.Primary),
		"postgres://postgres@" + px.Addr() + "/postgres?sslmode=disable",
	}
	var nodes [3]*testutil.Server
	for i, db := range databases {
		nodes[i] = testutil.StartServer(t, buildLocker(t), "LOCKER_DATABASE_URL="+db)
	}
	defer func() {
		if t.Failed() {
			dir, _ := os.MkdirTemp("", "locker-failover-")
			for i, n := range nodes {
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("node-%d.log", i)), []byte(n.Log.String()), 0o600)
			}
			_ = os.WriteFile(filepath.Join(dir, "postgres.log"), []byte(c.Logs()), 0o600)
			t.Logf("the nodes' and the servers' logs are in %s", dir)
		}
	}()
	makePairPool(t, nodes[0].URL)
	// A request that waits across the failover, on a node of its own, is
	// kept open, and granted when the lock is given back after it.
	if status, body := httpDo(t, nodes[0].URL, "PUT", "/lock/across", `{"key": "before"}`); status != http.StatusOK {
		t.Fatalf("PUT /lock/across = %d %s", status, body)
	}
	// Its client sends it again with its Idempotency-Key on a 503, as
	// locker and the resource do (a node starved of CPU beside make test's
	// other tests can be taken for dead, and its waiters dropped).
	across := make(chan string, 1)
	go func() {
		client := &http.Client{Timeout: 11 * time.Minute}
		for deadline := time.Now().Add(10 * time.Minute); ; {
			status, body, err := sendKeyed(client, "PUT", nodes[1].URL+"/lock/across?wait=10m", `{"key": "after"}`, "across-1")
			if (err == nil && status != http.StatusServiceUnavailable) || time.Now().After(deadline) {
				across <- fmt.Sprintf("%d %s %v", status, body, err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	// Eight clients, each change with an Idempotency-Key, sent again
	// while it gets no answer or a 503. (The model knows no queue, so
	// these do not wait; the waiters below do, on locks of their own.)
	rec := newRecorder(8)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// The clients use the nodes that name both servers; the third's
	// proxy drops one COMMIT's answer below, which must be that change's.
	for cl := range 8 {
		url := nodes[cl%2].URL
		wg.Go(func() {
			runClient(t, rec, cl, []string{"l0", "l1", bothLocks, pairPool}, func() string { return url }, "", true, stop)
		})
	}
	for n := range 2 {
		url := nodes[n].URL
		wg.Go(func() { runWaiter(n, func() string { return url }, stop) })
	}
	d := 2 * time.Second
	time.Sleep(d)
	cut := rec.now()
	if !synchronous {
		c.Feed.Down() // the standby hears no more: it misses what follows
	}
	// A hundred grants of a lock of its own: more tokens than the
	// standby's copy of the sequence is ahead of the primary's (32).
	var burnt []uint64
	for range 100 {
		status, body := httpDo(t, nodes[0].URL, "PUT", "/lock/burn", `{"key": "k"}`)
		if status != http.StatusOK {
			t.Fatalf("PUT /lock/burn = %d %s", status, body)
		}
		burnt = append(burnt, tokenOf(body))
		httpDo(t, nodes[0].URL, "DELETE", "/lock/burn", `{"key": "k"}`)
	}

	// A change whose COMMIT's answer is lost as the primary goes: the
	// client is told it may or may not have been made, and sends it again
	// with its Idempotency-Key once the new primary serves.
	// (The proxy spots a COMMIT in what goes through it; should it miss
	// one, the change is answered 200 and the next one is tried.)
	doubtful := ""
	doubt := func() (int, string) {
		return idempotentPut(t, nodes[2].URL+"/lock/"+doubtful, `{"key": "k", "lock_by": "doubt"}`, doubtful)
	}
	for try := 1; try <= 3 && doubtful == ""; try++ {
		doubtful = fmt.Sprintf("in-doubt-%d", try)
		px.DropCommitAnswer()
		status, body := doubt()
		switch {
		case status == http.StatusServiceUnavailable && strings.Contains(body, "may or may not"):
		case status == http.StatusOK:
			t.Logf("the proxy let %s's COMMIT answer through; trying another", doubtful)
			doubtful = ""
		default:
			t.Errorf("a change whose COMMIT's answer was lost = %d %s; want 503 saying it may or may not have been made", status, body)
		}
	}
	if doubtful == "" {
		t.Errorf("in 3 tries, no change had its COMMIT's answer lost")
	}

	stoppedAt := rec.now()
	stopped := time.Now()
	c.StopPrimary()
	px.MoveTo(c.Standby.Addr()) // before the standby is promoted, as DNS may move

	// No writable primary: no node is ready, and the one whose address
	// leads to the standby says so.
	for i, n := range nodes {
		if status, body := httpGet(t, n.URL, "/readyz"); status != http.StatusServiceUnavailable {
			t.Errorf("node %d's /readyz with the primary stopped and the standby not promoted = %d %s; want 503", i, status, body)
		}
	}
	if status, body := httpDo(t, nodes[2].URL, "PUT", "/lock/on-a-standby", `{"key": "k"}`); status != http.StatusServiceUnavailable || !strings.Contains(body, "is a standby") {
		t.Errorf("a change on the node whose address leads to the standby = %d %s; want 503 saying it reached a standby", status, body)
	}
	if status, body := httpGet(t, nodes[2].URL, "/readyz"); !strings.Contains(body, "is a standby") {
		t.Errorf("/readyz on the node whose address leads to the standby = %d %s; want it to say it reached a standby", status, body)
	}

	c.Promote()
	promotedAt := rec.now()
	var firstTokens []uint64 // of the locks the nodes take first: new ones
	for i, n := range nodes {
		took, token := serveAgain(t, n.URL, fmt.Sprintf("/lock/after-%d", i), stopped)
		firstTokens = append(firstTokens, token)
		t.Logf("node %d (%s) made its first change %v after the primary stopped", i, []string{"hosts primary,standby", "hosts standby,primary", "through the moved address"}[i], took.Round(time.Millisecond))
	}
	rec.settle() // what went unanswered took effect before the failover, or never
	if status, body := httpDo(t, nodes[0].URL, "DELETE", "/lock/across", `{"key": "before"}`); status != http.StatusOK {
		t.Errorf("DELETE /lock/across after the failover = %d %s", status, body)
	}
	if got := <-across; !strings.HasPrefix(got, "200 ") || !strings.Contains(got, `"key":"after"`) {
		t.Errorf("the request that waited across the failover was answered %s; want 200, granted", got)
	}

	// The change in doubt, sent again with its key: answered from its
	// outcome if it survived the failover, made once if it did not.
	status, body := doubt()
	held := lockedBy(t, nodes[0].URL, doubtful)
	if status != http.StatusOK || held["doubt"] != 1 {
		t.Errorf("the change in doubt sent again = %d %s, and %s is held by %v; want 200, held once", status, body, doubtful, held)
	}

	time.Sleep(d)
	close(stop)
	wg.Wait()
	rec.settle()

	// Tokens: each one handed out after the promotion is above every one
	// handed out before the primary stopped, whatever the standby had. A
	// token seen before may be seen again after, a holding that lasts;
	// one not seen before is new.
	before := slices.Max(burnt)
	seen := map[uint64]bool{}
	for _, op := range rec.history {
		if op.Return < stoppedAt {
			for _, tok := range op.Output.(lockResult).tokens() {
				before = max(before, tok)
				seen[tok] = true
			}
		}
	}
	fresh := slices.Clone(firstTokens)
	for _, op := range rec.history {
		if op.Call > promotedAt {
			for _, tok := range op.Output.(lockResult).tokens() {
				if !seen[tok] {
					fresh = append(fresh, tok)
				}
			}
		}
	}
	t.Logf("tokens: the highest before the failover %d; %d new after it, the lowest %d", before, len(fresh), slices.Min(fresh))
	if slices.Min(fresh) <= before {
		t.Errorf("a token handed out after the failover, %d, is not above every token handed out before it (%d)", slices.Min(fresh), before)
	}

	if synchronous {
		rec.check(t, 2*d, setModel, "a failover with synchronous replication", func(string) {})
		return
	}
	// Asynchronous: what the clients were told after the standby was cut
	// off is lost with the old primary. Say how much, not hide it.
	lost := 0
	for _, op := range rec.history {
		out := op.Output.(lockResult)
		if op.Call >= cut && op.Return < stoppedAt && out.Status == http.StatusOK && op.Input.(lockOp).Method != "GET" {
			lost++
		}
	}
	t.Logf("asynchronous replication: the %d changes of the lock burn and up to %d of the clients', acknowledged after the standby was cut off, were lost with the old primary", 2*len(burnt), lost)
}

// serveAgain sends a change to the node at base until it is made, and
// returns how long after since that was, and the token it was given.
func serveAgain(t *testing.T, base, path string, since time.Time) (time.Duration, uint64) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		status, body, err := send(client, "PUT", base+path, `{"key": "k"}`)
		if status == http.StatusOK {
			return time.Since(since), tokenOf(body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not serve a change within a minute of the failover: %d %s %v", base, status, body, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// idempotentPut sends a PUT with an Idempotency-Key.
func idempotentPut(t *testing.T, url, body, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("PUT", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", key)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", url, err)
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(reply)
}

// lockedBy returns the lock's holders, as GET /lock/<name> shows them.
func lockedBy(t *testing.T, base, name string) map[string]int {
	t.Helper()
	status, body := httpGet(t, base, "/lock/"+name)
	var v struct {
		LockedBy map[string]int `json:"locked_by"`
	}
	if status != http.StatusOK || json.Unmarshal([]byte(body), &v) != nil {
		t.Fatalf("GET /lock/%s = %d %s", name, status, body)
	}
	return v.LockedBy
}

// tokens are the tokens an answer tells: its own, or, for a set or a
// claim, its locks'.
func (r lockResult) tokens() []uint64 {
	var out []uint64
	if r.Token != 0 {
		out = append(out, r.Token)
	}
	for _, l := range r.Set {
		out = append(out, l.tokens()...)
	}
	return out
}
