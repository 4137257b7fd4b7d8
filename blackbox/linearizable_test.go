package blackbox

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// TestLinearizable drives the real server with clients that take, release
// and read locks while the server is killed with SIGKILL and restarted
// every 2-5 s, records every operation, and checks with porcupine that the
// history is linearizable against the lock rules.
func TestLinearizable(t *testing.T) {
	t.Parallel() // mostly waits on its clients (half a core): it runs beside the others
	for _, locks := range []int{1, 10} {
		t.Run(fmt.Sprintf("%d locks", locks), func(t *testing.T) {
			d := 12 * time.Second
			if stress() {
				d = 60 * time.Second
			}
			checkLinearizable(t, locks, d)
		})
	}
}

// lockOp is what a client sent.
type lockOp struct {
	Lock, Method, Key, Requestor string
}

// lockResult is what it got: status 0 when it got no answer (connection
// error, timeout, or a 5xx), which may or may not have taken effect.
type lockResult struct {
	Status   int            `json:"-"`
	Token    uint64         `json:"token"`
	Key      string         `json:"key"`
	LockedBy map[string]int `json:"locked_by"`
}

// lockState is the model's state of one lock.
type lockState struct {
	key     string
	holders string // sorted "requestor=count" pairs
	token   uint64 // the token of the current holders; 0 when not known
	floor   uint64 // tokens of later grants must be above this
}

func holdersOf(s lockState) map[string]int {
	m := map[string]int{}
	for _, p := range strings.Fields(s.holders) {
		var r string
		var n int
		i := strings.LastIndexByte(p, '=')
		r = p[:i]
		fmt.Sscan(p[i+1:], &n)
		m[r] = n
	}
	return m
}

func withHolders(s lockState, m map[string]int) lockState {
	var parts []string
	for _, r := range slices.Sorted(maps.Keys(m)) {
		if m[r] > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", r, m[r]))
		}
	}
	s.holders = strings.Join(parts, " ")
	if s.holders == "" {
		s.key = ""
		s.floor = max(s.floor, s.token)
		s.token = 0
	}
	return s
}

// lockModel is the lock rules, one partition per lock name. Tokens come
// from one counter for all locks, so the model only asks that each grant of
// a free lock gets a token above every earlier one of that lock.
var lockModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byLock := map[string][]porcupine.Operation{}
		for _, op := range history {
			name := op.Input.(lockOp).Lock
			byLock[name] = append(byLock[name], op)
		}
		var out [][]porcupine.Operation
		for _, name := range slices.Sorted(maps.Keys(byLock)) {
			out = append(out, byLock[name])
		}
		return out
	},
	Init: func() []any { return []any{lockState{}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(lockState), input.(lockOp), output.(lockResult)
		held := s.holders != ""
		switch in.Method {
		case "GET":
			if out.Status == 0 {
				return []any{s}
			}
			ok := out.Status == 200 && out.Key == s.key && maps.Equal(out.LockedBy, holdersOf(s)) &&
				(s.token == 0 && (!held || out.Token > s.floor) || out.Token == s.token)
			if !ok {
				return nil
			}
			if held && s.token == 0 {
				s.token = out.Token // learnt from an answer
			}
			return []any{s}
		case "PUT":
			compatible := !held || s.key == in.Key
			granted := s
			granted.key = in.Key
			h := holdersOf(s)
			h[in.Requestor]++
			granted = withHolders(granted, h)
			if !held {
				granted.token = 0 // a new token, not yet known
			}
			switch {
			case out.Status == 0 && compatible:
				return []any{s, granted}
			case out.Status == 0 || out.Status == 423 && !compatible:
				return []any{s}
			case out.Status == 200 && compatible:
				if held && s.token != 0 && out.Token != s.token || !held && out.Token <= s.floor ||
					held && s.token == 0 && out.Token <= s.floor {
					return nil
				}
				granted.token = out.Token
				return []any{granted}
			}
			return nil
		case "DELETE":
			if !held {
				if out.Status == 0 || out.Status == 200 {
					return []any{s}
				}
				return nil
			}
			if s.key != in.Key {
				if out.Status == 0 || out.Status == 423 {
					return []any{s}
				}
				return nil
			}
			h := holdersOf(s)
			if h[in.Requestor] > 0 {
				h[in.Requestor]--
			}
			released := withHolders(s, h)
			switch out.Status {
			case 0:
				return []any{s, released}
			case 200:
				return []any{released}
			}
			return nil
		}
		return nil
	},
	Equal: func(a, b any) bool { return a.(lockState) == b.(lockState) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(lockOp), output.(lockResult)
		return fmt.Sprintf("%s %s %s/%s -> %d %v %d", in.Method, in.Lock, in.Key, in.Requestor, out.Status, out.LockedBy, out.Token)
	},
	DescribeState: func(state any) string {
		s := state.(lockState)
		return fmt.Sprintf("key %q holders [%s] token %d floor %d", s.key, s.holders, s.token, s.floor)
	},
}

func checkLinearizable(t *testing.T, locks int, d time.Duration) {
	dir := t.TempDir()
	state := filepath.Join(dir, "locks.yml")
	p := startProc(t, state)
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		nextID  = 8
		base    = time.Now()
		url     = p.URL
		killing sync.RWMutex // held for writing while the server is down
		// killSoon is closed when the next acknowledged change should be
		// followed by a kill; guarded by mu.
		killSoon = make(chan struct{})
		acked    = make(chan struct{}, 1)
	)
	now := func() int64 { return int64(time.Since(base)) }
	pending := map[int]*porcupine.Operation{} // unanswered ops, finished at the next kill
	// After each 2-5 s, the kill comes right after the server acknowledges
	// a release that leaves a lock free: a server that answers before its
	// change is on disk would lose that release, and one that forgets its
	// token counter would hand that lock's token out again.

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(c), 7))
			// Four keys, two clients each; a client gives back what it holds
			// before it takes again, so that locks change hands often.
			key := []string{"A", "B", "C", "D"}[c%4]
			requestor := fmt.Sprintf("client-%d", c)
			holding := map[string]bool{}
			id := c
			client := &http.Client{Timeout: 3 * time.Second}
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(5+r.IntN(20)) * time.Millisecond):
				}
				in := lockOp{Lock: fmt.Sprintf("l%d", r.IntN(locks)), Key: key, Requestor: requestor}
				switch n := r.IntN(10); {
				case n < 2:
					in.Method = "GET"
				case c >= 6 && n < 4:
					in.Method, in.Key = "DELETE", "wrong-key" // clients 6 and 7 also release with a key they never held
				case holding[in.Lock]:
					in.Method = "DELETE"
				default:
					in.Method = "PUT"
				}
				killing.RLock()
				u := url
				killing.RUnlock()
				op := porcupine.Operation{ClientId: id, Input: in, Call: now()}
				body := ""
				if in.Method != "GET" {
					body = fmt.Sprintf(`{"key": %q, "lock_by": %q}`, in.Key, in.Requestor)
				}
				status, reply, err := send(client, in.Method, u+"/lock/"+in.Lock, body)
				out := lockResult{Status: status}
				if err != nil || status >= 500 {
					out.Status = 0
				} else if err := json.Unmarshal([]byte(reply), &out); err != nil && status == 200 {
					t.Errorf("%s: reply %q: %v", in.Method, reply, err)
				}
				op.Output = out
				if in.Key == key {
					switch {
					case out.Status == 0:
						holding[in.Lock] = true // maybe: release it next, to be sure
					case in.Method == "PUT":
						holding[in.Lock] = out.Status == 200
					case in.Method == "DELETE" && out.Status == 200:
						holding[in.Lock] = false
					}
				}
				mu.Lock()
				if out.Status == 0 {
					// It may take effect until the server dies: its return is
					// set at the next kill. The client goes on as a new one.
					pending[id] = &op
					id = nextID
					nextID++
				} else {
					op.Return = now()
					history = append(history, op)
				}
				ks := killSoon
				mu.Unlock()
				if in.Method == "DELETE" && out.Status == 200 && out.Key == "" {
					select {
					case <-ks:
						select {
						case acked <- struct{}{}:
						default:
						}
					default:
					}
				}
			}
		})
	}

	// settle ends the unanswered operations once the server is dead: they
	// took effect before it died, or never.
	settle := func() {
		mu.Lock()
		defer mu.Unlock()
		dead := now()
		for _, op := range pending {
			op.Return = dead
			history = append(history, *op)
		}
		clear(pending)
	}

	deadline := time.Now().Add(d)
	rng := rand.New(rand.NewPCG(99, 1))
	kills := 0
	for time.Now().Before(deadline) {
		time.Sleep(time.Duration(2000+rng.IntN(3000)) * time.Millisecond)
		mu.Lock()
		close(killSoon)
		mu.Unlock()
		select {
		case <-acked:
		case <-time.After(time.Second):
		}
		killing.Lock()
		p.Kill()
		settle()
		p = startProc(t, state)
		url = p.URL
		mu.Lock()
		killSoon = make(chan struct{})
		mu.Unlock()
		killing.Unlock()
		kills++
	}
	close(stop)
	wg.Wait()
	p.Kill()
	settle()

	model := lockModel.ToModel()
	res, info := porcupine.CheckOperationsVerbose(model, history, 60*time.Second)
	t.Logf("%d operations (%.0f/s), %d kills: %v", len(history), float64(len(history))/d.Seconds(), kills, res)
	if len(history) < int(100*d.Seconds()) {
		t.Errorf("only %d operations in %v; want at least 100/s", len(history), d)
	}
	if res != porcupine.Ok {
		out := filepath.Join(os.TempDir(), fmt.Sprintf("locker-linearizability-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(model, info, out); err != nil {
			t.Logf("writing the visualisation: %v", err)
		}
		keep, _ := os.MkdirTemp("", "locker-linearizability-state")
		_ = os.CopyFS(keep, os.DirFS(dir))
		_ = os.WriteFile(filepath.Join(keep, "server.log"), []byte(p.Log.String()), 0o600)
		t.Fatalf("history is not linearizable (%v): see %s; state file and server log kept in %s", res, out, keep)
	}
}
