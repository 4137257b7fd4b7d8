package lock

import (
	"testing"
	"time"
)

func held(key string, holders ...string) Lock {
	l := Lock{Key: key, Token: 1}
	for _, h := range holders {
		l.SetHolder(Holder{Name: h, Hold: Hold{Count: 1}})
	}
	return l
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name    string
		l       Lock
		queued  int
		req     Request
		mayWait bool
		want    Verdict
	}{
		{"free lock", Lock{}, 0, Request{Key: "k", Requestor: "a"}, false, Grant},
		{"same key, no queue", held("k", "a"), 0, Request{Key: "k", Requestor: "b", Named: true}, false, Grant},
		{"other key", held("k", "a"), 0, Request{Key: "x", Requestor: "b", Named: true}, false, Refuse},
		{"other key, waits", held("k", "a"), 0, Request{Key: "x", Requestor: "b", Named: true}, true, Queue},
		{"same key behind a queue", held("k", "a"), 1, Request{Key: "k", Requestor: "b", Named: true}, false, Refuse},
		{"named holder again, behind a queue", held("k", "a"), 1, Request{Key: "k", Requestor: "a", Named: true}, false, Grant},
		// A job that gave no name is named after its key: another such job
		// is not the holder coming back, and must not jump the queue.
		{"anonymous job behind a queue", held("k", "k"), 1, Request{Key: "k", Requestor: "k"}, false, Refuse},
		{"anonymous job behind a queue, waits", held("k", "k"), 1, Request{Key: "k", Requestor: "k"}, true, Queue},
		{"anonymous job, no queue", held("k", "k"), 0, Request{Key: "k", Requestor: "k"}, false, Grant},
	}
	for _, tt := range tests {
		if got := Decide(tt.l, tt.queued, tt.req, tt.mayWait); got != tt.want {
			t.Errorf("%s: Decide = %v; want %v", tt.name, got, tt.want)
		}
	}
}

func TestCompatible(t *testing.T) {
	tests := []struct {
		name string
		l    Lock
		key  string
		want bool
	}{
		{"free lock", Lock{}, "a", true},
		{"held with the key", held("a", "x"), "a", true},
		{"held with another key", held("b", "x"), "a", false},
	}
	for _, tt := range tests {
		if got := Compatible(tt.l, Request{Key: tt.key, Requestor: "newcomer"}); got != tt.want {
			t.Errorf("%s: Compatible(%q) = %v; want %v", tt.name, tt.key, got, tt.want)
		}
	}
}

func TestReleaseRenewExpire(t *testing.T) {
	at := time.Unix(2000, 0)
	l := held("k", "a", "b")
	h, _ := l.Holder("a")
	h.Count, h.ExpiresAt = 3, at
	l.SetHolder(h)

	if _, _, ok := Release(l, "other", "a", false); ok {
		t.Error("Release with another key was taken")
	}
	one, n, ok := Release(l, "k", "a", false)
	if got, _ := one.Holder("a"); !ok || n != 1 || got.Count != 2 {
		t.Errorf("Release = %d, count %d, %v; want one count back", n, got.Count, ok)
	}
	if got, _ := l.Holder("a"); got.Count != 3 {
		t.Error("Release changed the lock it was given")
	}
	all, n, _ := Release(l, "k", "a", true)
	if _, still := all.Holder("a"); still || n != 3 {
		t.Errorf("Release all = %d, still there %v; want all 3 back", n, still)
	}
	if _, ok := Renew(l, "k", "nobody", at); ok {
		t.Error("Renew for a requestor that holds nothing was taken")
	}
	if _, ok := Expire(l, "a", at.Add(time.Second)); ok {
		t.Error("Expire of a lease that was renewed since was taken")
	}
	if got, ok := Expire(l, "a", at); !ok || len(got.Holders) != 1 {
		t.Errorf("Expire = %+v, %v; want a gone", got, ok)
	}
}
