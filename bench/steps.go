package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// benchFsync measures write+fsync of a small file: the floor for a durable
// change on this disk.
func benchFsync(cfg config, dir string, r *report) error {
	var runs []float64
	for range cfg.runs {
		f, err := os.Create(filepath.Join(dir, "fsync-probe")) // in the benchmark's own temporary directory
		if err != nil {
			return err
		}
		var ds []time.Duration
		for range 200 {
			t0 := time.Now()
			if _, err := f.Write([]byte("0badc0de {\"seq\":1,\"last_token\":1,\"locks\":{}}\n")); err != nil {
				return err
			}
			if err := f.Sync(); err != nil {
				return err
			}
			ds = append(ds, time.Since(t0))
		}
		_ = f.Close()
		runs = append(runs, ms(percentile(ds, 50)))
	}
	r.FsyncMs = newFigure("ms", runs)
	return os.Remove(filepath.Join(dir, "fsync-probe"))
}

// runOnce runs work with clients against the server p once, then stops it
// with stop.
func runOnce(cfg config, p *process, clients int, work func(c *client, id int, lat *[]time.Duration) (int, error), stop func() error) (loadResult, error) {
	cpu0 := p.cpuSeconds()
	out, err := loop([]string{p.url}, clients, cfg.duration, work)
	out.serverCPU = p.cpuSeconds() - cpu0
	if stopErr := stop(); err == nil {
		err = stopErr
	}
	return out, err
}

// throughput runs a workload cfg.runs times against a fresh server each
// time and returns requests/s, p50 and p99.
func throughput(cfg config, dir string, clients int, work func(c *client, id int, lat *[]time.Duration) (int, error)) (rps, p50, p99 figure, res []loadResult, err error) {
	for i := range cfg.runs {
		out, err := lockerRun(cfg, dir, i, clients, work)
		if err != nil {
			return rps, p50, p99, nil, err
		}
		res = append(res, out)
	}
	return rpsFigure(res), latencyFigure(res, 50), latencyFigure(res, 99), res, nil
}

// lockerRun runs work once against a fresh locker server.
func lockerRun(cfg config, dir string, i, clients int, work func(c *client, id int, lat *[]time.Duration) (int, error)) (loadResult, error) {
	runDir := filepath.Join(dir, fmt.Sprintf("run-%d-%d", time.Now().UnixNano(), i))
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return loadResult{}, err
	}
	defer func() { _ = os.RemoveAll(runDir) }()
	p, _, err := startLocker(cfg, runDir)
	if err != nil {
		return loadResult{}, err
	}
	return runOnce(cfg, p, clients, work, p.stop)
}

// noopRun runs the parallel workload once against this binary started with
// -noop and args.
func noopRun(cfg config, args ...string) (loadResult, error) {
	return noopRunWith(cfg, cfg.clients, args...)
}

// noopRunWith is noopRun with clients clients.
func noopRunWith(cfg config, clients int, args ...string) (loadResult, error) {
	self, err := os.Executable()
	if err != nil {
		return loadResult{}, err
	}
	p, err := start(self, append([]string{"-noop"}, args...), nil)
	if err != nil {
		return loadResult{}, err
	}
	return runOnce(cfg, p, clients, ownLock("parallel"), p.kill)
}

func rpsFigure(res []loadResult) figure {
	return perRun(res, "req/s", func(l loadResult) float64 { return l.perSecond(l.requests) })
}

func latencyFigure(res []loadResult, p float64) figure {
	return perRun(res, "ms", func(l loadResult) float64 { return ms(percentile(l.latencies, p)) })
}

func databaseCPUFigure(res []loadResult) figure {
	return perRun(res, "µs CPU/req", func(l loadResult) float64 { return 1e6 * l.databaseCPU / float64(l.requests) })
}

func idleFigure(res []loadResult) figure {
	return perRun(res, "% idle", func(l loadResult) float64 { return l.idle })
}

func serverCPUFigure(res []loadResult) figure {
	return perRun(res, "µs CPU/req", func(l loadResult) float64 { return 1e6 * l.serverCPU / float64(l.requests) })
}

func clientCPUFigure(res []loadResult) figure {
	return perRun(res, "µs CPU/req", func(l loadResult) float64 { return 1e6 * l.clientCPU / float64(l.requests) })
}

// perRun is the figure of f over each run.
func perRun(res []loadResult, unit string, f func(loadResult) float64) figure {
	xs := make([]float64, len(res))
	for i, l := range res {
		xs[i] = f(l)
	}
	return newFigure(unit, xs)
}

// benchSerial runs one client against the durable do-nothing server, the
// same doing the work the locker must keep (see keptWork), and the
// locker, the three in turn in each run.
func benchSerial(cfg config, dir string, r *report) error {
	var durable, working, locker []loadResult
	for i := range cfg.runs {
		durableDir := filepath.Join(dir, fmt.Sprintf("noop-durable-serial-%d", i))
		if err := os.MkdirAll(durableDir, 0o750); err != nil {
			return err
		}
		res, err := noopRunWith(cfg, 1, "-noop-durable", durableDir)
		_ = os.RemoveAll(durableDir)
		if err != nil {
			return fmt.Errorf("durable ceiling, 1 client: %w", err)
		}
		durable = append(durable, res)
		if err := os.MkdirAll(durableDir, 0o750); err != nil {
			return err
		}
		res, err = noopRunWith(cfg, 1, "-noop-durable", durableDir, "-noop-work")
		_ = os.RemoveAll(durableDir)
		if err != nil {
			return fmt.Errorf("durable ceiling with the kept work, 1 client: %w", err)
		}
		working = append(working, res)
		if res, err = lockerRun(cfg, dir, i, 1, ownLock("serial")); err != nil {
			return err
		}
		locker = append(locker, res)
	}
	r.DurableOneRPS, r.WorkingOneRPS = rpsFigure(durable), rpsFigure(working)
	r.SerialRPS, r.SerialP50Ms, r.SerialP99Ms = rpsFigure(locker), latencyFigure(locker, 50), latencyFigure(locker, 99)
	return nil
}

// benchParallel runs the parallel workload (16 clients, each on its own
// lock) against the do-nothing server (the ceiling), the durable
// do-nothing server (see serveNoop) and the locker, the three in turn in
// each run, so that the figures the targets compare are measured as close
// together in time as they can be on a shared machine.
func benchParallel(cfg config, dir string, r *report) error {
	var ceiling, durable, working, locker []loadResult
	for i := range cfg.runs {
		res, err := noopRun(cfg)
		if err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
		ceiling = append(ceiling, res)

		durableDir := filepath.Join(dir, fmt.Sprintf("noop-durable-%d", i))
		if err := os.MkdirAll(durableDir, 0o750); err != nil {
			return err
		}
		res, err = noopRun(cfg, "-noop-durable", durableDir)
		_ = os.RemoveAll(durableDir)
		if err != nil {
			return fmt.Errorf("durable ceiling: %w", err)
		}
		durable = append(durable, res)

		if err := os.MkdirAll(durableDir, 0o750); err != nil {
			return err
		}
		res, err = noopRun(cfg, "-noop-durable", durableDir, "-noop-work")
		_ = os.RemoveAll(durableDir)
		if err != nil {
			return fmt.Errorf("durable ceiling with the kept work: %w", err)
		}
		working = append(working, res)

		if res, err = lockerRun(cfg, dir, i, cfg.clients, ownLock("parallel")); err != nil {
			return err
		}
		locker = append(locker, res)
	}
	r.CeilingRPS, r.CeilingCPUus, r.ClientCPUus = rpsFigure(ceiling), serverCPUFigure(ceiling), clientCPUFigure(ceiling)
	r.DurableRPS, r.DurableCPUus = rpsFigure(durable), serverCPUFigure(durable)
	r.WorkingRPS, r.WorkingCPUus = rpsFigure(working), serverCPUFigure(working)
	r.ParallelRPS, r.ParallelP50Ms, r.ParallelP99Ms = rpsFigure(locker), latencyFigure(locker, 50), latencyFigure(locker, 99)
	r.ParallelCPUus = serverCPUFigure(locker)
	return nil
}

// benchContended has every client, each with its own key, fight for one
// lock, and checks that no two ever held it at once.
func benchContended(cfg config, dir string, r *report) error {
	var holders, overlaps atomic.Int64
	work := func(c *client, id int, lat *[]time.Duration) (int, error) {
		body := fmt.Sprintf(`{"key":"client-%d"}`, id)
		status, err := timed(c, lat, "PUT", "/lock/contended", body, 200, 423)
		if err != nil || status == 423 {
			return 0, err
		}
		if holders.Add(1) != 1 {
			overlaps.Add(1)
		}
		holders.Add(-1)
		_, err = timed(c, lat, "DELETE", "/lock/contended", body, 200)
		return 1, err
	}
	rps, _, _, res, err := throughput(cfg, dir, cfg.clients, work)
	if err != nil {
		return err
	}
	var gps []float64
	for _, x := range res {
		gps = append(gps, x.perSecond(x.grants))
	}
	r.ContendedRPS, r.ContendedGPS, r.Overlaps = rps, newFigure("grants/s", gps), int(overlaps.Load())
	return nil
}

// benchHandoff measures the time from a release's 200 to the 200 of the
// request that was waiting for the lock.
func benchHandoff(cfg config, dir string, r *report) error {
	var p50s, p99s []float64
	for i := range cfg.runs {
		runDir := filepath.Join(dir, fmt.Sprintf("handoff-%d", i))
		if err := os.MkdirAll(runDir, 0o750); err != nil {
			return err
		}
		p, _, err := startLocker(cfg, runDir)
		if err != nil {
			return err
		}
		ds, err := handoffRounds(p.url, p.url, 200)
		stopErr := p.stop()
		if err != nil {
			return err
		}
		if stopErr != nil {
			return stopErr
		}
		p50s = append(p50s, ms(percentile(ds, 50)))
		p99s = append(p99s, ms(percentile(ds, 99)))
	}
	r.HandoffP50Ms, r.HandoffP99Ms = newFigure("ms", p50s), newFigure("ms", p99s)
	return nil
}

// handoffRounds measures, rounds times, from a holder's release to the
// answer of the request waiting for the lock; the holder and the waiter
// take turns, on servers a and b.
func handoffRounds(a, b string, rounds int) ([]time.Duration, error) {
	holder, waiter := newClient(a), newClient(b)
	probe := newClient(a)
	keys := [2]string{`{"key":"a"}`, `{"key":"b"}`}
	if status, err := holder.do("PUT", "/lock/handoff", keys[0]); err != nil || status != 200 {
		return nil, fmt.Errorf("first PUT: %d %v", status, err)
	}
	var ds []time.Duration
	for i := range rounds {
		hk, wk := keys[i%2], keys[(i+1)%2]
		got := make(chan time.Time, 1)
		failed := make(chan error, 1)
		go func() {
			status, err := waiter.do("PUT", "/lock/handoff?wait=30s", wk)
			if err != nil || status != 200 {
				failed <- fmt.Errorf("waiting PUT: %d %v", status, err)
				return
			}
			got <- time.Now()
		}()
		// Release only once the waiter is in the queue.
		for {
			status, body, err := probe.get("/lock/handoff")
			if err != nil || status != 200 {
				return nil, fmt.Errorf("GET: %d %v", status, err)
			}
			if strings.Contains(body, `"waiting":[{`) {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		if status, err := holder.do("DELETE", "/lock/handoff", hk); err != nil || status != 200 {
			return nil, fmt.Errorf("DELETE: %d %v", status, err)
		}
		released := time.Now()
		select {
		case t := <-got:
			ds = append(ds, max(t.Sub(released), 0))
		case err := <-failed:
			return nil, err
		}
		holder, waiter = waiter, holder
	}
	return ds, nil
}

// get sends a GET and returns the status and body.
func (c *client) get(path string) (int, string, error) {
	resp, err := c.http.Get(c.base + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// benchLarge runs the parallel workload with many other locks held, then
// measures a restart with the most of them.
func benchLarge(cfg config, dir string, r *report) error {
	var mu sync.Mutex
	largeDir := filepath.Join(dir, "large")
	if err := os.MkdirAll(largeDir, 0o750); err != nil {
		return err
	}
	p, state, err := startLocker(cfg, largeDir)
	if err != nil {
		return err
	}
	held := 0
	for _, n := range cfg.large {
		fmt.Fprintf(os.Stderr, "bench: preloading %d locks...\n", n)
		if err := preload(p.url, held, n, cfg.clients); err != nil {
			_ = p.stop()
			return err
		}
		held = n
		lf := largeFigures{Locks: n}
		var rs, p99s, rss []float64
		for range cfg.runs {
			res, err := loop([]string{p.url}, cfg.clients, cfg.duration, ownLock("large"))
			if err != nil {
				_ = p.stop()
				return err
			}
			rs = append(rs, res.perSecond(res.requests))
			p99s = append(p99s, ms(percentile(res.latencies, 99)))
			rss = append(rss, p.rssMB())
		}
		lf.RPS, lf.P99Ms, lf.RSSMB = newFigure("req/s", rs), newFigure("ms", p99s), newFigure("MB", rss)
		lf.StateBytes = fileSize(state) + fileSize(state+".journal")
		mu.Lock()
		r.Large = append(r.Large, lf)
		mu.Unlock()
	}
	if err := p.stop(); err != nil {
		return err
	}

	// Restart: from exec to the first answer, with every lock in the file;
	// then the memory it holds once it has served a parallel run.
	var runs, rss []float64
	for range cfg.runs {
		t0 := time.Now()
		p, _, err := startLocker(cfg, largeDir)
		if err != nil {
			return err
		}
		c := newClient(p.url)
		if status, _, err := c.get("/lock/restart-probe"); err != nil || status != 200 {
			_ = p.stop()
			return fmt.Errorf("first GET after restart: %d %v", status, err)
		}
		runs = append(runs, ms(time.Since(t0)))
		if _, err := loop([]string{p.url}, cfg.clients, cfg.duration, ownLock("restarted")); err != nil {
			_ = p.stop()
			return err
		}
		rss = append(rss, p.rssMB())
		if err := p.stop(); err != nil {
			return err
		}
	}
	r.RestartMs, r.RestartLocks, r.RestartRSSMB = newFigure("ms", runs), held, newFigure("MB", rss)
	return nil
}

func fileSize(path string) int64 {
	info, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return info.Size()
}
