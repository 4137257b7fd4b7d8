package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// A lock's history: every change that takes or ends a hold adds its
// events (internal/lock.Events) in the same transaction, so that an event
// is kept exactly when its change is.

// recorder is the transaction every change's steps run over: it passes
// each lock it is given on to the store's transaction, with the events of
// the change.
type recorder struct {
	txn.Tx
	ending lock.Ending // how the holds it ends now end, when not by their leases
}

// Set records the events of changing the lock called name to l, then
// changes it.
func (r *recorder) Set(name string, l lock.Lock) {
	now := r.Now()
	for _, e := range lock.Events(name, r.Tx.Lock(name), l, now, r.ending) {
		if e.Kind == lock.Taken {
			e.Waited = waited(r.Tx.Queue(name), e, now)
		}
		r.Tx.Record(e)
	}
	r.Tx.Set(name, l)
}

// waited is how long the holder of a taking waited in the queue: since
// its waiter came, if it had one.
func waited(queue []txn.Waiter, e lock.Event, now time.Time) lock.Duration {
	for _, w := range queue {
		if w.Waiting() && w.Req.Requestor == e.Holder && w.Req.Key == e.Key {
			return lock.Duration(now.Sub(w.Since))
		}
	}
	return 0
}

// ending makes the holds tx ends from now on end as why says, until the
// function it returns is called.
func ending(tx txn.Tx, why lock.Ending) (restore func()) {
	r, ok := tx.(*recorder)
	if !ok {
		return func() {}
	}
	old := r.ending
	r.ending = why
	return func() { r.ending = old }
}

// maxHistoryPage is the most events a page of GET /history may ask for.
const maxHistoryPage = 1000

// defaultHistoryPage is a page's size without ?limit=.
const defaultHistoryPage = 50

// History returns up to limit of the events of the lock called name with
// IDs below before (0: the newest), newest first.
func (e *engine) History(name string, before uint64, limit int) ([]lock.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), changeTimeout)
	defer cancel()
	events, err := e.store.History(ctx, name, before, limit)
	if err != nil {
		return nil, e.fail(name, err)
	}
	return events, nil
}

// historyReply is the answer to GET /history/<name>.
type historyReply struct {
	Lock   string       `json:"lock"`
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
		before, limit, err = decodeHistoryQuery(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	events, err := s.locks.History(name, before, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
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
func decodeHistoryQuery(r *http.Request) (before uint64, limit int, err error) {
	query, err := checkQuery(r, "/history/<name>")
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
