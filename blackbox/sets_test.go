package blackbox

import (
	"fmt"
	"strings"

	"github.com/anishathalye/porcupine"
)

// Linearizability with sets of locks: the locks l0 and l1, taken one at a
// time or both at once (PUT and DELETE /locks), checked as one history,
// since a set ties them together.

// bothLocks names the set of both locks in a lockOp, and pairPool a
// claim of one member of the pool pl, whose members are l0 and l1.
const (
	bothLocks = "l0,l1"
	pairPool  = "pool pl"
)

// pairState is the model's state of l0 and l1.
type pairState [2]lockState

// setModel is the lock rules over l0 and l1, with requests for both at
// once: granted both in one step or neither, given back both in one step.
var setModel = porcupine.NondeterministicModel{
	Init: func() []any { return []any{pairState{}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(pairState), input.(lockOp), output.(lockResult)
		switch in.Lock {
		case bothLocks:
			return stepSet(s, in, out)
		case pairPool:
			return stepClaim(s, in, out)
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

// stepClaim is a claim of one member of the pool of l0 and l1, with no
// wait: granted a member that was free, refused (423) when none was, or,
// unanswered, granted any free one or nothing. (Which free member it gets
// is the server's choice; the model allows either.)
func stepClaim(s pairState, in lockOp, out lockResult) []any {
	var next []any
	free := false
	for i, name := range []string{"l0", "l1"} {
		if s[i].holders != "" {
			continue
		}
		free = true
		got, ok := out.Set[name]
		switch {
		case out.Status == 0:
			got = lockResult{}
		case out.Status != 200 || !ok || len(out.Set) != 1:
			continue
		default:
			got.Status = 200
		}
		for _, l := range stepLock(s[i], lockOp{Lock: name, Method: "PUT", Key: in.Key, Requestor: in.Requestor}, got) {
			if l != s[i] {
				n := s
				n[i] = l
				next = append(next, n)
			}
		}
	}
	switch {
	case out.Status == 0:
		return append(next, s)
	case out.Status == 423 && !free:
		return []any{s}
	}
	return next
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
