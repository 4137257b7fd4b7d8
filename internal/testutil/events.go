package testutil

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/locker-ci/locker/internal/lock"
)

// SSE is one Server-Sent Event as a test reads it.
type SSE struct {
	Kind string // "" for a lock's event
	ID   uint64
	Data string
}

// Stream is a client of GET /events.
type Stream struct {
	events <-chan SSE
	close  func()
}

// OpenStream connects to GET /events at base (with query), sending lastID
// as Last-Event-ID unless it is empty, and checks the answer is a stream.
// It is closed when the test ends.
func OpenStream(tb testing.TB, base, query, lastID string) *Stream {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events"+query, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		body, _ := io.ReadAll(resp.Body)
		cancel()
		tb.Fatalf("GET /events%s = %d %s %s", query, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	events := make(chan SSE, 100000)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		var e SSE
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e.Data != "" {
					events <- e
				}
				e = SSE{}
			case strings.HasPrefix(line, "id: "):
				e.ID, _ = strconv.ParseUint(line[4:], 10, 64)
			case strings.HasPrefix(line, "event: "):
				e.Kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				e.Data = line[6:]
			}
		}
	}()
	s := &Stream{events: events, close: func() { cancel(); resp.Body.Close() }}
	tb.Cleanup(s.close)
	return s
}

// Next returns the stream's next event, and false when the stream has
// ended; it fails the test after 10 s without either.
func (s *Stream) Next(tb testing.TB) (SSE, bool) {
	tb.Helper()
	select {
	case e, ok := <-s.events:
		return e, ok
	case <-time.After(10 * time.Second):
		tb.Fatal("no event in 10 s")
	}
	return SSE{}, false
}

// NextEvent returns the stream's next event, which must be a lock's,
// with its id the one in its data.
func (s *Stream) NextEvent(tb testing.TB) lock.Event {
	tb.Helper()
	e, ok := s.Next(tb)
	if !ok {
		tb.Fatal("the stream ended")
	}
	return LockEvent(tb, e)
}

// LockEvent returns the lock event e carries, checking its id.
func LockEvent(tb testing.TB, e SSE) lock.Event {
	tb.Helper()
	var ev lock.Event
	if err := json.Unmarshal([]byte(e.Data), &ev); err != nil || e.Kind != "" || ev.ID != e.ID || e.ID == 0 {
		tb.Fatalf("event %q (id %d, %q) is not a lock's event with its id: %v", e.Kind, e.ID, e.Data, err)
	}
	return ev
}

// Close disconnects the stream.
func (s *Stream) Close() { s.close() }

// Drain returns the stream's events until none comes for quiet, or the
// stream ends.
func (s *Stream) Drain(quiet time.Duration) []SSE {
	var out []SSE
	for {
		select {
		case e, ok := <-s.events:
			if !ok {
				return out
			}
			out = append(out, e)
		case <-time.After(quiet):
			return out
		}
	}
}
