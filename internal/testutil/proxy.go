package testutil

import (
	"net/url"
	"testing"

	"github.com/locker-ci/locker/internal/tcpproxy"
)

// Proxy is a tcpproxy.Proxy that a test made.
type Proxy = tcpproxy.Proxy

// NewProxy listens on the loopback and forwards to target (host:port),
// until the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	p, err := tcpproxy.New(target)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

// ThroughProxy returns the URL of u through a proxy that can cut the
// database away.
func ThroughProxy(tb testing.TB, u string) (string, *Proxy) {
	tb.Helper()
	parsed, err := url.Parse(u)
	if err != nil {
		tb.Fatal(err)
	}
	px := NewProxy(tb, parsed.Host)
	parsed.Host = px.Addr()
	return parsed.String(), px
}
