package main

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/locker-ci/locker/internal/pgcluster"
)

// failoverFigures are a node's on a PostgreSQL primary with a streaming
// standby (internal/pgcluster): how long a failover stops it, and what
// synchronous replication costs.
type failoverFigures struct {
	// From the primary's stop (-m immediate) to the first change the node
	// served after the standby's promotion, and of that, the promotion
	// itself (pg_ctl promote -w).
	SyncServeAgainMs  figure `json:"sync_serve_again_ms"`
	SyncPromoteMs     figure `json:"sync_promote_ms"`
	AsyncServeAgainMs figure `json:"async_serve_again_ms"`
	AsyncPromoteMs    figure `json:"async_promote_ms"`
	// One node's parallel load with synchronous replication to the
	// standby, and on the same primary with the standby cut off and
	// replication off: measured one after the other, in each run.
	SyncRPS  figure `json:"one_node_synchronous_rps"`
	AloneRPS figure `json:"one_node_no_standby_rps"`
}

// benchFailover measures, in each run, one node with synchronous
// replication and then without a standby, then a failover with
// synchronous replication, then one with asynchronous replication.
func benchFailover(cfg config, _ string, r *report) error {
	f := &failoverFigures{}
	var syncServe, syncPromote, asyncServe, asyncPromote, syncRPS, aloneRPS []float64
	for range cfg.runs {
		for _, sync := range []bool{true, false} {
			c, err := pgcluster.New(pgcluster.Options{Sync: sync, Fsync: true})
			if errors.Is(err, pgcluster.ErrNotInstalled) {
				r.Notes = append(r.Notes, "failover figures not measured: "+err.Error())
				return nil
			}
			if err != nil {
				return err
			}
			err = func() error {
				defer c.Close()
				p, err := start(cfg.locker, nil, append([]string{"PORT=0", "LOCKER_DATABASE_URL=" + c.URL(c.Primary, c.Standby)}, cfg.serverEnv...))
				if err != nil {
					return err
				}
				defer func() { _ = p.stop() }()
				if sync {
					withStandby, alone, err := replicationCost(cfg, c, p.url)
					if err != nil {
						return err
					}
					syncRPS, aloneRPS = append(syncRPS, withStandby), append(aloneRPS, alone)
				}
				serve, promote, err := failOver(c, p.url)
				if err != nil {
					return err
				}
				if sync {
					syncServe, syncPromote = append(syncServe, ms(serve)), append(syncPromote, ms(promote))
				} else {
					asyncServe, asyncPromote = append(asyncServe, ms(serve)), append(asyncPromote, ms(promote))
				}
				return nil
			}()
			if err != nil {
				return fmt.Errorf("synchronous %v: %w", sync, err)
			}
		}
	}
	f.SyncServeAgainMs, f.SyncPromoteMs = newFigure("ms", syncServe), newFigure("ms", syncPromote)
	f.AsyncServeAgainMs, f.AsyncPromoteMs = newFigure("ms", asyncServe), newFigure("ms", asyncPromote)
	f.SyncRPS, f.AloneRPS = newFigure("req/s", syncRPS), newFigure("req/s", aloneRPS)
	r.Failover = f
	return nil
}

// replicationCost runs the parallel load on the node at base with the
// standby synchronous, then with it cut off and the primary waiting for no
// standby, and puts the standby back.
func replicationCost(cfg config, c *pgcluster.Cluster, base string) (withStandby, alone float64, err error) {
	res, err := loop([]string{base}, cfg.clients, cfg.duration, ownLock("sync"))
	if err != nil {
		return 0, 0, err
	}
	withStandby = res.perSecond(res.requests)
	set := func(names string) error {
		if err := c.Exec(c.Primary, "ALTER SYSTEM SET synchronous_standby_names = '"+names+"'"); err != nil {
			return err
		}
		return c.Exec(c.Primary, "SELECT pg_reload_conf()")
	}
	if err := set(""); err != nil {
		return 0, 0, err
	}
	c.Feed.Down()
	time.Sleep(500 * time.Millisecond) // the reload reaches every backend
	res, err = loop([]string{base}, cfg.clients, cfg.duration, ownLock("alone"))
	if err != nil {
		return 0, 0, err
	}
	alone = res.perSecond(res.requests)
	c.Feed.Up()
	if err := set("standby"); err != nil {
		return 0, 0, err
	}
	return withStandby, alone, c.WaitStreaming()
}

// failOver stops the primary, promotes the standby, and returns how long
// after the stop the node at base made its first change, and how long the
// promotion took of that.
func failOver(c *pgcluster.Cluster, base string) (serve, promote time.Duration, err error) {
	cl := newClient(base)
	if status, err := cl.do("PUT", "/lock/before", `{"key": "k"}`); err != nil || status != http.StatusOK {
		return 0, 0, fmt.Errorf("PUT /lock/before: %d %v", status, err)
	}
	stopped := time.Now()
	if err := c.StopPrimary(); err != nil {
		return 0, 0, err
	}
	promoting := time.Now()
	if err := c.Promote(); err != nil {
		return 0, 0, err
	}
	promote = time.Since(promoting)
	for deadline := time.Now().Add(time.Minute); ; {
		status, err := cl.do("PUT", "/lock/after", `{"key": "k"}`)
		if err == nil && status == http.StatusOK {
			return time.Since(stopped), promote, nil
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("no change served within a minute of the failover: %d %v", status, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
