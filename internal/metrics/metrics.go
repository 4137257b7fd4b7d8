// Package metrics is Locker's Prometheus instruments: what the lock table,
// the journal and the HTTP server count and time, registered in one
// registry. It knows names and numbers, not locks: the gauges read the
// table through functions its owner gives.
package metrics

import (
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// TableStats is what the gauges show of the lock table.
type TableStats struct {
	Locks, Holders, Waiters int
	OldestAge               time.Duration // how long the longest-held lock has been held
	OldestWait              time.Duration // how long the longest waiter has waited
}

// Gauges reads the lock table at each scrape.
type Gauges struct {
	Table func() TableStats // one pass over the table for all its gauges
	Ready func() bool       // changes can be saved now
}

// Metrics are the instruments. A nil *Metrics records nothing, so that
// tests and tools can leave it out.
type Metrics struct {
	Registry *prometheus.Registry

	acquisitions, refusals, releases, expiries, forced, waitTimeouts prometheus.Counter
	waited                                                           prometheus.Histogram
	requests                                                         *prometheus.HistogramVec
	syncSeconds, syncRecords, checkpointSeconds                      prometheus.Histogram
	buildLookups                                                     *prometheus.CounterVec
	endedWithBuild                                                   prometheus.Counter
}

// New returns the instruments, registered with the Go runtime's and the
// process's collectors and the build's version.
func New(version string, g Gauges) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{Registry: r}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		r.MustRegister(c)
		return c
	}
	m.acquisitions = counter("locker_acquisitions_total", "Grants of a lock, at once or after waiting.")
	m.refusals = counter("locker_refusals_total", "Requests for a lock answered 423 at once.")
	m.releases = counter("locker_releases_total", "Counts given back by DELETE.")
	m.expiries = counter("locker_lease_expiries_total", "Holds released because their lease ran out.")
	m.forced = counter("locker_forced_releases_total", "Locks freed with DELETE ?force=true.")
	m.waitTimeouts = counter("locker_wait_timeouts_total", "Waits that ran out before a grant (answered 423).")
	m.endedWithBuild = counter("locker_holds_ended_with_build_total", "Holds ended because the CI build they belonged to ended as they named.")
	m.buildLookups = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "locker_build_lookups_total",
		Help: "Lookups of the CI builds that holds belong to, by result: ok, or failed (unreachable, refused)."}, []string{"result"})
	r.MustRegister(m.buildLookups)
	m.waited = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "locker_wait_seconds", Help: "Time from joining a lock's queue to its grant.",
		Buckets: []float64{.001, .01, .1, 1, 10, 60, 300, 900, 3600},
	})
	m.requests = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "locker_http_request_duration_seconds", Help: "HTTP requests by route template (never a lock's name), method and status code.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .1, 1, 10, 60, 900},
	}, []string{"route", "method", "code"})
	m.syncSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "locker_journal_sync_seconds", Help: "Time to write and sync one batch of the journal.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, 1},
	})
	m.syncRecords = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "locker_journal_records_per_sync", Help: "Changes written by one sync of the journal (group commit).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	})
	m.checkpointSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "locker_checkpoint_seconds", Help: "Time to write the state file and compact the journal.",
		Buckets: []float64{.001, .01, .1, .5, 1, 2, 5, 10, 30},
	})
	r.MustRegister(m.waited, m.requests, m.syncSeconds, m.syncRecords, m.checkpointSeconds)
	r.MustRegister(tableCollector{read: g.Table})
	if g.Ready != nil {
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "locker_ready", Help: "1 while changes can be saved to disk, 0 when they cannot (see /readyz).",
		}, func() float64 {
			if g.Ready() {
				return 1
			}
			return 0
		}))
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "locker_build_info", Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	r.MustRegister(build, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// The table's gauges, read together at each scrape.
var (
	locksHeldDesc  = prometheus.NewDesc("locker_locks_held", "Locks held now.", nil, nil)
	holdersDesc    = prometheus.NewDesc("locker_holders", "Holders of all locks now.", nil, nil)
	waitersDesc    = prometheus.NewDesc("locker_waiters", "Requests waiting in a lock's queue now.", nil, nil)
	oldestAgeDesc  = prometheus.NewDesc("locker_oldest_lock_age_seconds", "How long the longest-held lock has been held (0 for none).", nil, nil)
	oldestWaitDesc = prometheus.NewDesc("locker_oldest_waiter_age_seconds",
		"How long the request that has waited longest has waited (0 for none): a low priority waits behind every higher one.", nil, nil)
)

// tableCollector reports the table's gauges from one read of it: the
// table is walked once per scrape, under its mutex, not once per gauge.
type tableCollector struct{ read func() TableStats }

func (c tableCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{locksHeldDesc, holdersDesc, waitersDesc, oldestAgeDesc, oldestWaitDesc} {
		ch <- d
	}
}

func (c tableCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.read()
	ch <- prometheus.MustNewConstMetric(locksHeldDesc, prometheus.GaugeValue, float64(st.Locks))
	ch <- prometheus.MustNewConstMetric(holdersDesc, prometheus.GaugeValue, float64(st.Holders))
	ch <- prometheus.MustNewConstMetric(waitersDesc, prometheus.GaugeValue, float64(st.Waiters))
	ch <- prometheus.MustNewConstMetric(oldestAgeDesc, prometheus.GaugeValue, st.OldestAge.Seconds())
	ch <- prometheus.MustNewConstMetric(oldestWaitDesc, prometheus.GaugeValue, st.OldestWait.Seconds())
}

// add adds n to the counter pick chooses, if m records anything.
func (m *Metrics) add(pick func(*Metrics) prometheus.Counter, n int) {
	if m != nil && n > 0 {
		pick(m).Add(float64(n))
	}
}

// Acquired counts a grant; waited is how long it queued (0 for none).
func (m *Metrics) Acquired(waited time.Duration, queued bool) {
	if m == nil {
		return
	}
	m.acquisitions.Inc()
	if queued {
		m.waited.Observe(waited.Seconds())
	}
}

// LookedUpBuild counts a lookup of a CI build, and whether it answered.
func (m *Metrics) LookedUpBuild(ok bool) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "failed"
	}
	m.buildLookups.WithLabelValues(result).Inc()
}

// BuildLookupsFailing registers the gauge locker_build_lookups_failing,
// which failing reads at each scrape.
func (m *Metrics) BuildLookupsFailing(failing func() bool) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "locker_build_lookups_failing",
		Help: "1 while the CI builds of build-bound holds cannot be looked up (no hold ends with its build meanwhile; see /readyz), 0 when they can."},
		func() float64 {
			if failing() {
				return 1
			}
			return 0
		}))
}

// EndedWithBuild counts a hold ended with its build.
func (m *Metrics) EndedWithBuild() {
	m.add(func(m *Metrics) prometheus.Counter { return m.endedWithBuild }, 1)
}

// Refused counts a request answered 423 at once.
func (m *Metrics) Refused() { m.add(func(m *Metrics) prometheus.Counter { return m.refusals }, 1) }

// Released counts n counts given back.
func (m *Metrics) Released(n int) {
	m.add(func(m *Metrics) prometheus.Counter { return m.releases }, n)
}

// Expired counts n holds released by their lease.
func (m *Metrics) Expired(n int) { m.add(func(m *Metrics) prometheus.Counter { return m.expiries }, n) }

// Forced counts a forced release.
func (m *Metrics) Forced() { m.add(func(m *Metrics) prometheus.Counter { return m.forced }, 1) }

// WaitTimedOut counts a wait that ran out.
func (m *Metrics) WaitTimedOut() {
	m.add(func(m *Metrics) prometheus.Counter { return m.waitTimeouts }, 1)
}

// Request times one HTTP request by its route template. Methods other
// than the API's are counted as "other": a client chooses the method, and
// must not be able to make series without end.
func (m *Metrics) Request(route, method string, code int, d time.Duration) {
	if m == nil {
		return
	}
	switch method {
	case "GET", "HEAD", "PUT", "PATCH", "DELETE":
	default:
		method = "other"
	}
	m.requests.WithLabelValues(route, method, strconv.Itoa(code)).Observe(d.Seconds())
}

// Synced times one journal sync of records changes.
func (m *Metrics) Synced(d time.Duration, records int) {
	if m != nil {
		m.syncSeconds.Observe(d.Seconds())
		m.syncRecords.Observe(float64(records))
	}
}

// Checkpointed times one checkpoint.
func (m *Metrics) Checkpointed(d time.Duration) {
	if m != nil {
		m.checkpointSeconds.Observe(d.Seconds())
	}
}
