package lock

import (
	"cmp"
	"slices"
	"time"
)

// Pool is a named set of interchangeable locks, its members: a claim
// takes any free ones. A member is an ordinary lock; the pool only says
// which locks are its members, and when each was last claimed.
type Pool struct {
	Members []string             `json:"members" yaml:"members"`                     // sorted, each once
	Claimed map[string]time.Time `json:"claimed,omitempty" yaml:"claimed,omitempty"` // when each member was last claimed
}

// Pick returns count of the members in free, the ones claimed least
// recently first (never claimed first of all, then by name): a claim
// spreads its use over the pool. It returns nil when free has fewer.
func (p Pool) Pick(free []string, count int) []string {
	if count < 1 || len(free) < count {
		return nil
	}
	order := slices.Clone(free)
	slices.SortFunc(order, func(a, b string) int {
		return cmp.Or(p.Claimed[a].Compare(p.Claimed[b]), cmp.Compare(a, b))
	})
	chosen := order[:count]
	slices.Sort(chosen)
	return chosen
}

// WithMembers returns p with members as its members (sorted), keeping
// when each one kept was last claimed.
func (p Pool) WithMembers(members []string) Pool {
	next := Pool{Members: slices.Sorted(slices.Values(members))}
	for _, m := range next.Members {
		if at, ok := p.Claimed[m]; ok {
			if next.Claimed == nil {
				next.Claimed = map[string]time.Time{}
			}
			next.Claimed[m] = at
		}
	}
	return next
}

// Claim returns p with members claimed at now.
func (p Pool) Claim(members []string, now time.Time) Pool {
	claimed := make(map[string]time.Time, len(p.Claimed)+len(members))
	for m, at := range p.Claimed {
		claimed[m] = at
	}
	for _, m := range members {
		claimed[m] = now
	}
	p.Claimed = claimed
	return p
}
