package main

import (
	"fmt"
	"strconv"
)

// The report: every figure of a run, its rows as the table prints them,
// and its targets.

// report is every figure of one benchmark run.
type report struct {
	Machine  string `json:"machine"`
	Runs     int    `json:"runs"`
	Duration string `json:"duration"`
	Clients  int    `json:"clients"`

	FsyncMs       figure             `json:"fsync_ms"`
	CeilingRPS    figure             `json:"ceiling_rps"`
	CeilingCPUus  figure             `json:"ceiling_server_cpu_us_per_request"`
	DurableRPS    figure             `json:"durable_ceiling_rps"`
	DurableCPUus  figure             `json:"durable_ceiling_server_cpu_us_per_request"`
	ClientCPUus   figure             `json:"load_generator_cpu_us_per_request"`
	DurableOneRPS figure             `json:"durable_ceiling_one_client_rps"`
	WorkingOneRPS figure             `json:"durable_ceiling_with_kept_work_one_client_rps"`
	WorkingRPS    figure             `json:"durable_ceiling_with_kept_work_rps"`
	WorkingCPUus  figure             `json:"durable_ceiling_with_kept_work_server_cpu_us_per_request"`
	SerialRPS     figure             `json:"serial_rps"`
	SerialP50Ms   figure             `json:"serial_p50_ms"`
	SerialP99Ms   figure             `json:"serial_p99_ms"`
	ParallelRPS   figure             `json:"parallel_rps"`
	ParallelP50Ms figure             `json:"parallel_p50_ms"`
	ParallelP99Ms figure             `json:"parallel_p99_ms"`
	ParallelCPUus figure             `json:"parallel_server_cpu_us_per_request"`
	ContendedRPS  figure             `json:"contended_rps"`
	ContendedGPS  figure             `json:"contended_grants_per_s"`
	Overlaps      int                `json:"contended_overlaps"`
	HandoffP50Ms  figure             `json:"handoff_p50_ms"`
	HandoffP99Ms  figure             `json:"handoff_p99_ms"`
	Postgres      *pgFigures         `json:"postgres,omitempty"`
	Failover      *failoverFigures   `json:"failover,omitempty"`
	Large         []largeFigures     `json:"large"`
	RestartMs     figure             `json:"restart_ms"`
	RestartLocks  int                `json:"restart_locks"`
	RestartRSSMB  figure             `json:"restart_rss_mb"` // after a restart and a parallel run
	Listing       *listingFigures    `json:"listing,omitempty"`
	Sets          *setFigures        `json:"sets,omitempty"`
	History       *historyFigures    `json:"history,omitempty"`
	Credentials   *credentialFigures `json:"credentials,omitempty"`

	Targets []target `json:"targets"`
	Notes   []string `json:"notes,omitempty"` // figures beside the targets
}

// largeFigures are the parallel figures with many other locks held.
type largeFigures struct {
	Locks      int    `json:"locks"`
	RPS        figure `json:"rps"`
	P99Ms      figure `json:"p99_ms"`
	StateBytes int64  `json:"state_file_bytes"`
	RSSMB      figure `json:"rss_mb"`
}

type target struct {
	Name   string `json:"name"`
	Met    bool   `json:"met"`
	Detail string `json:"detail"`
}

// rows returns the table's lines: figure, median, min-max.
func (r *report) rows() [][3]string {
	var rows [][3]string
	f := func(name string, x figure, prec int) {
		if len(x.Runs) == 0 {
			return // not measured in this run (-only)
		}
		rows = append(rows, [3]string{name, fmt.Sprintf("%.*f %s", prec, x.Median, x.Unit), fmt.Sprintf("%.*f-%.*f", prec, x.Min, prec, x.Max)})
	}
	f("fsync (write+fsync, p50)", r.FsyncMs, 3)
	f("ceiling (no-op server, 16 clients)", r.CeilingRPS, 0)
	f("ceiling server CPU", r.CeilingCPUus, 1)
	f("load generator CPU", r.ClientCPUus, 1)
	f("durable ceiling (no-op + group-committed fdatasync)", r.DurableRPS, 0)
	f("durable ceiling server CPU", r.DurableCPUus, 1)
	f("durable ceiling + decoding, 2 log lines, reply", r.WorkingRPS, 0)
	f("  its server CPU", r.WorkingCPUus, 1)
	f("durable ceiling, 1 client", r.DurableOneRPS, 0)
	f("durable ceiling + decoding, 2 log lines, reply, 1 client", r.WorkingOneRPS, 0)
	f("serial", r.SerialRPS, 0)
	f("serial p50", r.SerialP50Ms, 3)
	f("serial p99", r.SerialP99Ms, 3)
	f("parallel", r.ParallelRPS, 0)
	f("parallel p50", r.ParallelP50Ms, 3)
	f("parallel p99", r.ParallelP99Ms, 3)
	f("parallel server CPU", r.ParallelCPUus, 1)
	f("contended", r.ContendedRPS, 0)
	f("contended grants", r.ContendedGPS, 0)
	if len(r.ContendedRPS.Runs) > 0 {
		rows = append(rows, [3]string{"contended overlaps (must be 0)", fmt.Sprint(r.Overlaps), ""})
	}
	f("handoff p50", r.HandoffP50Ms, 3)
	f("handoff p99", r.HandoffP99Ms, 3)
	if pg := r.Postgres; pg != nil {
		f("pgbench, one-row UPDATE (reference)", pg.PgbenchTPS, 0)
		f("HTTP + that UPDATE per request (the ceiling)", pg.CeilingRPS, 0)
		f("PostgreSQL, 1 node", pg.OneNodeRPS, 0)
		f("PostgreSQL, 1 node p99", pg.OneNodeP99Ms, 3)
		f("PostgreSQL, 1 node: the node's CPU", pg.OneNodeCPUus, 1)
		f("PostgreSQL, 1 node: PostgreSQL's CPU", pg.OneNodeDBCPUus, 1)
		f("PostgreSQL, 1 node: the machine idle", pg.OneNodeIdle, 0)
		f("PostgreSQL, 3 nodes", pg.ThreeNodesRPS, 0)
		f("PostgreSQL, 3 nodes p99", pg.ThreeNodesP99Ms, 3)
		f("PostgreSQL, 3 nodes: the nodes' CPU", pg.ThreeNodesCPUus, 1)
		f("PostgreSQL, 3 nodes: PostgreSQL's CPU", pg.ThreeNodesDBCPUus, 1)
		f("PostgreSQL, 3 nodes: the machine idle", pg.ThreeNodesIdle, 0)
		f("PostgreSQL, handoff across nodes p50", pg.HandoffP50Ms, 3)
		f("PostgreSQL, handoff across nodes p99", pg.HandoffP99Ms, 3)
	}
	if fo := r.Failover; fo != nil {
		f("PostgreSQL failover, synchronous: primary stopped to first change served", fo.SyncServeAgainMs, 0)
		f("  of which the promotion (pg_ctl promote -w)", fo.SyncPromoteMs, 0)
		f("PostgreSQL failover, asynchronous: primary stopped to first change served", fo.AsyncServeAgainMs, 0)
		f("  of which the promotion (pg_ctl promote -w)", fo.AsyncPromoteMs, 0)
		f("PostgreSQL, 1 node, synchronous replication to a standby", fo.SyncRPS, 0)
		f("PostgreSQL, 1 node, the same primary without a standby", fo.AloneRPS, 0)
	}
	for _, l := range r.Large {
		name := fmt.Sprintf("large %d", l.Locks)
		f(name, l.RPS, 0)
		f(name+" p99", l.P99Ms, 3)
		rows = append(rows, [3]string{name + " state file", fmt.Sprintf("%.1f MB", float64(l.StateBytes)/1e6), ""})
		f(name+" RSS", l.RSSMB, 1)
	}
	f(fmt.Sprintf("restart with %d locks", r.RestartLocks), r.RestartMs, 0)
	f(fmt.Sprintf("RSS after the restart with %d locks", r.RestartLocks), r.RestartRSSMB, 1)
	if st := r.Sets; st != nil {
		f("one lock, PUT+DELETE per client", st.OneRPS, 0)
		f("a set of two, PUT+DELETE /locks per client", st.SetRPS, 0)
		f("claims on a pool of 10, claim+DELETE per client", st.ClaimRPS, 0)
	}
	if c := r.Credentials; c != nil {
		f("parallel through AUTH_USER", c.AuthUserRPS, 0)
		f(fmt.Sprintf("parallel through one of %d credentials", c.Credentials), c.CredentialRPS, 0)
		f("server CPU, through AUTH_USER", c.AuthUserCPUus, 1)
		f(fmt.Sprintf("server CPU, through one of %d credentials", c.Credentials), c.CredentialCPU, 1)
	}
	if h := r.History; h != nil {
		for _, pt := range h.Restarts {
			name := fmt.Sprintf("%d locks with %d events each", h.Locks, pt.Events)
			rows = append(rows, [3]string{name + ": state file", fmt.Sprintf("%.1f MB", pt.StateMB), ""})
			f(name+": restart", pt.RestartMs, 0)
			f(name+": RSS after the restart", pt.RSSMB, 1)
		}
		f("parallel, p99", h.QuietP99Ms, 3)
		f(fmt.Sprintf("parallel with %d idle streams and a stuck one, p99", h.IdleStreams), h.FollowedP99Ms, 3)
		f(fmt.Sprintf("parallel with %d idle connections, no stream, p99", h.IdleStreams), h.ConnectedP99Ms, 3)
		f("parallel", h.QuietRPS, 0)
		f(fmt.Sprintf("parallel with %d idle streams and a stuck one", h.IdleStreams), h.FollowedRPS, 0)
		f(fmt.Sprintf("parallel with %d idle connections, no stream", h.IdleStreams), h.ConnectedRPS, 0)
		rows = append(rows, [3]string{"the stuck stream was ended by the server", strconv.FormatBool(h.StuckStreamCut), ""})
		name := fmt.Sprintf("%d streams resumed from the first of %d events", h.ResumedStreams, 2*h.ResumedLocks)
		for _, store := range []struct {
			prefix string
			r      resumedFigures
		}{{"", h.Resumed}, {"PostgreSQL, 1 node: ", h.PGResumed}} {
			f(store.prefix+"parallel beside those events, no stream, p99", store.r.IdleP99Ms, 3)
			f(store.prefix+"parallel with "+name+", p99", store.r.P99Ms, 3)
			f(store.prefix+"parallel beside those events, no stream", store.r.IdleRPS, 0)
			f(store.prefix+"parallel with "+name, store.r.RPS, 0)
			f(store.prefix+name+": first event", store.r.FirstMs, 0)
			f(store.prefix+name+": every event", store.r.AllMs, 0)
		}
	}
	if l := r.Listing; l != nil {
		name := fmt.Sprintf("listing of %d locks", l.Locks)
		f(name+": changes alone, p99", l.QuietP99Ms, 3)
		f(name+": changes during listings, p99", l.ListingP99Ms, 3)
		f(name+": peak RSS, changes alone", l.QuietRSSMB, 1)
		f(name+": peak RSS during listings", l.ListingRSSMB, 1)
		f(name+": one GET /locks", l.ListingMs, 0)
		rows = append(rows, [3]string{name + ": reply size", fmt.Sprintf("%.1f MB", float64(l.ListingBytes)/1e6), ""})
	}
	return rows
}

// check fills in r.Targets from the targets.
func (r *report) check() {
	// add records a target whose figures were all measured (-only can
	// leave some out).
	add := func(name string, met bool, figs []figure, format string, args ...any) {
		for _, f := range figs {
			if len(f.Runs) == 0 {
				return
			}
		}
		r.Targets = append(r.Targets, target{Name: name, Met: met, Detail: fmt.Sprintf(format, args...)})
	}
	add("serial p50 <= fsync + 0.25 ms", r.SerialP50Ms.Median <= r.FsyncMs.Median+0.25, []figure{r.SerialP50Ms, r.FsyncMs},
		"%.3f ms vs %.3f + 0.25 ms", r.SerialP50Ms.Median, r.FsyncMs.Median)
	add("parallel >= 50% of ceiling", r.ParallelRPS.Median >= 0.5*r.CeilingRPS.Median, []figure{r.ParallelRPS, r.CeilingRPS},
		"%.0f%% (%.0f of %.0f req/s)", 100*r.ParallelRPS.Median/r.CeilingRPS.Median, r.ParallelRPS.Median, r.CeilingRPS.Median)
	add("parallel (16 clients) >= 0.9 x the durable ceiling", r.ParallelRPS.Median >= 0.9*r.DurableRPS.Median, []figure{r.ParallelRPS, r.DurableRPS},
		"%.2f x (%.0f of %.0f req/s)", r.ParallelRPS.Median/r.DurableRPS.Median, r.ParallelRPS.Median, r.DurableRPS.Median)
	add("serial (1 client) >= 0.9 x the durable ceiling at 1 client", r.SerialRPS.Median >= 0.9*r.DurableOneRPS.Median, []figure{r.SerialRPS, r.DurableOneRPS},
		"%.2f x (%.0f of %.0f req/s)", r.SerialRPS.Median/r.DurableOneRPS.Median, r.SerialRPS.Median, r.DurableOneRPS.Median)
	if fo := r.Failover; fo != nil && len(fo.SyncRPS.Runs) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("synchronous replication to a standby on the same machine: one node does %.2f x what it does on the same primary without a standby",
			fo.SyncRPS.Median/fo.AloneRPS.Median))
	}
	if len(r.WorkingRPS.Runs) > 0 && len(r.ParallelRPS.Runs) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("the durable no-op doing only the work the issue keeps (decoding, two log lines, a reply) reaches %.2f x the durable ceiling; parallel is %.2f x it",
			r.WorkingRPS.Median/r.DurableRPS.Median, r.ParallelRPS.Median/r.WorkingRPS.Median))
	}
	if len(r.WorkingOneRPS.Runs) > 0 && len(r.SerialRPS.Runs) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("at 1 client, the durable no-op doing only the kept work reaches %.2f x the durable ceiling; serial is %.2f x it",
			r.WorkingOneRPS.Median/r.DurableOneRPS.Median, r.SerialRPS.Median/r.WorkingOneRPS.Median))
	}
	if len(r.DurableRPS.Runs) > 0 && len(r.ParallelRPS.Runs) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("the durable ceiling is %.0f%% of the ceiling; parallel is %.0f%% of the durable ceiling",
			100*r.DurableRPS.Median/r.CeilingRPS.Median, 100*r.ParallelRPS.Median/r.DurableRPS.Median))
	}
	add("handoff p99 <= 5 ms", r.HandoffP99Ms.Median <= 5, []figure{r.HandoffP99Ms}, "%.3f ms", r.HandoffP99Ms.Median)
	if pg := r.Postgres; pg != nil {
		// Against the server that runs one UPDATE per request, and (the
		// stretch) pgbench's one-row UPDATE.
		for _, n := range []struct {
			name string
			rps  figure
			want float64
		}{{"1 node", pg.OneNodeRPS, 1.0}, {"3 nodes", pg.ThreeNodesRPS, 1.2}} {
			add(fmt.Sprintf("PostgreSQL %s >= %.1f x the one-UPDATE server", n.name, n.want), n.rps.Median >= n.want*pg.CeilingRPS.Median, []figure{n.rps, pg.CeilingRPS},
				"%.2f x (%.0f vs %.0f req/s)", n.rps.Median/pg.CeilingRPS.Median, n.rps.Median, pg.CeilingRPS.Median)
		}
		add("stretch: PostgreSQL 1 node >= 0.5 x pgbench", pg.OneNodeRPS.Median >= 0.5*pg.PgbenchTPS.Median, []figure{pg.OneNodeRPS, pg.PgbenchTPS},
			"%.2f x (%.0f req/s vs %.0f tps)", pg.OneNodeRPS.Median/pg.PgbenchTPS.Median, pg.OneNodeRPS.Median, pg.PgbenchTPS.Median)
		r.Notes = append(r.Notes, fmt.Sprintf("over PostgreSQL, 1 node is %.0f%% and 3 nodes %.0f%% of the ceiling (an HTTP server doing one UPDATE per request: %.2f x pgbench)",
			100*pg.OneNodeRPS.Median/pg.CeilingRPS.Median, 100*pg.ThreeNodesRPS.Median/pg.CeilingRPS.Median, pg.CeilingRPS.Median/pg.PgbenchTPS.Median))
		add("PostgreSQL handoff across nodes p99 <= 50 ms", pg.HandoffP99Ms.Median <= 50, []figure{pg.HandoffP99Ms}, "%.3f ms", pg.HandoffP99Ms.Median)
	}
	add("contended: never two holders", r.Overlaps == 0, []figure{r.ContendedRPS}, "%d overlaps", r.Overlaps)
	for _, l := range r.Large {
		want := 0.8
		if l.Locks >= 100000 {
			want = 0.7
		}
		add(fmt.Sprintf("large %d >= %.0f%% of parallel", l.Locks, 100*want), l.RPS.Median >= want*r.ParallelRPS.Median, []figure{l.RPS, r.ParallelRPS},
			"%.0f%% (%.0f of %.0f req/s)", 100*l.RPS.Median/r.ParallelRPS.Median, l.RPS.Median, r.ParallelRPS.Median)
		if l.Locks >= 100000 {
			add("RSS at 100,000 locks <= 100 MB", l.RSSMB.Median <= 100, []figure{l.RSSMB}, "%.1f MB", l.RSSMB.Median)
		}
	}
	if l := r.Listing; l != nil {
		add("a full listing adds <= 10 ms to a change's p99", l.ListingP99Ms.Median-l.QuietP99Ms.Median <= 10, []figure{l.ListingP99Ms, l.QuietP99Ms},
			"+%.3f ms (%.3f vs %.3f ms) with %d locks", l.ListingP99Ms.Median-l.QuietP99Ms.Median, l.ListingP99Ms.Median, l.QuietP99Ms.Median, l.Locks)
		add("a full listing adds <= 100 MB to memory", l.ListingRSSMB.Median-l.QuietRSSMB.Median <= 100, []figure{l.ListingRSSMB, l.QuietRSSMB},
			"+%.1f MB (peak %.1f vs %.1f MB) with %d locks", l.ListingRSSMB.Median-l.QuietRSSMB.Median, l.ListingRSSMB.Median, l.QuietRSSMB.Median, l.Locks)
	}
	if st := r.Sets; st != nil {
		add("a set of two costs <= 1.3 x one lock", st.OneRPS.Median <= 1.3*st.SetRPS.Median, []figure{st.OneRPS, st.SetRPS},
			"%.2f x (%.0f vs %.0f req/s)", st.OneRPS.Median/st.SetRPS.Median, st.OneRPS.Median, st.SetRPS.Median)
	}
	if h := r.History; h != nil {
		for _, pt := range h.Restarts {
			add(fmt.Sprintf("%d locks with %d events each restart in <= 2 s", h.Locks, pt.Events), pt.RestartMs.Median <= 2000, []figure{pt.RestartMs},
				"%.0f ms (state file %.1f MB)", pt.RestartMs.Median, pt.StateMB)
			add(fmt.Sprintf("%d locks with %d events each fit in <= 250 MB", h.Locks, pt.Events), pt.RSSMB.Median <= 250, []figure{pt.RSSMB},
				"%.1f MB", pt.RSSMB.Median)
		}
		add("1,000 idle streams and a stuck one add <= 10% to a change's p99", h.FollowedP99Ms.Median <= 1.1*h.QuietP99Ms.Median,
			[]figure{h.FollowedP99Ms, h.QuietP99Ms}, "%.3f vs %.3f ms (%+.0f%%)", h.FollowedP99Ms.Median, h.QuietP99Ms.Median,
			100*(h.FollowedP99Ms.Median/h.QuietP99Ms.Median-1))
		if h.ConnectedP99Ms.Median > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("%d idle connections that follow no stream: p99 %.3f ms (%+.0f%% over none; the streams %+.0f%% over these)",
				h.IdleStreams, h.ConnectedP99Ms.Median, 100*(h.ConnectedP99Ms.Median/h.QuietP99Ms.Median-1), 100*(h.FollowedP99Ms.Median/h.ConnectedP99Ms.Median-1)))
		}
	}
	if c := r.Credentials; c != nil {
		add(fmt.Sprintf("one of %d credentials costs <= 3%% of AUTH_USER's throughput", c.Credentials), c.CredentialRPS.Median >= 0.97*c.AuthUserRPS.Median,
			[]figure{c.CredentialRPS, c.AuthUserRPS}, "%.0f vs %.0f req/s (%+.1f%%)", c.CredentialRPS.Median, c.AuthUserRPS.Median,
			100*(c.CredentialRPS.Median/c.AuthUserRPS.Median-1))
	}
	add("restart <= 2 s", r.RestartMs.Median <= 2000, []figure{r.RestartMs}, "%.0f ms with %d locks", r.RestartMs.Median, r.RestartLocks)
	if r.RestartLocks >= 100000 {
		add("RSS after a restart at 100,000 locks <= 100 MB", r.RestartRSSMB.Median <= 100, []figure{r.RestartRSSMB}, "%.1f MB", r.RestartRSSMB.Median)
	}
}
