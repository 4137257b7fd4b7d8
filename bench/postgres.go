package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgFigures are the PostgreSQL store's figures, with pgbench on the same
// database as the reference.
type pgFigures struct {
	Database        string `json:"database"`
	PgbenchTPS      figure `json:"pgbench_tps"`
	CeilingRPS      figure `json:"ceiling_rps"` // a no-op HTTP server running pgbench's UPDATE per request
	OneNodeRPS      figure `json:"one_node_rps"`
	OneNodeP99Ms    figure `json:"one_node_p99_ms"`
	ThreeNodesRPS   figure `json:"three_nodes_rps"`
	ThreeNodesP99Ms figure `json:"three_nodes_p99_ms"`
	// Where the time goes: the nodes' CPU and PostgreSQL's (its
	// processes') per request, and the share of the machine left idle.
	OneNodeCPUus      figure `json:"one_node_cpu_us_per_request"`
	OneNodeDBCPUus    figure `json:"one_node_postgres_cpu_us_per_request"`
	OneNodeIdle       figure `json:"one_node_idle_percent"`
	ThreeNodesCPUus   figure `json:"three_nodes_cpu_us_per_request"`
	ThreeNodesDBCPUus figure `json:"three_nodes_postgres_cpu_us_per_request"`
	ThreeNodesIdle    figure `json:"three_nodes_idle_percent"`
	HandoffP50Ms      figure `json:"handoff_p50_ms"`
	HandoffP99Ms      figure `json:"handoff_p99_ms"`
}

// benchPostgres runs the parallel workload against one and three nodes on
// cfg.database, pgbench's one-row UPDATE at the same concurrency, and the
// handoff from a holder on one node to a waiter on another. Each run has a
// schema of its own.
func benchPostgres(cfg config, dir string, r *report) error {
	if cfg.database == "" {
		r.Notes = append(r.Notes, "PostgreSQL figures not measured: -database is empty")
		return nil
	}
	pg := &pgFigures{Database: redact(cfg.database)}
	var pgbench, ceiling, one, three, p50s, p99s []float64
	var oneRes, threeRes []loadResult
	for range cfg.runs {
		tps, err := runPgbench(cfg, dir)
		if err != nil {
			return fmt.Errorf("pgbench: %w", err)
		}
		pgbench = append(pgbench, tps)
		rps, err := pgCeiling(cfg)
		if err != nil {
			return fmt.Errorf("the database ceiling: %w", err)
		}
		ceiling = append(ceiling, rps)
		for _, nodes := range []int{1, 3} {
			res, ds, err := pgRun(cfg, nodes)
			if err != nil {
				return fmt.Errorf("%d nodes: %w", nodes, err)
			}
			if nodes == 1 {
				oneRes, one = append(oneRes, res), append(one, res.perSecond(res.requests))
			} else {
				threeRes, three = append(threeRes, res), append(three, res.perSecond(res.requests))
				p50s, p99s = append(p50s, ms(percentile(ds, 50))), append(p99s, ms(percentile(ds, 99)))
			}
		}
	}
	pg.PgbenchTPS, pg.CeilingRPS = newFigure("tps", pgbench), newFigure("req/s", ceiling)
	pg.OneNodeRPS, pg.OneNodeP99Ms = newFigure("req/s", one), latencyFigure(oneRes, 99)
	pg.ThreeNodesRPS, pg.ThreeNodesP99Ms = newFigure("req/s", three), latencyFigure(threeRes, 99)
	pg.OneNodeCPUus, pg.ThreeNodesCPUus = serverCPUFigure(oneRes), serverCPUFigure(threeRes)
	pg.OneNodeDBCPUus, pg.ThreeNodesDBCPUus = databaseCPUFigure(oneRes), databaseCPUFigure(threeRes)
	pg.OneNodeIdle, pg.ThreeNodesIdle = idleFigure(oneRes), idleFigure(threeRes)
	pg.HandoffP50Ms, pg.HandoffP99Ms = newFigure("ms", p50s), newFigure("ms", p99s)
	r.Postgres = pg
	return nil
}

// pgRun starts nodes servers on a new schema, runs the parallel workload
// over them, then (with more than one) the handoff between two of them.
func pgRun(cfg config, nodes int) (loadResult, []time.Duration, error) {
	db, drop, err := newSchema(cfg.database)
	if err != nil {
		return loadResult{}, nil, err
	}
	defer drop()
	var procs []*process
	defer func() {
		for _, p := range procs {
			_ = p.stop()
		}
	}()
	var bases []string
	for range nodes {
		p, err := start(cfg.locker, nil, append([]string{"PORT=0", "LOCKER_DATABASE_URL=" + db}, cfg.serverEnv...))
		if err != nil {
			return loadResult{}, nil, err
		}
		procs = append(procs, p)
		bases = append(bases, p.url)
	}
	nodesCPU := func() (sum float64) {
		for _, p := range procs {
			sum += p.cpuSeconds()
		}
		return sum
	}
	cpu0, db0 := nodesCPU(), postgresCPU()
	idle0, all0 := machineTicks()
	res, err := loop(bases, cfg.clients, cfg.duration, ownLock("pg"))
	res.serverCPU, res.databaseCPU = nodesCPU()-cpu0, postgresCPU()-db0
	idle1, all1 := machineTicks()
	res.idle = 100 * (idle1 - idle0) / max(all1-all0, 1)
	if err != nil || nodes == 1 {
		return res, nil, err
	}
	ds, err := handoffRounds(procs[0].url, procs[1].url, 100)
	return res, ds, err
}

// pgCeiling runs the parallel workload against this binary started with
// -noop -noop-database: an HTTP server that runs pgbench's one-row UPDATE
// per request, through pgx, and nothing else.
func pgCeiling(cfg config) (float64, error) {
	db, drop, err := benchSchema(cfg.database)
	if err != nil {
		return 0, err
	}
	defer drop()
	res, err := noopRun(cfg, "-noop-database", db)
	return res.perSecond(res.requests), err
}

// benchSchema makes a new schema with pgbench's table of the reference
// figures in it (1,000 rows), and returns its URL and how to drop it.
func benchSchema(database string) (string, func(), error) {
	db, drop, err := newSchema(database)
	if err != nil {
		return "", nil, err
	}
	if err := benchTable(db); err != nil {
		drop()
		return "", nil, err
	}
	return db, drop, nil
}

// benchTable makes pgbench's table of the reference figures: 1,000 rows.
func benchTable(db string) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE TABLE bench_row (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO bench_row SELECT g, 0 FROM generate_series(1, 1000) g")
	return err
}

// runPgbench runs pgbench's one-row UPDATE (-b simple-update would be
// three statements) with cfg.clients clients on a new schema.
func runPgbench(cfg config, dir string) (float64, error) {
	db, drop, err := benchSchema(cfg.database)
	if err != nil {
		return 0, err
	}
	defer drop()
	script := filepath.Join(dir, "one-row-update.sql")
	if err := os.WriteFile(script, []byte("\\set id random(1, 1000)\nUPDATE bench_row SET n = n + 1 WHERE id = :id;\n"), 0o600); err != nil {
		return 0, err
	}
	u, _ := url.Parse(db)
	schema := u.Query().Get("search_path")
	q := u.Query()
	q.Del("search_path")
	q.Set("options", "-csearch_path="+schema)
	u.RawQuery = q.Encode()
	out, err := exec.Command("pgbench", "-n", "-f", script, "-c", strconv.Itoa(cfg.clients), "-j", "2",
		"-T", strconv.Itoa(max(1, int(cfg.duration.Seconds()))), u.String()).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	m := regexp.MustCompile(`tps = ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no tps in pgbench's output: %s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// newSchema makes an empty schema on database and returns a URL whose
// search_path is that schema, and a function that drops it.
func newSchema(database string) (string, func(), error) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, database)
	if err != nil {
		return "", nil, fmt.Errorf("connecting to %s: %w (-database names the server, or -database '' to skip)", redact(database), err)
	}
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	schema := "locker_bench_" + hex.EncodeToString(suffix)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		conn.Close(ctx)
		return "", nil, err
	}
	drop := func() {
		_, _ = conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
		conn.Close(ctx)
	}
	u, err := url.Parse(database)
	if err != nil {
		drop()
		return "", nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), drop, nil
}

// redact hides a password in a database URL.
func redact(database string) string {
	u, err := url.Parse(database)
	if err != nil {
		return "(a database URL)"
	}
	return u.Redacted()
}
