package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/config"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/metrics"
	"github.com/locker-ci/locker/internal/testutil"
)

func TestMetrics(t *testing.T) {
	ls := startRun(t, map[string]string{"LOCKER_CONFIG": filepath.Join(t.TempDir(), "locks.yml"), "AUTH_USER": "ci", "AUTH_PASS": "s3cret"})
	call := func(method, path, body string) int {
		status, _ := ls.call(t, method, path, body, "ci", "s3cret")
		return status
	}
	call("PUT", "/lock/prod", `{"key": "a", "lock_by": "x"}`)
	call("PUT", "/lock/prod", `{"key": "a", "lock_by": "y"}`)
	call("PUT", "/lock/prod", `{"key": "b"}`)                                // refused
	call("PUT", "/lock/prod?wait=50ms", `{"key": "b"}`)                      // times out
	call("DELETE", "/lock/prod", `{"key": "a", "lock_by": "x"}`)             // releases 1
	waiter := putAsyncAuth(t, ls.url, "/lock/prod?wait=10s", `{"key": "c"}`) // waits
	testutil.WaitFor(t, "the waiter to queue", func() bool {
		_, body := ls.call(t, "GET", "/lock/prod", "", "ci", "s3cret")
		return bytes.Contains(body, []byte(`"requestor":"c"`))
	})

	if status, _ := ls.call(t, "GET", "/metrics", ""); status != http.StatusUnauthorized {
		t.Errorf("GET /metrics without credentials = %d; want 401 (LOCKER_METRICS_AUTH is on by default)", status)
	}
	status, body := ls.call(t, "GET", "/metrics", "", "ci", "s3cret")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics = %d", status)
	}
	m := testutil.Scrape(t, body)
	if age := testutil.MetricValue(t, m, "locker_oldest_waiter_age_seconds"); age < 0 || age > 60 {
		t.Errorf("locker_oldest_waiter_age_seconds = %v; want the age of the waiter, a few seconds at most", age)
	}
	for name, want := range map[string]float64{
		"locker_acquisitions_total": 2, "locker_refusals_total": 1, "locker_wait_timeouts_total": 1,
		"locker_releases_total": 1, "locker_locks_held": 1, "locker_holders": 1, "locker_waiters": 1, "locker_ready": 1,
	} {
		if got := testutil.MetricValue(t, m, name); got != want {
			t.Errorf("%s = %v; want %v", name, got, want)
		}
	}
	call("DELETE", "/lock/prod?force=true", "")
	if r := <-waiter; r != http.StatusOK {
		t.Fatalf("the waiter = %d; want it granted after the forced release", r)
	}
	_, body = ls.call(t, "GET", "/metrics", "", "ci", "s3cret")
	m = testutil.Scrape(t, body)
	if got := testutil.MetricValue(t, m, "locker_forced_releases_total"); got != 1 {
		t.Errorf("locker_forced_releases_total = %v; want 1", got)
	}
	if got := testutil.MetricValue(t, m, "locker_acquisitions_total"); got != 3 {
		t.Errorf("locker_acquisitions_total after the waiter's grant = %v; want 3", got)
	}
	if h := m["locker_wait_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleCount() != 1 {
		t.Errorf("locker_wait_seconds has %d samples; want the one waiter's", h.GetSampleCount())
	}
	if age := testutil.MetricValue(t, m, "locker_oldest_waiter_age_seconds"); age != 0 {
		t.Errorf("locker_oldest_waiter_age_seconds with no one waiting = %v; want 0", age)
	}
	if age := testutil.MetricValue(t, m, "locker_oldest_lock_age_seconds"); age < 0 || age > 60 { // 0 when scraped in the millisecond of the grant
		t.Errorf("locker_oldest_lock_age_seconds = %v; want the age of prod's hold, a few seconds at most", age)
	}
	for _, name := range []string{"locker_journal_sync_seconds", "locker_journal_records_per_sync", "locker_build_info", "locker_http_request_duration_seconds"} {
		if _, ok := m[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
	for _, s := range m["locker_http_request_duration_seconds"].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == "route" && strings.Contains(l.GetValue(), "prod") {
				t.Errorf("a request's route label holds a lock name: %q", l.GetValue())
			}
		}
	}
}

// TestMetricsLabelsStayBounded sends requests for 100,000 distinct lock
// names, and made-up methods: the request metric's series stay a handful,
// one per route, method and status code.
func TestMetricsLabelsStayBounded(t *testing.T) {
	tab := enginetest.File(t, unsyncedDisk{})
	s := &server{locks: tab.Engine, hub: tab.Hub, log: enginetest.DiscardLog, maxWait: config.DefaultMaxWait, maxTTL: config.DefaultMaxTTL, writeTimeout: time.Second,
		metrics: metrics.New("test", metrics.Gauges{Table: func() metrics.TableStats { return metrics.TableStats{} }})}
	h := s.routes()
	for i := range 100_000 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", fmt.Sprintf("/lock/name-%d", i), nil))
	}
	for i := range 100 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(fmt.Sprintf("METHOD%d", i), fmt.Sprintf("/lock/name-%d", i), nil))
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("PUT", fmt.Sprintf("/lock/put-%d", i), strings.NewReader(`{"key": "k"}`)))
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	series := len(testutil.Scrape(t, rec.Body.Bytes())["locker_http_request_duration_seconds"].GetMetric())
	if series == 0 || series > 10 {
		t.Errorf("locker_http_request_duration_seconds has %d series after 100,000 lock names; want a handful", series)
	}
}
