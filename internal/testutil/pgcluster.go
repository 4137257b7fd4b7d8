package testutil

import (
	"errors"
	"os"
	"testing"

	"github.com/locker-ci/locker/internal/pgcluster"
)

// Cluster is a PostgreSQL primary and its streaming standby, for a test
// that fails the database over (internal/pgcluster), with its calls
// failing the test.
type Cluster struct {
	*pgcluster.Cluster
	tb testing.TB
}

// NewCluster makes and starts a primary and its standby, with
// synchronous replication or not, until the test ends. Where
// PostgreSQL's server programs are not installed, the test is skipped
// saying so (failed under CI, which must run it).
func NewCluster(tb testing.TB, sync bool) *Cluster {
	tb.Helper()
	c, err := pgcluster.New(pgcluster.Options{Sync: sync})
	if errors.Is(err, pgcluster.ErrNotInstalled) {
		msg := "this failover test did not run: " + err.Error()
		if os.Getenv("CI") != "" {
			tb.Fatal(msg + " (CI is set, and CI must run it)")
		}
		tb.Skip(msg)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return &Cluster{Cluster: c, tb: tb}
}

// StopPrimary stops the primary at once (pg_ctl stop -m immediate).
func (c *Cluster) StopPrimary() {
	c.tb.Helper()
	if err := c.Cluster.StopPrimary(); err != nil {
		c.tb.Fatal(err)
	}
}

// Promote promotes the standby and waits until it takes writes.
func (c *Cluster) Promote() {
	c.tb.Helper()
	if err := c.Cluster.Promote(); err != nil {
		c.tb.Fatal(err)
	}
}
