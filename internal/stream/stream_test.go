package stream

import (
	"testing"

	"github.com/locker-ci/locker/internal/lock"
)

// events returns events with ids, of lock "odd" for odd ids, "even" for
// even ones.
func events(ids ...uint64) []lock.Event {
	var out []lock.Event
	for _, id := range ids {
		name := "even"
		if id%2 == 1 {
			name = "odd"
		}
		out = append(out, lock.Event{ID: id, Lock: name})
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
	odd := h.Subscribe([]string{"odd", "other"}, 100)
	none := h.Subscribe([]string{"other"}, 1)
	h.Publish(events(1, 2))
	h.Publish(events(3))
	h.Publish(events(4, 5))
	select {
	case <-slow.Cut:
	default:
		t.Fatal("a subscriber two events behind with room for two was not cut off at the third")
	}
	if h.Len() != 3 {
		t.Errorf("%d subscribers after the cut; want 3", h.Len())
	}
	if got := none.Take(); len(got) != 0 {
		t.Errorf("a subscriber to a lock with no events got %d", len(got))
	}
	for _, c := range []struct {
		sub  *Sub
		want []uint64
	}{{fast, []uint64{1, 2, 3, 4, 5}}, {odd, []uint64{1, 3, 5}}, {slow, []uint64{1, 2}}} {
		var got []uint64
		for _, e := range c.sub.Take() {
			got = append(got, e.ID)
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
	none.Close()
	if h.Len() != 0 {
		t.Errorf("%d subscribers after closing every one", h.Len())
	}
}
