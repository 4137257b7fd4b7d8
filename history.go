package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/locker-ci/locker/internal/access"
	"github.com/locker-ci/locker/internal/advice"
	"github.com/locker-ci/locker/internal/engine"
	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/stream"
	"github.com/locker-ci/locker/internal/txn"
)

// A lock's history, GET /history/<name>, and the stream of every change,
// GET /events.

// maxHistoryPage is the most events a page of GET /history may ask for.
const maxHistoryPage = 1000

// defaultHistoryPage is a page's size without ?limit=.
const defaultHistoryPage = 50

// historyReply is the answer to GET /history/<name>.
type historyReply struct {
	Lock   string       `json:"lock,omitempty"` // none for every lock's
	Events []lock.Event `json:"events"`
	// Next is the URL of the page of older events, when there may be
	// more.
	Next string `json:"next,omitempty"`
}

// handleHistory handles GET /history/{name}: the lock's events, newest
// first, a page at a time. A lock with no history (never taken, or
// forgotten) has an empty one.
func (s *server) handleHistory(w http.ResponseWriter, r *http.Request) {
	name, err := lockName(r)
	var before uint64
	limit := defaultHistoryPage
	if err == nil {
		before, limit, err = decodeHistoryQuery(r, "/history/<name>")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.allow(r, access.Read, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	events, err := s.locks.History(name, before, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	for i, e := range events {
		events[i], _ = shownEvent(callerOf(r), e)
	}
	reply := historyReply{Lock: name, Events: events}
	if reply.Events == nil {
		reply.Events = []lock.Event{}
	}
	if len(events) == limit {
		reply.Next = historyPath(name, events[len(events)-1].ID, limit)
		w.Header().Set("Link", "<"+reply.Next+`>; rel="next"`)
	}
	s.writeJSON(w, r, http.StatusOK, reply)
}

// decodeHistoryQuery reads ?before= and ?limit= of GET /history/<name>.
func decodeHistoryQuery(r *http.Request, path string) (before uint64, limit int, err error) {
	query, err := checkQuery(r, path)
	if err != nil {
		return 0, 0, err
	}
	limit = defaultHistoryPage
	if v, ok := query["limit"]; ok {
		if limit, err = strconv.Atoi(v[0]); err != nil || limit < 1 || limit > maxHistoryPage {
			return 0, 0, fmt.Errorf("%w: ?limit=%q is not a number of events from 1 to %d; e.g. ?limit=20", errBadRequest, v[0], maxHistoryPage)
		}
	}
	if v, ok := query["before"]; ok {
		if before, err = strconv.ParseUint(v[0], 10, 64); err != nil || before == 0 {
			return 0, 0, fmt.Errorf("%w: ?before=%q is not an event id (a whole number above 0); the next page's URL is in the reply's \"next\" and its Link header", errBadRequest, v[0])
		}
	}
	return before, limit, nil
}

// historyScan bounds how many events GET /history reads for one page of
// what the caller may see: a page of a credential with a narrow grant
// may end early (its "next" goes on where the reading stopped).
const historyScan = 20 * maxHistoryPage

// handleEveryHistory handles GET /history: the events of every lock the
// caller may read, newest first, a page at a time; with ?by=, only those
// a credential's requests caused.
func (s *server) handleEveryHistory(w http.ResponseWriter, r *http.Request) {
	before, limit, err := decodeHistoryQuery(r, "/history")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	by := r.URL.Query().Get("by")
	var out []lock.Event
	last, scanned, more := before, 0, true
	for more && len(out) < limit && scanned < historyScan {
		page, err := s.locks.History("", last, maxHistoryPage)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		more = len(page) == maxHistoryPage
		for i, e := range page {
			last, scanned = e.ID, scanned+1
			if ev, ok := shownEvent(callerOf(r), e); ok && (by == "" || e.Credential == by) {
				if out = append(out, ev); len(out) == limit {
					more = more || i < len(page)-1
					break
				}
			}
		}
	}
	reply := historyReply{Events: out}
	if reply.Events == nil {
		reply.Events = []lock.Event{}
	}
	if more && last > 0 {
		q := url.Values{"before": {strconv.FormatUint(last, 10)}, "limit": {strconv.Itoa(limit)}}
		if by != "" {
			q.Set("by", by)
		}
		reply.Next = "/history?" + q.Encode()
		w.Header().Set("Link", "<"+reply.Next+`>; rel="next"`)
	}
	s.writeJSON(w, r, http.StatusOK, reply)
}

// historyPath is the path of the page of the lock's events before the
// event with id.
func historyPath(name string, id uint64, limit int) string {
	return "/history/" + url.PathEscape(name) + "?before=" + strconv.FormatUint(id, 10) + "&limit=" + strconv.Itoa(limit)
}

// forcedBy says who forced a lock free, for its history: the request's
// user, if it sent one, and its address.
func forcedBy(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if user, _, ok := r.BasicAuth(); ok && user != "" {
		return user + " (" + host + ")"
	}
	return host
}

// Tuned numbers of the stream.
const (
	// defaultStreamBuffer is how many events a subscriber may fall
	// behind before it is cut off (server.streamBuffer): enough for a
	// burst of changes, and for the events that come while a resumed
	// stream sends what it missed.
	defaultStreamBuffer = 4096
	// backlogPage is how many missed events a resumed stream reads at a
	// time.
	backlogPage = 1000
	// keepAlive is how often an idle stream sends a comment, so that
	// proxies and the client see it is alive.
	keepAlive = 15 * time.Second
)

// eventsQuery is what GET /events asked for.
type eventsQuery struct {
	locks  []string // the locks followed, sorted; nil: every lock
	pool   string   // the pool whose members they are, if one was named
	after  uint64   // Last-Event-ID
	resume bool     // Last-Event-ID was sent
	who    *caller  // who follows: it is sent only what it may read
}

// follows reports whether q follows the lock of e, and may read it.
func (q eventsQuery) follows(e lock.Event) bool {
	if q.locks != nil {
		if _, ok := slices.BinarySearch(q.locks, e.Lock); !ok {
			return false
		}
	}
	return q.pool != "" && q.who.role(q.pool) >= access.Read || q.who.role(e.Lock) >= access.Read
}

// shown returns e as q's follower may see it: its key hidden unless it
// may lock its lock (or the pool it follows).
func (q eventsQuery) shown(e lock.Event) lock.Event {
	if q.pool != "" && q.who.role(q.pool) >= access.Lock {
		return e
	}
	if q.who.role(e.Lock) < access.Lock {
		e.Key = hiddenKey
	}
	return e
}

// decodeEventsQuery reads ?lock=, ?pool= and Last-Event-ID (the header,
// as EventSource sends it when it reconnects, or ?last_event_id=).
func (s *server) decodeEventsQuery(r *http.Request) (eventsQuery, error) {
	q := eventsQuery{who: callerOf(r)}
	query, err := checkQuery(r, "/events")
	if err != nil {
		return q, err
	}
	last := r.Header.Get("Last-Event-ID")
	if v, ok := query["last_event_id"]; ok {
		last = v[0]
	}
	if last != "" {
		if q.after, err = strconv.ParseUint(last, 10, 64); err != nil {
			return q, fmt.Errorf("%w: Last-Event-ID %q is not an event id (a whole number); send the id of the last event seen, or none to start from now", errBadRequest, last)
		}
		q.resume = true
	}
	_, byLock := query["lock"]
	_, byPool := query["pool"]
	switch {
	case byLock && byPool:
		return q, fmt.Errorf("%w: give ?lock= or ?pool=, not both", errBadRequest)
	case byLock:
		name := query.Get("lock")
		if name == "" || len(name) > maxFieldBytes {
			return q, fmt.Errorf("%w: ?lock= names a lock, 1 to %d bytes long", errBadRequest, maxFieldBytes)
		}
		if err := printable("?lock=", name); err != nil {
			return q, err
		}
		if err := s.allow(r, access.Read, name); err != nil {
			return q, err
		}
		q.locks = []string{name}
	case byPool:
		q.pool = query.Get("pool")
		if err := s.allow(r, access.Read, q.pool); err != nil {
			return q, err
		}
		p, err := s.locks.Pool(q.pool)
		if err != nil {
			return q, err
		}
		q.locks = p.Members // sorted
	}
	return q, nil
}

// handleEvents handles GET /events: one Server-Sent Event a change to a
// lock's history, with its id; with Last-Event-ID, first the kept events
// after it, a page at a time as they are read. It ends with an "end"
// event saying why: the client fell too far behind, or the server is
// stopping.
func (s *server) handleEvents(w http.ResponseWriter, r *http.Request) {
	q, err := s.decodeEventsQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var first *txn.Backlog // the first page of what was missed, read before answering
	if q.resume {
		page, err := s.locks.Backlog(r.Context(), txn.Mark{After: q.after}, backlogPage)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		first = &page
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{}) // a stream has no end to wait for
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	sw := &sseWriter{w: w, rc: rc, timeout: s.writeTimeout}
	w.WriteHeader(http.StatusOK)
	if first != nil && first.Forgotten > q.after {
		sw.end("gap", fmt.Sprintf("some events after %d are no longer kept (each lock keeps its last LOCKER_HISTORY events, for LOCKER_HISTORY_AGE): the ones still kept follow", q.after), false)
	}
	var sent stream.Seen // an event read twice goes out once
	var read txn.Mark    // where the pages got to
	if first != nil && !s.catchUp(r.Context(), sw, q, &sent, &read, first) {
		return
	}
	// What committed since the last page comes from the subscription, or
	// from the pages read after subscribing: nothing falls between the two.
	sub := s.hub.Subscribe(q.locks, s.streamBuffer)
	defer sub.Close()
	if first != nil && !s.catchUp(r.Context(), sw, q, &sent, &read, nil) {
		return
	}
	sw.comment("following") // the client hears the stream is open at once
	if sw.flush() != nil {
		return
	}
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for sw.err == nil {
		select {
		case <-sub.Ready:
			for _, e := range sub.Take() { // a burst goes out in one write
				if sent.Add(e.ID) && q.follows(e) {
					sw.event(q.shown(e))
				}
			}
			_ = sw.flush()
		case <-sub.Cut:
			for _, e := range sub.Take() {
				if sent.Add(e.ID) && q.follows(e) {
					sw.event(q.shown(e))
				}
			}
			sw.end("end", fmt.Sprintf("this stream fell %d events behind and was cut off; %s", s.streamBuffer, advice.Resume), true)
			return
		case <-tick.C:
			sw.comment("keep-alive")
			_ = sw.flush()
		case <-r.Context().Done():
			if errors.Is(context.Cause(r.Context()), engine.ErrClosed) {
				sw.end("end", "the server is stopping; "+advice.Resume, true)
			}
			return
		}
	}
}

// catchUp sends the kept events that q follows, a page at a time from
// page (the first, already read) or else from *read, each once, until a
// page is not full; *read becomes where the last page ended. It reports
// whether the stream goes on: not when the client went away, a write
// failed, or a page could not be read (the client is told to resume).
func (s *server) catchUp(ctx context.Context, sw *sseWriter, q eventsQuery, sent *stream.Seen, read *txn.Mark, page *txn.Backlog) bool {
	for {
		if page == nil {
			next, err := s.locks.Backlog(ctx, *read, backlogPage)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Error("reading the events a stream missed", "after", read.After, "err", err)
					sw.end("end", fmt.Sprintf("the events after %d could not be read (%v); %s", read.After, err, advice.Resume), true)
				}
				return false
			}
			page = &next
		}
		for _, e := range page.Events {
			if q.follows(e) && sent.Add(e.ID) {
				sw.event(q.shown(e))
			}
		}
		if sw.flush() != nil || ctx.Err() != nil {
			return false
		}
		*read = page.Next
		if !page.More {
			return true
		}
		page = nil
	}
}

// sseWriter writes Server-Sent Events, each write within timeout; after
// the first error it writes nothing more.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	buf     []byte
	err     error
}

// event writes a history event: its id, and its JSON as the data.
func (sw *sseWriter) event(e lock.Event) {
	data, err := json.Marshal(e)
	if err != nil {
		sw.err = err
		return
	}
	sw.buf = fmt.Appendf(sw.buf, "id: %d\ndata: %s\n\n", e.ID, data)
}

// end writes an event of its own kind, whose data is {"error": msg}, and
// flushes; last says the stream ends with it.
func (sw *sseWriter) end(kind, msg string, last bool) {
	data, _ := json.Marshal(map[string]any{"error": msg, "last": last})
	sw.buf = fmt.Appendf(sw.buf, "event: %s\ndata: %s\n\n", kind, data)
	_ = sw.flush()
}

// comment writes a line the client ignores.
func (sw *sseWriter) comment(text string) { sw.buf = fmt.Appendf(sw.buf, ": %s\n\n", text) }

// flush sends what was written so far.
func (sw *sseWriter) flush() error {
	if sw.err != nil || len(sw.buf) == 0 {
		return sw.err
	}
	_ = sw.rc.SetWriteDeadline(time.Now().Add(sw.timeout))
	if _, sw.err = sw.w.Write(sw.buf); sw.err == nil {
		sw.err = sw.rc.Flush()
	}
	sw.buf = sw.buf[:0]
	return sw.err
}

// shownEvent returns e as r's caller may see it (its key hidden unless
// the caller may lock its lock), and whether the caller may see it at
// all.
func shownEvent(c *caller, e lock.Event) (lock.Event, bool) {
	switch role := c.role(e.Lock); {
	case role < access.Read:
		return e, false
	case role < access.Lock:
		e.Key = hiddenKey
	}
	return e, true
}
