package lock

import (
	"reflect"
	"testing"
	"time"
)

func TestPoolPickSpreadsUse(t *testing.T) {
	at := time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC)
	p := Pool{Members: []string{"s1", "s2", "s3", "s4"}, Claimed: map[string]time.Time{"s1": at, "s2": at.Add(time.Minute), "s4": at.Add(-time.Hour)}}
	for _, tt := range []struct {
		free  []string
		count int
		want  []string
	}{
		{[]string{"s1", "s2", "s3", "s4"}, 1, []string{"s3"}},                   // never claimed first
		{[]string{"s1", "s2", "s4"}, 2, []string{"s1", "s4"}},                   // then the least recently claimed
		{[]string{"s2", "s1"}, 2, []string{"s1", "s2"}},                         // answered sorted
		{[]string{"s1"}, 2, nil},                                                // too few free
		{nil, 1, nil},                                                           // none free
		{[]string{"s1", "s2", "s3", "s4"}, 4, []string{"s1", "s2", "s3", "s4"}}, // all
	} {
		if got := p.Pick(tt.free, tt.count); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Pick(%v, %d) = %v; want %v", tt.free, tt.count, got, tt.want)
		}
	}
	next := p.WithMembers([]string{"s4", "s9", "s1"})
	if want := (Pool{Members: []string{"s1", "s4", "s9"}, Claimed: map[string]time.Time{"s1": at, "s4": at.Add(-time.Hour)}}); !reflect.DeepEqual(next, want) {
		t.Errorf("WithMembers = %+v; want %+v", next, want)
	}
	if c := p.Claim([]string{"s3"}, at.Add(time.Hour)); !c.Claimed["s3"].Equal(at.Add(time.Hour)) || !p.Claimed["s3"].IsZero() {
		t.Errorf("Claim changed the pool it was called on, or did not record the claim: %+v, %+v", p, c)
	}
}
