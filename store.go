package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/locker-ci/locker/internal/atomicfile"
	"github.com/locker-ci/locker/internal/config"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/filestore"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/pgstore"
)

// openStore opens the store cfg names: the database when
// LOCKER_DATABASE_URL is set, else the state file.
// databasePatience is how long a node that starts keeps trying to reach
// its database: long enough for a database that starts with the machine,
// short enough that a wrong host is reported while someone watches.
const databasePatience = time.Minute

// openDatabase joins the lock table in the database at url. A database
// that cannot be reached yet is tried again, with a warning each time,
// for databasePatience; a wrong password or database name fails at once.
func openDatabase(ctx context.Context, url string, opts pgstore.Options, log *slog.Logger) (*pgstore.Store, error) {
	host, _ := os.Hostname()
	deadline := time.Now().Add(databasePatience)
	for backoff := time.Second; ; backoff = min(2*backoff, 10*time.Second) {
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s, err := pgstore.Open(octx, url, host, opts)
		cancel()
		switch {
		case err == nil || !pgstore.Unreachable(err):
			return s, err
		case time.Now().Add(backoff).After(deadline):
			return nil, fmt.Errorf("tried for %v: %w", databasePatience, err)
		}
		log.Warn("cannot reach the database; trying again", "in", backoff, "until", deadline.Format(time.TimeOnly), "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("stopped while waiting for the database: %w", err)
		case <-time.After(backoff):
		}
	}
}

// leads returns what says whether this node looks up the builds of
// build-bound holds: on PostgreSQL, the one node that holds the lead (see
// pgstore.Store.Leads); with a state file, the one server.
func leads(store engine.Store) func(context.Context) bool {
	if s, ok := store.(interface{ Leads(context.Context) bool }); ok {
		return s.Leads
	}
	return nil
}

// The store hands the events of each change, as it commits, to events.
// On PostgreSQL, credentialsChanged is told when another node may have
// changed a credential.
func openStore(ctx context.Context, cfg config.Config, fsys atomicfile.FS, log *slog.Logger, m *metrics.Metrics, events func([]lock.Event), credentialsChanged func()) (engine.Store, error) {
	if cfg.DatabaseURL != "" {
		s, err := openDatabase(ctx, cfg.DatabaseURL, pgstore.Options{History: cfg.History, Events: events, CredentialsChanged: credentialsChanged,
			NewPrimary: func(old, now pgstore.Primary) {
				log.Warn("the database is on a new primary (a failover, or a restored copy): fencing tokens, waiter and event IDs moved past any the old one may have handed out",
					"was", old.String(), "now", now.String())
			}}, log)
		if err != nil {
			return nil, fmt.Errorf("LOCKER_DATABASE_URL: %w", err)
		}
		log.Info("joined the lock table in PostgreSQL", "node", s.Node())
		return s, nil
	}
	s, err := filestore.Open(cfg.StatePath, fsys, filestore.Options{CheckpointBytes: cfg.CheckpointBytes, Log: log, Metrics: m, History: cfg.History, Events: events})
	if err != nil {
		return nil, err
	}
	// Loading leaves garbage a few times the table's size (the file's
	// bytes, the parsed document): give it back to the system now, or the
	// process keeps that size for minutes (230 MB instead of 70 at 100,000
	// locks).
	debug.FreeOSMemory()
	return s, nil
}
