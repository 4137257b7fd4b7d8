//go:build unix

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/enginetest"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/testutil"
)

// TestAStreamThatDoesNotReadIsCutOff: a client that stops reading its
// stream while changes go on is cut off once it falls the stream's buffer
// behind; the others and the changes go on; and when it reads again it
// finds what was sent before the cut, then an "end" event saying why and
// what to do, and the stream's end.
func TestAStreamThatDoesNotReadIsCutOff(t *testing.T) {
	tab := enginetest.File(t, nil)
	ts := serveTable(tab, "", "", "")
	ts.server.streamBuffer = 64
	srv := httptest.NewServer(ts.handler)
	t.Cleanup(srv.Close)
	reader := testutil.OpenStream(t, srv.URL, "", "")
	// The stuck client: a small receive buffer, so that the server's
	// writes stop soon; it reads the answer's head, then nothing.
	dialer := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }); cerr != nil {
			return cerr
		}
		return err
	}}
	conn, err := dialer.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /events HTTP/1.1\r\nHost: locker\r\n\r\n")
	stuck := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(stuck, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the stuck stream's answer: %v, %v", resp, err)
	}
	// Changes with the longest notes, until the server has given up on
	// the stuck stream: the reader, following too, is then the hub's
	// only subscriber.
	note := strings.Repeat("n", 1024)
	changes := 0
	for tab.Hub.Len() > 1 {
		if changes == 20000 {
			t.Fatalf("after %d changes the stream that does not read was not cut off", changes)
		}
		req := engine.Request{Request: lock.Request{Key: "k", Requestor: "job", Note: note, Named: true}}
		if _, err := tab.Acquire(context.Background(), "prod", req); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tab.Release(context.Background(), "prod", "k", "job", false, nil); err != nil {
			t.Fatal(err)
		}
		changes += 2
	}
	for range changes {
		reader.NextEvent(t) // the stream that reads had every event
	}
	// The stuck client reads again: events in order, then the end.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	body := httputil.NewChunkedReader(stuck)
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	var got, last uint64
	var end string
	for sc.Scan() {
		line := sc.Text()
		if id, ok := strings.CutPrefix(line, "id: "); ok {
			n, err := strconv.ParseUint(id, 10, 64)
			if err != nil || n <= last {
				t.Fatalf("event id %q after %d", id, last)
			}
			got, last = got+1, n
		}
		if line == "event: end" && sc.Scan() {
			end = sc.Text()
		}
	}
	t.Logf("%d changes; the stuck stream had %d events before its end: %s", changes, got, end)
	if !strings.Contains(end, "fell 64 events behind and was cut off") || !strings.Contains(end, "Last-Event-ID") || got == 0 || got >= uint64(changes) {
		t.Errorf("the stuck stream, read after the cut: %d of %d events, then %q; want some, then an end saying it fell behind and how to resume", got, changes, end)
	}
}
