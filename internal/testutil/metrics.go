package testutil

import (
	"bytes"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape parses a /metrics body with the Prometheus library's own parser.
func Scrape(tb testing.TB, body []byte) map[string]*dto.MetricFamily {
	tb.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		tb.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return families
}

// MetricValue returns the MetricValue of the one metric of family name, a counter or
// a gauge.
func MetricValue(tb testing.TB, families map[string]*dto.MetricFamily, name string) float64 {
	tb.Helper()
	f, ok := families[name]
	if !ok || len(f.Metric) != 1 {
		tb.Fatalf("/metrics has no single %s", name)
	}
	if c := f.Metric[0].GetCounter(); c != nil {
		return c.GetValue()
	}
	return f.Metric[0].GetGauge().GetValue()
}
