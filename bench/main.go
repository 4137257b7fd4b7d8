// Command bench measures the locker server on this machine: it starts the
// real binary on loopback with a fresh state file, drives it with HTTP
// clients, and prints one table of figures (also written as JSON).
//
// Every figure is the median of several runs, with the min-max beside it so
// that noise is visible. It asserts nothing: it measures.
//
//	go run ./bench -locker ./locker [-runs 3] [-duration 3s] [-json bin/bench-results.json]
//	    [-only parallel,handoff] [-server-env "GOMAXPROCS=1"]
//
// Two reference servers run from this same binary (-noop): a do-nothing
// handler (the ceiling: what HTTP on loopback costs), and the same handler
// that also group-commits a line per request with write+fdatasync before it
// answers (the durable ceiling: what any server that promises "200 means on
// disk" pays here before doing any work of its own).
package main

import (
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is the benchmark's flags.
type config struct {
	locker    string        // the server binary
	migrator  string        // the binary whose locker migrate moves a state file to PostgreSQL
	runs      int           // runs per figure
	duration  time.Duration // length of one throughput run
	clients   int           // clients in the parallel runs
	jsonOut   string        // where to write the figures
	large     []int         // numbers of preloaded locks for the large runs
	listing   int           // locks held in the listing step
	serverEnv []string      // extra environment for the locker server
	database  string        // PostgreSQL for the postgres step; "" skips it

	historyLocks  int   // locks in the history step's state files
	historyEvents []int // events a lock in each of them
}

func run() error {
	noop := flag.Bool("noop", false, "serve a do-nothing HTTP handler on a loopback port (used by the ceiling figures)")
	noopDir := flag.String("noop-durable", "", "with -noop: group-commit a line per request to a file in this directory before answering")
	noopDB := flag.String("noop-database", "", "with -noop: run a one-row UPDATE of bench_row in this database before answering")
	noopWork := flag.Bool("noop-work", false, "with -noop-durable: also decode the body, log two lines and encode a lock-sized reply")
	var cfg config
	flag.StringVar(&cfg.locker, "locker", "./locker", "the locker server binary")
	flag.StringVar(&cfg.migrator, "migrator", "", "the locker binary whose migrate command moves the history step's table to PostgreSQL (default: -locker; one that copies histories, to measure an older server)")
	flag.IntVar(&cfg.runs, "runs", 3, "runs per figure; the median is reported")
	flag.DurationVar(&cfg.duration, "duration", 3*time.Second, "length of one throughput run")
	flag.IntVar(&cfg.clients, "clients", 16, "clients in the parallel, contended and large runs")
	flag.StringVar(&cfg.jsonOut, "json", "bin/bench-results.json", "write the figures here as JSON")
	largeFlag := flag.String("large", "10000,100000", "numbers of other locks held in the large runs")
	flag.IntVar(&cfg.listing, "listing", 1000000, "locks held in the listing step's table")
	serverEnv := flag.String("server-env", "", "extra environment for the locker server, space-separated, e.g. \"GOMAXPROCS=1 GOGC=400\"")
	flag.StringVar(&cfg.database, "database", "postgres://127.0.0.1:5432/test?sslmode=disable", "the PostgreSQL server of the postgres step (each run makes and drops a schema); \"\" skips the step")
	flag.IntVar(&cfg.historyLocks, "history-locks", 100000, "locks in the history step's state files")
	historyFlag := flag.String("history-events", "1,10", "events a lock in each of the history step's state files")
	only := flag.String("only", "", "run only these steps, comma-separated (fsync, serial, parallel, contended, handoff, postgres, failover, large, listing, sets, history, credentials); targets whose figures were not measured are not checked")
	flag.Parse()
	if *noop {
		return serveNoop(*noopDir, *noopDB, *noopWork)
	}
	for _, f := range strings.Split(*largeFlag, ",") {
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n < 0 {
			return fmt.Errorf("-large: %q is not a number of locks", f)
		}
		cfg.large = append(cfg.large, n)
	}
	for _, f := range strings.Split(*historyFlag, ",") {
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n < 0 {
			return fmt.Errorf("-history-events: %q is not a number of events", f)
		}
		cfg.historyEvents = append(cfg.historyEvents, n)
	}
	cfg.serverEnv = strings.Fields(*serverEnv)
	locker, err := filepath.Abs(cfg.locker)
	if err != nil {
		return err
	}
	cfg.locker = locker
	if cfg.migrator, err = filepath.Abs(cmp.Or(cfg.migrator, cfg.locker)); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "locker-bench")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	// Ctrl-C must not leave tens of megabytes of state files behind.
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-interrupted
		fmt.Fprintf(os.Stderr, "bench: interrupted; removing %s\n", dir)
		_ = os.RemoveAll(dir)
		os.Exit(130)
	}()

	r := &report{Machine: machine(), Runs: cfg.runs, Duration: cfg.duration.String(), Clients: cfg.clients}
	steps := []struct {
		name string
		fn   func(config, string, *report) error
	}{
		{"fsync", benchFsync},
		{"serial", benchSerial},
		{"parallel (with the ceilings)", benchParallel},
		{"contended", benchContended},
		{"handoff", benchHandoff},
		{"postgres (1 and 3 nodes, pgbench)", benchPostgres},
		{"failover (a primary and its standby: the time to serve again, and synchronous replication's cost)", benchFailover},
		{"large and restart", benchLarge},
		{"listing (of a table of -listing locks)", benchListing},
		{"sets (of two locks, against one)", benchSets},
		{"history (restarts with histories; 1,000 idle streams and a stuck one)", benchHistory},
		{"credentials (the parallel load through AUTH_USER, and through one of 1,000 credentials)", benchCredentials},
	}
	var names, chosen []string
	for _, s := range steps {
		names = append(names, strings.Fields(s.name)[0])
	}
	if *only != "" {
		chosen = strings.Split(*only, ",")
		for _, c := range chosen {
			if !slices.Contains(names, c) {
				return fmt.Errorf("-only: no step %q; the steps are %s", c, strings.Join(names, ", "))
			}
		}
	}
	for i, s := range steps {
		if chosen != nil && !slices.Contains(chosen, names[i]) {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s...\n", s.name)
		if err := s.fn(cfg, dir, r); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	r.check()
	r.print(os.Stdout)
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.jsonOut), 0o750); err != nil {
		return err
	}
	return os.WriteFile(cfg.jsonOut, append(data, '\n'), 0o600)
}

// machine describes where the figures were measured.
func machine() string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores, %s/%s, %s", cpu, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// median returns the median of xs (the mean of the middle two when even).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the p-th percentile (0-100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// figure is one measured quantity over several runs.
type figure struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Unit   string    `json:"unit"`
	Runs   []float64 `json:"runs"`
}

func newFigure(unit string, runs []float64) figure {
	return figure{Median: median(runs), Min: slices.Min(runs), Max: slices.Max(runs), Unit: unit, Runs: runs}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r *report) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "Locker benchmark on %s\n%d runs per figure, %s each, %d clients in parallel runs; median [min-max]\n\n",
		r.Machine, r.Runs, r.Duration, r.Clients)
	fmt.Fprintln(tw, "figure\tvalue\tmin-max\t")
	for _, row := range r.rows() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", row[0], row[1], row[2])
	}
	_ = tw.Flush() // stdout: nowhere else to report
	fmt.Fprintln(w)
	fmt.Fprintln(w, "targets (ratios within this run):")
	for _, t := range r.Targets {
		mark := "MET"
		if !t.Met {
			mark = "MISSED"
		}
		fmt.Fprintf(w, "  %-6s %s: %s\n", mark, t.Name, t.Detail)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
}
