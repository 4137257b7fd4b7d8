package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
)

// TestLimits: the first holder sets the cap; holders with the key share
// the lock up to it; the next waits or is refused, saying the limit; a
// different limit while held is refused; a holder coming back is not a
// new holder; once free, the next holder sets the cap again. Both stores.
func TestLimits(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		for _, r := range []string{"test-1", "test-2"} {
			if _, err := limited(tab, "staging", "tests", r, 2, 0); err != nil {
				t.Fatalf("%s: %v", r, err)
			}
		}
		if s := enginetest.Get(t, tab, "staging"); s.Limit != 2 || len(s.Holders) != 2 {
			t.Fatalf("staging = %+v; want two holders under a limit of 2", s.Lock)
		}
		_, err := limited(tab, "staging", "tests", "test-3", 0, 0)
		if !errors.Is(err, engine.ErrHeld) || !strings.Contains(err.Error(), "as many holders as its limit of 2 allows") {
			t.Errorf("a third holder = %v; want 423 saying the limit", err)
		}
		if _, err := limited(tab, "staging", "tests", "test-3", 3, 0); !errors.Is(err, engine.ErrLimitDiffers) || !strings.Contains(err.Error(), `send "limit": 2`) {
			t.Errorf("a request naming another limit = %v; want 409 saying the current one", err)
		}
		if _, err := limited(tab, "staging", "tests", "test-1", 2, 0); err != nil {
			t.Errorf("a holder coming back while the lock is full = %v; want it granted", err)
		}
		third := enginetest.Queued(t, context.Background(), tab, "staging", "tests", "test-3")
		if granted(t, third) {
			t.Fatal("the third holder was granted over the limit")
		}
		if _, _, err := tab.Release(context.Background(), "staging", "tests", "test-2", true, nil); err != nil {
			t.Fatal(err)
		}
		mustGrant(t, third, "test-3")
		for _, r := range []string{"test-1", "test-3"} {
			if _, _, err := tab.Release(context.Background(), "staging", "tests", r, true, nil); err != nil {
				t.Fatal(err)
			}
		}
		if s, err := limited(tab, "staging", "upgrade", "upgrade", 1, 0); err != nil || s.Limit != 1 {
			t.Errorf("the next holder of the free lock = %+v, %v; want it to set a limit of 1", s.Lock, err)
		}
	})
}
