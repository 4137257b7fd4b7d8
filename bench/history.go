package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/statefile"
)

// historyFigures are what histories cost: a restart with -history-locks
// locks, each with a history of each of -history-events events, and the
// p99 of a change at cfg.clients clients with and without a thousand idle
// streams and one that never reads.
type historyFigures struct {
	Locks         int            `json:"locks"`
	Restarts      []historyPoint `json:"restarts"`
	QuietP99Ms    figure         `json:"quiet_p99_ms"`
	FollowedP99Ms figure         `json:"followed_p99_ms"`
	QuietRPS      figure         `json:"quiet_rps"`
	FollowedRPS   figure         `json:"followed_rps"`
	// The control: as many idle connections that follow nothing (each
	// after one GET /locks, kept alive), so that what a stream costs is
	// told apart from what an open connection costs.
	ConnectedP99Ms figure `json:"connected_p99_ms"`
	ConnectedRPS   figure `json:"connected_rps"`
	IdleStreams    int    `json:"idle_streams"`
	StuckStreamCut bool   `json:"stuck_stream_cut"` // the server ended the stream that never read
	// Streams resumed from the first of 200,000 kept events (the history
	// of ResumedLocks locks, two events each) beside the parallel
	// workload, on the file store and on one PostgreSQL node (the table
	// moved there by locker migrate; without -database, not measured).
	ResumedLocks   int            `json:"resumed_locks"`
	ResumedStreams int            `json:"resumed_streams"`
	Resumed        resumedFigures `json:"resumed"`
	PGResumed      resumedFigures `json:"pg_resumed"`
}

// historyPoint is a restart with Events events a lock.
type historyPoint struct {
	Events    int     `json:"events_per_lock"`
	StateMB   float64 `json:"state_file_mb"`
	RestartMs figure  `json:"restart_ms"`
	RSSMB     figure  `json:"rss_mb"`
}

// benchHistory measures restarts from state files with histories, then
// the streams' cost.
func benchHistory(cfg config, dir string, r *report) error {
	h := &historyFigures{Locks: cfg.historyLocks, IdleStreams: 1000}
	for _, events := range cfg.historyEvents {
		pt, err := historyRestarts(cfg, dir, cfg.historyLocks, events)
		if err != nil {
			return err
		}
		h.Restarts = append(h.Restarts, pt)
	}
	var quiet, followed, connected []loadResult
	for i := range cfg.runs {
		res, err := lockerRun(cfg, dir, 100+3*i, cfg.clients, ownLock("quiet"))
		if err != nil {
			return err
		}
		quiet = append(quiet, res)
		res, cut, err := followedRun(cfg, dir, 101+3*i, h.IdleStreams, true)
		if err != nil {
			return err
		}
		followed = append(followed, res)
		h.StuckStreamCut = cut
		if res, _, err = followedRun(cfg, dir, 102+3*i, h.IdleStreams, false); err != nil {
			return err
		}
		connected = append(connected, res)
	}
	h.QuietP99Ms, h.FollowedP99Ms, h.ConnectedP99Ms = latencyFigure(quiet, 99), latencyFigure(followed, 99), latencyFigure(connected, 99)
	h.QuietRPS, h.FollowedRPS, h.ConnectedRPS = rpsFigure(quiet), rpsFigure(followed), rpsFigure(connected)
	h.ResumedLocks, h.ResumedStreams = 100000, 4
	if err := resumedRuns(cfg, dir, h); err != nil {
		return err
	}
	r.History = h
	return nil
}

// resumedFigures are the parallel workload's p99 and throughput with the
// resumed streams and, alternating with them, on the same server without
// any, and how long each stream took to send its first event and all.
type resumedFigures struct {
	P99Ms     figure `json:"p99_ms"`
	RPS       figure `json:"rps"`
	FirstMs   figure `json:"first_event_ms"`
	AllMs     figure `json:"all_events_ms"`
	IdleP99Ms figure `json:"idle_p99_ms"`
	IdleRPS   figure `json:"idle_rps"`
}

// resumedRuns measures h's resumed figures on the file store, then on
// PostgreSQL.
func resumedRuns(cfg config, dir string, h *historyFigures) error {
	runDir := filepath.Join(dir, "resumed")
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return err
	}
	state := filepath.Join(runDir, "locks.yml")
	fmt.Fprintf(os.Stderr, "bench: writing %d locks with 2 events each...\n", h.ResumedLocks)
	if err := writeHistories(state, h.ResumedLocks, 2); err != nil {
		return err
	}
	cfg.serverEnv = append([]string{"LOCKER_HISTORY=2"}, cfg.serverEnv...)
	var err error
	h.Resumed, err = resumedSeries(cfg, h, func() (*process, error) {
		p, _, err := startLocker(cfg, runDir)
		return p, err
	}, (*process).kill) // a clean stop would rewrite the file
	if err != nil || cfg.database == "" {
		return err
	}
	db, drop, err := newSchema(cfg.database)
	if err != nil {
		return err
	}
	defer drop()
	fmt.Fprintf(os.Stderr, "bench: moving them to PostgreSQL...\n")
	if out, err := exec.Command(cfg.migrator, "migrate", "--from", state, "--to", db).CombinedOutput(); err != nil {
		return fmt.Errorf("locker migrate: %w\n%s", err, out)
	}
	h.PGResumed, err = resumedSeries(cfg, h, func() (*process, error) {
		return start(cfg.locker, nil, append([]string{"PORT=0", "LOCKER_DATABASE_URL=" + db}, cfg.serverEnv...))
	}, (*process).stop)
	return err
}

// resumedSeries runs the workload cfg.runs times without streams and with
// h.ResumedStreams, alternating, each on a server started by open and
// ended by end.
func resumedSeries(cfg config, h *historyFigures, open func() (*process, error), end func(*process) error) (resumedFigures, error) {
	var alone, resumed []loadResult
	var first, all []float64
	for range cfg.runs {
		for _, streams := range []int{0, h.ResumedStreams} {
			p, err := open()
			if err != nil {
				return resumedFigures{}, err
			}
			res, f, a, err := resumedRun(cfg, p, streams, 2*h.ResumedLocks)
			if err = errors.Join(err, end(p)); err != nil {
				return resumedFigures{}, err
			}
			if streams == 0 {
				alone = append(alone, res)
				continue
			}
			resumed = append(resumed, res)
			first, all = append(first, f...), append(all, a...)
		}
	}
	return resumedFigures{P99Ms: latencyFigure(resumed, 99), RPS: rpsFigure(resumed), FirstMs: newFigure("ms", first), AllMs: newFigure("ms", all),
		IdleP99Ms: latencyFigure(alone, 99), IdleRPS: rpsFigure(alone)}, nil
}

// resumedRun opens streams GETs of /events with Last-Event-ID: 0 on p,
// each read as fast as it comes, and runs the parallel workload
// meanwhile. It returns the workload's result and, for each stream, the
// milliseconds to its first event and to its kept-th.
func resumedRun(cfg config, p *process, streams, kept int) (loadResult, []float64, []float64, error) {
	type times struct {
		first, all float64
		err        error
	}
	done := make(chan times, streams)
	start := time.Now()
	for range streams {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, p.url+"/events", nil)
			req.Header.Set("Last-Event-ID", "0")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- times{err: err}
				return
			}
			defer resp.Body.Close()
			var t times
			n := 0
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() && sc.Text() != ": following" { // the backlog is sent
				if bytes.HasPrefix(sc.Bytes(), []byte("id: ")) {
					if n++; n == 1 {
						t.first = ms(time.Since(start))
					}
				}
			}
			t.all = ms(time.Since(start))
			if n < kept {
				t.err = fmt.Errorf("a resumed stream sent %d of %d events before it said it follows: %v", n, kept, sc.Err())
			}
			done <- t
		}()
	}
	res, err := runOnce(cfg, p, cfg.clients, ownLock("resumed"), func() error { return nil })
	var first, all []float64
	for range streams {
		t := <-done
		err = errors.Join(err, t.err)
		first, all = append(first, t.first), append(all, t.all)
	}
	return res, first, all, err
}

// historyRestarts writes a state file of locks locks, each held and with
// events events in its history, as the server writes one, and measures
// restarts from it: from exec to the first answer, and the RSS after a
// look at a history.
func historyRestarts(cfg config, dir string, locks, events int) (historyPoint, error) {
	runDir := filepath.Join(dir, fmt.Sprintf("history-%d", events))
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return historyPoint{}, err
	}
	state := filepath.Join(runDir, "locks.yml")
	fmt.Fprintf(os.Stderr, "bench: writing %d locks with %d events each...\n", locks, events)
	if err := writeHistories(state, locks, events); err != nil {
		return historyPoint{}, err
	}
	pt := historyPoint{Events: events, StateMB: float64(fileSize(state)) / 1e6}
	env := cfg
	env.serverEnv = append([]string{"LOCKER_HISTORY=" + strconv.Itoa(max(events, 1))}, cfg.serverEnv...)
	var restarts, rss []float64
	for range cfg.runs {
		t0 := time.Now()
		p, _, err := startLocker(env, runDir)
		if err != nil {
			return historyPoint{}, err
		}
		c := newClient(p.url)
		status, _, err := c.get("/lock/restart-probe")
		if err != nil || status != http.StatusOK {
			_ = p.stop()
			return historyPoint{}, fmt.Errorf("first GET after restart: %d %v", status, err)
		}
		restarts = append(restarts, ms(time.Since(t0)))
		if status, body, err := c.get("/history/lock-7?limit=1000"); err != nil || status != http.StatusOK || bytes.Count([]byte(body), []byte(`"id":`)) != events {
			_ = p.stop()
			return historyPoint{}, fmt.Errorf("GET /history/lock-7 after the restart: %d %v, want %d events", status, err, events)
		}
		rss = append(rss, p.rssMB())
		if err := p.kill(); err != nil { // a clean stop would rewrite the file
			return historyPoint{}, err
		}
	}
	pt.RestartMs, pt.RSSMB = newFigure("ms", restarts), newFigure("MB", rss)
	return pt, nil
}

// writeHistories writes a state file without a seal (so that no journal
// need be beside it): locks held locks, each with a history of events
// events, a taking and a release in turn, as CI jobs leave them.
func writeHistories(path string, locks, events int) error {
	st := statefile.State{Locks: map[string]lock.Lock{}}
	at := time.Now().UTC().Add(-24 * time.Hour).Truncate(time.Millisecond)
	for i := range locks {
		name := "lock-" + strconv.Itoa(i)
		for e := range events {
			st.LastEvent++
			ev := lock.Event{ID: st.LastEvent, Lock: name, At: at.Add(time.Duration(e) * time.Minute), Kind: lock.Taken,
				Holder: "deploy-" + strconv.Itoa(e/2), Key: "release-" + strconv.Itoa(e/2), Token: uint64(i*events + e + 1), Counts: 1,
				Note: "https://ci.example.com/teams/main/pipelines/deploy/jobs/prod/builds/" + strconv.Itoa(e/2)}
			if e%2 == 1 {
				ev.Kind, ev.Note, ev.Held = lock.Released, "", lock.Duration(time.Minute)
			}
			st.History = append(st.History, ev)
		}
		st.LastToken++
		st.Locks[name] = lock.Lock{Key: "k", Token: st.LastToken, AcquiredAt: at,
			Holders: []lock.Holder{{Name: "job", Hold: lock.Hold{Count: 1, Since: at}}}}
	}
	st.LastToken += uint64(locks * events)
	var buf bytes.Buffer
	if err := statefile.Encode(&buf, st); err != nil {
		return err
	}
	data := buf.Bytes()
	data = data[:bytes.LastIndexByte(data[:len(data)-1], '\n')+1] // without the seal
	return os.WriteFile(path, data, 0o600)
}

// followedRun runs the parallel workload on a fresh server that idle
// streams follow (each a lock no one changes) and one stream that never
// reads follows whole. It reports whether the server cut that one off.
// Without streams, the idle connections each GET /locks once and stay
// open, and there is no stuck one.
func followedRun(cfg config, dir string, i, idle int, streams bool) (loadResult, bool, error) {
	runDir := filepath.Join(dir, fmt.Sprintf("run-%d", i))
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return loadResult{}, false, err
	}
	p, _, err := startLocker(cfg, runDir)
	if err != nil {
		return loadResult{}, false, err
	}
	host := p.url[len("http://"):]
	var conns []net.Conn
	closeAll := func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
	for s := range idle + 1 {
		path := "/events?lock=quiet-" + strconv.Itoa(s)
		switch {
		case !streams && s == idle:
			continue
		case !streams:
			path = "/locks"
		case s == idle:
			path = "/events" // the stuck one
		}
		c, err := net.Dial("tcp", host)
		if err != nil {
			closeAll()
			_ = p.stop()
			return loadResult{}, false, err
		}
		conns = append(conns, c)
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
			closeAll()
			_ = p.stop()
			return loadResult{}, false, err
		}
		if s < idle { // the idle ones read the answer's head, then wait
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil && !streams {
				_, err = io.Copy(io.Discard, resp.Body)
			}
			if err != nil {
				closeAll()
				_ = p.stop()
				return loadResult{}, false, fmt.Errorf("stream %d: %w", s, err)
			}
		}
	}
	res, err := runOnce(cfg, p, cfg.clients, ownLock("followed"), func() error { return nil })
	if err != nil || !streams {
		closeAll()
		return res, false, errors.Join(err, p.stop())
	}
	stuck := conns[idle]
	// The stuck stream, read now: what the server wrote before it gave up
	// on it, then its last event saying why, or nothing more.
	_ = stuck.SetReadDeadline(time.Now().Add(30 * time.Second))
	cut := false
	sc := bufio.NewScanner(stuck)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if sc.Text() == "event: end" {
			cut = true
			break
		}
	}
	closeAll()
	return res, cut, p.stop()
}
