package stream

import (
	"testing"

	"github.com/locker-ci/locker/internal/lock"
)

func events(ids ...uint64) []lock.Event {
	var out []lock.Event
	for _, id := range ids {
		out = append(out, lock.Event{ID: id, Lock: "l"})
	}
	return out
}

// TestASlowSubscriberIsCutOffAlone checks that a subscriber that does not
// read is cut off once its buffer is full, that publishing goes on without
// it, and that the others get every event in order.
func TestASlowSubscriberIsCutOffAlone(t *testing.T) {
	h := NewHub()
	slow := h.Subscribe(nil, 2)
	fast := h.Subscribe(nil, 100)
	odd := h.Subscribe(func(e lock.Event) bool { return e.ID%2 == 1 }, 100)
	h.Publish(events(1, 2))
	h.Publish(events(3))
	h.Publish(events(4, 5))
	select {
	case <-slow.Cut:
	default:
		t.Fatal("a subscriber two events behind with room for two was not cut off at the third")
	}
	if h.Len() != 2 {
		t.Errorf("%d subscribers after the cut; want 2", h.Len())
	}
	for _, c := range []struct {
		sub  *Sub
		want []uint64
	}{{fast, []uint64{1, 2, 3, 4, 5}}, {odd, []uint64{1, 3, 5}}, {slow, []uint64{1, 2}}} {
		var got []uint64
		for len(c.sub.C) > 0 {
			got = append(got, (<-c.sub.C).ID)
		}
		if len(got) != len(c.want) {
			t.Fatalf("got %v; want %v", got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("got %v; want %v", got, c.want)
			}
		}
	}
	fast.Close()
	odd.Close()
	if h.Len() != 0 {
		t.Errorf("%d subscribers after closing every one", h.Len())
	}
}
