package pgstore

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/testutil"
	"github.com/locker-ci/locker/internal/txn"
)

// TestANodeFollowsThePrimary: a node whose URL names only a standby is
// refused, saying why, and told to try again; one that names both servers
// reaches the primary, in either order; and once the standby is promoted,
// the first connection to it moves the token sequence past the old
// primary's, and says so once.
func TestANodeFollowsThePrimary(t *testing.T) {
	c := testutil.NewCluster(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := Open(ctx, c.URL(c.Standby), "n", Options{})
	if !errors.Is(err, txn.ErrStandby) || !Unreachable(err) || !strings.Contains(err.Error(), "target_session_attrs=read-write") {
		t.Fatalf("Open on a standby alone = %v; want ErrStandby, to be tried again, saying what to set", err)
	}

	var told []string
	s, err := Open(ctx, c.URL(c.Standby, c.Primary), "n", Options{NewPrimary: func(old, now Primary) { told = append(told, old.String()+" -> "+now.String()) }})
	if err != nil {
		t.Fatalf("Open with the standby named first and target_session_attrs=read-write: %v", err)
	}
	defer s.Close(false)
	before := nextToken(t, s)

	c.StopPrimary()
	c.Promote()
	var after int64
	testutil.WaitFor(t, "a token from the new primary", func() bool {
		err := s.pool.QueryRow(ctx, "SELECT nextval('locker_tokens')").Scan(&after)
		return err == nil
	})
	if after <= before+newPrimaryJump-1 {
		t.Errorf("the first token on the new primary is %d; want above %d + 2^40", after, before)
	}
	if len(told) != 1 || !strings.HasSuffix(told[0], "timeline 2") {
		t.Errorf("the node was told of new primaries %q; want once, of timeline 2", told)
	}
	if again := nextToken(t, s); again != after+1 {
		t.Errorf("the token after %d is %d; want the sequence to go on one by one on the same primary", after, again)
	}
}

// nextToken takes the sequence's next token.
func nextToken(t *testing.T, s *Store) int64 {
	t.Helper()
	var v int64
	if err := s.pool.QueryRow(context.Background(), "SELECT nextval('locker_tokens')").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestOneNodeLeads: of two nodes, one leads; when it leaves, the other
// takes the lead at its next look.
func TestOneNodeLeads(t *testing.T) {
	u := testURL(t)
	ctx := context.Background()
	a, err := Open(ctx, u, "a", Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, u, "b", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(false)
	if !a.Leads(ctx) || b.Leads(ctx) || !a.Leads(ctx) {
		t.Fatalf("a leads %v, b leads %v; want a alone, as it asked first", a.Leads(ctx), b.Leads(ctx))
	}
	a.Close(false)
	if !b.Leads(ctx) {
		t.Errorf("b does not lead after a left")
	}
}
