package ci

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestConcourseAnswers: each status Concourse answers, its 404 (gone),
// a refusal, a token that expires or is revoked, a slow and a dead
// Concourse.
func TestConcourseAnswers(t *testing.T) {
	fake := testutil.NewConcourse(t)
	c := NewConcourse(fake.URL+"/", fake.User, fake.Password)
	ctx := context.Background()
	for i, status := range []string{"pending", "started", "succeeded", "failed", "errored", "aborted"} {
		fake.SetBuild(int64(i+1), status)
		if got, err := c.Outcome(ctx, int64(i+1)); err != nil || got != status {
			t.Errorf("build %d (%s): Outcome = %q, %v", i+1, status, got, err)
		}
	}
	if got, err := c.Outcome(ctx, 99); err != nil || got != lock.Gone {
		t.Errorf("an unknown build (404): Outcome = %q, %v; want %q", got, err, lock.Gone)
	}
	if n := fake.SignIns(); n != 1 {
		t.Errorf("signed in %d times for 7 lookups; want once, the token kept", n)
	}

	// A token that expires is fetched again before it does: its tenth of
	// life before. One that Concourse no longer takes (401) is fetched
	// again at once, and the lookup made again.
	fake.TokensLast(100 * time.Second)
	c.forget(c.token)
	now := time.Now()
	c.now = func() time.Time { return now }
	if _, err := c.Outcome(ctx, 1); err != nil {
		t.Fatal(err)
	}
	now = now.Add(89 * time.Second)
	if _, err := c.Outcome(ctx, 1); err != nil || fake.SignIns() != 2 {
		t.Errorf("89 s into a token of 100 s: %v, %d sign-ins; want the token kept (2)", err, fake.SignIns())
	}
	now = now.Add(2 * time.Second)
	if _, err := c.Outcome(ctx, 1); err != nil || fake.SignIns() != 3 {
		t.Errorf("91 s into a token of 100 s: %v, %d sign-ins; want a new token (3)", err, fake.SignIns())
	}
	c.now = time.Now
	c.mu.Lock()
	c.token = "revoked"
	c.mu.Unlock()
	if got, err := c.Outcome(ctx, 6); err != nil || got != "aborted" {
		t.Errorf("with a token Concourse refuses: Outcome = %q, %v; want it to sign in again and answer", got, err)
	}

	// Refusals and failures end nothing: they are errors, saying why.
	fake.Refuse(http.StatusForbidden)
	if _, err := c.Outcome(ctx, 6); err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "can see every team's builds") {
		t.Errorf("a 403: Outcome's error = %v; want it to say the user cannot see the build", err)
	}
	fake.Refuse(0)
	bad := NewConcourse(fake.URL, fake.User, "wrong")
	if _, err := bad.Outcome(ctx, 6); err == nil || !strings.Contains(err.Error(), "LOCKER_CONCOURSE_PASSWORD") {
		t.Errorf("a wrong password: Outcome's error = %v; want it to name the settings to check", err)
	}
	fake.Delay(2 * time.Second)
	slow, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := c.Outcome(slow, 6); err == nil {
		t.Errorf("a Concourse slower than the lookup's deadline: no error")
	}
	fake.Delay(0)
	fake.Close()
	if _, err := c.Outcome(ctx, 6); err == nil {
		t.Errorf("a Concourse that is gone: no error")
	}
}
