package main

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/testutil"
)

// Claims on pools over the API, on both stores: sent again with their
// Idempotency-Key, and waiting while the pool changes or goes.

// TestAReplayedClaimThatEndedIsRefused: a claim sent again with its
// Idempotency-Key after the member it got was given back and claimed by
// another key must not pass for a live grant (a client would run its job
// beside the other's): 409, as for a lock.
func TestAReplayedClaimThatEndedIsRefused(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		ts.mustSend(t, request{"PUT", "/pool/rq", `{"members": ["q1"]}`})
		first := request{"PUT", "/pool/rq/claim", `{"key": "a", "lock_by": "job-a"}`}
		got := decodeClaim(t, ts.sendKeyed(t, first, "K1"))
		if again := ts.sendKeyed(t, first, "K1"); again.Code != http.StatusOK || again.Header().Get("Idempotent-Replayed") != "true" {
			t.Fatalf("sent again while held = %d %s; want the first answer again", again.Code, again.Body)
		}
		ts.mustSend(t, request{"DELETE", "/lock/q1", `{"key": "a", "lock_by": "job-a"}`})
		other := decodeClaim(t, ts.sendKeyed(t, request{"PUT", "/pool/rq/claim", `{"key": "b", "lock_by": "job-b"}`}, "K2"))
		if other.Locks["q1"].Token <= got.Locks["q1"].Token {
			t.Fatalf("b's claim = %+v; want q1 with a later token than a's %+v", other, got)
		}
		rec := ts.sendKeyed(t, first, "K1")
		if rec.Code != http.StatusConflict || !strings.Contains(errorOf(t, rec), "has since ended") {
			t.Errorf("a's claim sent again after b claimed q1 = %d %s; want 409, the hold has since ended", rec.Code, rec.Body)
		}
		if l := ts.locks(t)["q1"]; l.Key != "b" {
			t.Errorf("q1 after = %+v; want b's", l)
		}
	})
}

// TestAClaimThatReusesAWaitingClaimsKeyIsRefused: a claim with another
// body but the Idempotency-Key of one that waits is refused with 422 (as
// for a lock); the waiting one is granted the member.
func TestAClaimThatReusesAWaitingClaimsKeyIsRefused(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		ts.mustSend(t, request{"PUT", "/pool/p", `{"members": ["a"]}`})
		ts.mustSend(t, request{"PUT", "/lock/a", `{"key": "x"}`})
		waiting := ts.inBackground(t, request{"PUT", "/pool/p/claim?wait=1m", `{"key": "job-a", "lock_by": "job-a"}`}, "K1")
		testutil.WaitFor(t, "job-a's claim to wait", func() bool { return ts.poolWaiting(t, "p") == 1 })
		for _, wait := range []string{"", "?wait=1m"} {
			rec := ts.sendKeyed(t, request{"PUT", "/pool/p/claim" + wait, `{"key": "job-b", "lock_by": "job-b"}`}, "K1")
			if rec.Code != http.StatusUnprocessableEntity || !strings.Contains(errorOf(t, rec), "Idempotency-Key reused") {
				t.Errorf("job-b's claim with job-a's key (%q) = %d %s; want 422", wait, rec.Code, rec.Body)
			}
		}
		ts.mustSend(t, request{"DELETE", "/lock/a", `{"key": "x"}`})
		rec := answer(t, waiting, "job-a's claim")
		if got := decodeClaim(t, rec); got.Locks["a"].Key != "job-a" {
			t.Errorf("job-a's claim = %s; want a, with key job-a", rec.Body)
		}
		if l := ts.locks(t)["a"]; l.Key != "job-a" || l.LockedBy["job-a"] != 1 {
			t.Errorf("a after = %+v; want held once by job-a", l)
		}
	})
}

// TestAWaitingClaimFollowsThePoolsMembers: a claim waits while the pool's
// members are replaced: it is granted a new member that is free, never
// one taken out of the pool, and a member taken out is free for others at
// once.
func TestAWaitingClaimFollowsThePoolsMembers(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		ts.mustSend(t, request{"PUT", "/pool/pe", `{"members": ["pe1", "pe2"]}`})
		ts.mustSend(t, request{"PUT", "/lock/pe1", `{"key": "x"}`})
		ts.mustSend(t, request{"PUT", "/lock/pe2", `{"key": "y"}`})
		ts.mustSend(t, request{"PUT", "/lock/pe3", `{"key": "z"}`})
		waiting := ts.inBackground(t, request{"PUT", "/pool/pe/claim?wait=1m", `{"key": "c", "lock_by": "c"}`}, "")
		testutil.WaitFor(t, "the claim to wait", func() bool { return ts.poolWaiting(t, "pe") == 1 })
		ts.mustSend(t, request{"PUT", "/pool/pe", `{"members": ["pe1", "pe3"]}`})
		ts.mustSend(t, request{"DELETE", "/lock/pe2", `{"key": "y"}`})
		select {
		case rec := <-waiting:
			t.Fatalf("once pe2, taken out of the pool, was given back, the claim got %d %s; want it waiting still", rec.Code, rec.Body)
		default:
		}
		if rec := ts.send(t, request{"PUT", "/lock/pe2", `{"key": "other"}`}); rec.Code != http.StatusOK {
			t.Errorf("pe2, out of the pool and free, to another key = %d %s; want 200 (no claim waits for it)", rec.Code, rec.Body)
		}
		if n := ts.poolWaiting(t, "pe"); n != 1 {
			t.Errorf("the pool's queue = %d claims; want the claim still waiting", n)
		}
		ts.mustSend(t, request{"DELETE", "/lock/pe3", `{"key": "z"}`})
		if got := decodeClaim(t, answer(t, waiting, "the claim")); !slices.Equal(got.members(), []string{"pe3"}) {
			t.Errorf("the claim got %v; want pe3, the new member given back", got.members())
		}
	})
}

// TestAClaimIsGrantedANewFreeMemberAtOnce: a waiting claim is granted a
// member added to its pool free, by the change that adds it.
func TestAClaimIsGrantedANewFreeMemberAtOnce(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		ts.mustSend(t, request{"PUT", "/pool/pe", `{"members": ["pe1", "pe2"]}`})
		ts.mustSend(t, request{"PUT", "/lock/pe1", `{"key": "x"}`})
		ts.mustSend(t, request{"PUT", "/lock/pe2", `{"key": "y"}`})
		waiting := ts.inBackground(t, request{"PUT", "/pool/pe/claim?wait=1m", `{"key": "c", "lock_by": "c"}`}, "K1")
		testutil.WaitFor(t, "the claim to wait", func() bool { return ts.poolWaiting(t, "pe") == 1 })
		ts.mustSend(t, request{"PUT", "/pool/pe", `{"members": ["pe1", "pe3"]}`})
		if got := decodeClaim(t, answer(t, waiting, "the claim")); !slices.Equal(got.members(), []string{"pe3"}) {
			t.Errorf("the claim got %v; want pe3, the member added free", got.members())
		}
		ts.mustSend(t, request{"DELETE", "/lock/pe2", `{"key": "y"}`})
		if l, held := ts.locks(t)["pe2"]; held {
			t.Errorf("pe2, out of the pool, once given back = %+v; want free", l)
		}
	})
}

// TestAClaimOnAPoolThatShrinksBelowItIsAnswered: a claim for more members
// than the pool has left can never be granted: it is answered at once,
// saying so, and waits in no member's queue.
func TestAClaimOnAPoolThatShrinksBelowItIsAnswered(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		ts.mustSend(t, request{"PUT", "/pool/pp", `{"members": ["p1", "p2"]}`})
		ts.mustSend(t, request{"PUT", "/lock/p1", `{"key": "x"}`})
		waiting := ts.inBackground(t, request{"PUT", "/pool/pp/claim?wait=1m", `{"key": "c", "count": 2}`}, "")
		testutil.WaitFor(t, "the claim to wait", func() bool { return ts.poolWaiting(t, "pp") == 1 })
		ts.mustSend(t, request{"PUT", "/pool/pp", `{"members": ["p1"]}`})
		rec := answer(t, waiting, "the claim of 2 on a pool of 1")
		if rec.Code != http.StatusConflict || !strings.Contains(errorOf(t, rec), "now has 1 member") {
			t.Errorf("the claim of 2 once the pool has 1 member = %d %s; want 409 saying so", rec.Code, rec.Body)
		}
		ts.mustSend(t, request{"DELETE", "/lock/p1", `{"key": "x"}`})
		if rec := ts.send(t, request{"PUT", "/lock/p2", `{"key": "other"}`}); rec.Code != http.StatusOK {
			t.Errorf("p2 to another key = %d %s; want 200", rec.Code, rec.Body)
		}
		if locks := ts.locks(t); len(locks) != 1 {
			t.Errorf("locks after = %v; want p2 alone", locks)
		}
	})
}

// TestAClaimOnADeletedPoolIsAnswered: DELETE /pool answers the claims
// that wait for it (404, the pool is gone), and leaves its members as
// they are: free ones free for anyone.
func TestAClaimOnADeletedPoolIsAnswered(t *testing.T) {
	forEachServer(t, func(t *testing.T, ts *testServer) {
		ts.mustSend(t, request{"PUT", "/pool/pd", `{"members": ["pd1", "pd2"]}`})
		ts.mustSend(t, request{"PUT", "/lock/pd1", `{"key": "x"}`})
		ts.mustSend(t, request{"PUT", "/lock/pd2", `{"key": "y"}`})
		waiting := ts.inBackground(t, request{"PUT", "/pool/pd/claim?wait=1m", `{"key": "c"}`}, "K1")
		testutil.WaitFor(t, "the claim to wait", func() bool { return ts.poolWaiting(t, "pd") == 1 })
		ts.mustSend(t, request{"DELETE", "/pool/pd", ""})
		rec := answer(t, waiting, "the claim on the deleted pool")
		if rec.Code != http.StatusNotFound || !strings.Contains(errorOf(t, rec), `the pool "pd" was removed while this claim waited`) {
			t.Errorf("the waiting claim once its pool was deleted = %d %s; want 404 saying so", rec.Code, rec.Body)
		}
		ts.mustSend(t, request{"DELETE", "/lock/pd1", `{"key": "x"}`})
		ts.mustSend(t, request{"DELETE", "/lock/pd2", `{"key": "y"}`})
		if rec := ts.send(t, request{"PUT", "/lock/pd1", `{"key": "other"}`}); rec.Code != http.StatusOK {
			t.Errorf("pd1 to another key after = %d %s; want 200 (no claim waits for it)", rec.Code, rec.Body)
		}
		if rec := ts.sendKeyed(t, request{"PUT", "/pool/pd/claim", `{"key": "c"}`}, "K1"); rec.Code != http.StatusNotFound {
			t.Errorf("the claim sent again = %d %s; want 404", rec.Code, rec.Body)
		}
	})
}
