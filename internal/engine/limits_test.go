package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
)

// TestLimits: the first holder sets the cap; holders with the key share
// the lock up to it; the next waits or is refused, saying the limit; a
// different limit while held is refused; a holder coming back takes one
// more of the limit's holds, and waits like the others when there is
// none; once free, the next holder sets the cap again. Both stores.
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
		if !errors.Is(err, engine.ErrHeld) || !strings.Contains(err.Error(), "2 holds, as many as its limit of 2 allows") {
			t.Errorf("a third holder = %v; want 423 saying the limit", err)
		}
		if _, err := limited(tab, "staging", "tests", "test-3", 3, 0); !errors.Is(err, engine.ErrLimitDiffers) || !strings.Contains(err.Error(), `send "limit": 2`) {
			t.Errorf("a request naming another limit = %v; want 409 saying the current one", err)
		}
		if _, err := limited(tab, "staging", "tests", "test-1", 2, 0); !errors.Is(err, engine.ErrHeld) {
			t.Errorf("a holder coming back while the lock is full = %v; want 423: each hold is one of the limit's", err)
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

// TestALimitCapsHolds: four requests with one key and no requestor (each
// named by the key, so one holder) under "limit": 2: two are granted, the
// others wait or are refused, as a semaphore's permits. Both stores.
func TestALimitCapsHolds(t *testing.T) {
	enginetest.ForEachStore(t, func(t *testing.T, open func(testing.TB) *enginetest.Table) {
		tab := open(t)
		anonymous := engine.Request{Request: lock.Request{Key: "e2e", Requestor: "e2e", Limit: 2}}
		granted := 0
		for range 4 {
			if _, err := tab.Acquire(context.Background(), "browsers", anonymous); err == nil {
				granted++
			} else if !errors.Is(err, engine.ErrHeld) {
				t.Fatal(err)
			}
		}
		if s := enginetest.Get(t, tab, "browsers"); granted != 2 || s.Holds() != 2 {
			t.Errorf("four key-only requests under a limit of 2: %d granted, %d holds; want 2 and 2", granted, s.Holds())
		}
		if _, _, err := tab.Release(context.Background(), "browsers", "e2e", "e2e", false, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := tab.Acquire(context.Background(), "browsers", anonymous); err != nil {
			t.Errorf("with a hold given back, the next = %v; want it granted", err)
		}
	})
}
