package blackbox

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Linearizability with sets of locks: the locks l0 and l1, taken one at a
// time or both at once (PUT and DELETE /locks), checked as one history,
// since a set ties them together.

// bothLocks names the set of both locks in a lockOp.
const bothLocks = "l0,l1"

// pairState is the model's state of l0 and l1.
type pairState [2]lockState

// setModel is the lock rules over l0 and l1, with requests for both at
// once: granted both in one step or neither, given back both in one step.
var setModel = porcupine.NondeterministicModel{
	Init: func() []any { return []any{pairState{}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(pairState), input.(lockOp), output.(lockResult)
		if in.Lock == bothLocks {
			return stepSet(s, in, out)
		}
		i := strings.IndexByte("01", in.Lock[1])
		var next []any
		for _, l := range stepLock(s[i], in, out) {
			n := s
			n[i] = l
			next = append(next, n)
		}
		return next
	},
	Equal: func(a, b any) bool { return a.(pairState) == b.(pairState) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(lockOp), output.(lockResult)
		return fmt.Sprintf("%s %s %s/%s -> %d %v %d %v", in.Method, in.Lock, in.Key, in.Requestor, out.Status, out.LockedBy, out.Token, out.Set)
	},
	DescribeState: func(state any) string {
		s := state.(pairState)
		return fmt.Sprintf("l0: key %q holders [%s] token %d; l1: key %q holders [%s] token %d", s[0].key, s[0].holders, s[0].token, s[1].key, s[1].holders, s[1].token)
	},
}

// stepSet is a request for both locks, taken or given back: refused
// whole (423) when one is held with another key, else made on both in one
// step (200), or, unanswered, made or not.
func stepSet(s pairState, in lockOp, out lockResult) []any {
	for _, l := range s {
		if l.holders != "" && l.key != in.Key {
			if out.Status == 0 || out.Status == 423 {
				return []any{s}
			}
			return nil
		}
	}
	var each pairState // each lock as the request leaves it
	for i, name := range []string{"l0", "l1"} {
		var one lockResult // unanswered: stepLock gives [as it was, changed]
		if out.Status == 200 {
			one = out.Set[name]
			one.Status = 200
		}
		next := stepLock(s[i], in, one)
		if len(next) == 0 {
			return nil
		}
		each[i] = next[len(next)-1]
	}
	switch out.Status {
	case 0:
		return []any{s, each}
	case 200:
		return []any{each}
	}
	return nil // refused, though both could be had
}

// runSetClient is runClient over l0 and l1, with one request in three for
// both at once: it takes, releases and reads until stop.
func runSetClient(t *testing.T, rec *recorder, c int, url func() string, stop <-chan struct{}) {
	r := rand.New(rand.NewPCG(uint64(c), 11))
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
		in := lockOp{Lock: []string{"l0", "l1", bothLocks}[r.IntN(3)], Key: key, Requestor: requestor}
		switch n := r.IntN(10); {
		case n < 2 && in.Lock != bothLocks:
			in.Method = "GET"
		case c >= 6 && n < 4:
			in.Method, in.Key = "DELETE", "wrong-key"
		case holding[in.Lock]:
			in.Method = "DELETE"
		default:
			in.Method = "PUT"
		}
		op := porcupine.Operation{ClientId: id, Input: in, Call: rec.now()}
		body, path := "", "/lock/"+in.Lock
		switch {
		case in.Lock == bothLocks:
			body, path = fmt.Sprintf(`{"locks": ["l1", "l0"], "key": %q, "lock_by": %q}`, in.Key, in.Requestor), "/locks"
		case in.Method != "GET":
			body = fmt.Sprintf(`{"key": %q, "lock_by": %q}`, in.Key, in.Requestor)
		}
		status, reply, err := send(client, in.Method, url()+path, body)
		if status == http.StatusServiceUnavailable && strings.Contains(reply, "the change was not made") {
			continue
		}
		out := lockResult{Status: status}
		if err != nil || status >= 500 {
			out.Status = 0
		} else if err := json.Unmarshal([]byte(reply), &out); err != nil && status == 200 {
			t.Errorf("%s %s: reply %q: %v", in.Method, path, reply, err)
		}
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
		id = rec.record(op, out, id)
		if in.Method == "DELETE" && out.Status == 200 {
			rec.released()
		}
	}
}
