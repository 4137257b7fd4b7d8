package resource

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Waiting is done in rounds of at most waitRound, so that a proxy in front
// of the server never sees a request longer than that; the server cuts
// longer waits to its LOCKER_MAX_WAIT (15m by default) anyway.
const waitRound = 5 * time.Minute

// After an error worth retrying (the server is down, or failed), out waits
// firstBackoff, doubling up to maxBackoff.
const (
	firstBackoff = time.Second
	maxBackoff   = 30 * time.Second
)

// pollInterval is how often out asks a server that answers 423 without
// waiting (the original locker had no ?wait=).
const pollInterval = 10 * time.Second

// While a lock waits, out says who holds it and its place in the queue
// after reportFirst (unless granted by then), then every reportEvery.
// Variables, so that tests can shorten them.
var (
	reportFirst = time.Second
	reportEvery = 30 * time.Second
)

// unlockPatience bounds how long an unlock without a timeout keeps retrying
// an unreachable server.
const unlockPatience = 10 * time.Minute

// Out takes or gives back the lock, as req.Params.LockOp says. env gives
// Concourse's build variables, for the default note.
func Out(ctx context.Context, req OutRequest, env func(string) string, stderr io.Writer) (Response, error) {
	if err := errors.Join(req.Source.Validate(), req.Params.Validate()); err != nil {
		return Response{}, err
	}
	name, err := lockName(ctx, req.Source)
	if err != nil {
		return Response{}, err
	}
	p := req.Params
	timeout, _ := parseDuration(p.Timeout) // checked by Validate
	if timeout == 0 && p.LockOp == "unlock" {
		timeout = unlockPatience
	}
	var deadline time.Time // zero: wait as long as it takes
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	c := newClient(req.Source)
	c.idempotencyKey = newIdempotencyKey()
	stderr = &syncWriter{w: stderr} // the wait's reports come from another goroutine
	var l lockInfo
	if p.LockOp == "lock" {
		l, err = lock(ctx, c, name, p, buildNote(env), deadline, stderr)
	} else {
		l, err = unlock(ctx, c, name, p, deadline, stderr)
	}
	var to timedOut
	if errors.As(err, &to) {
		return Response{}, fmt.Errorf("gave up on %s %q after %v: %w", p.LockOp, name, timeout, to.last)
	}
	if err != nil {
		return Response{}, err
	}
	requestor := p.requestor()
	if requestor == "" {
		requestor = p.Key
	}
	return Response{Version: l.version(), Metadata: []MetadataField{
		{Name: "lock_name", Value: name},
		{Name: "key", Value: p.Key},
		{Name: "locked_by", Value: requestor},
		{Name: "token", Value: strconv.FormatUint(l.Token, 10)},
	}}, nil
}

// lock takes the lock called name, waiting for it in rounds until it is
// granted, ctx is done, or the deadline (unless zero) passes.
func lock(ctx context.Context, c *client, name string, p OutParams, defaultNote string, deadline time.Time, stderr io.Writer) (lockInfo, error) {
	body := map[string]any{"key": p.Key}
	if r := p.requestor(); r != "" {
		body["lock_by"] = r
	}
	if ttl := p.lease(); ttl != "" {
		body["ttl"] = ttl
		if p.TTL == "" {
			fmt.Fprintf(stderr, "taking %q with a lease of %s, the default: set params.ttl for another, or ttl: none to hold it until it is unlocked\n", name, ttl)
		}
	}
	if note := cmp.Or(p.Note, defaultNote); note != "" {
		body["note"] = note
	}
	stopReports := reportWhileWaiting(ctx, c, name, p, stderr)
	defer stopReports()
	backoff := firstBackoff
	var last error
	for {
		wait := waitRound
		if !deadline.IsZero() {
			wait = min(wait, time.Until(deadline).Truncate(time.Millisecond))
		}
		if ctx.Err() != nil {
			return lockInfo{}, ctx.Err()
		}
		if wait <= 0 {
			return lockInfo{}, timedOut{last}
		}
		// The request outlives the wait, so that the server's answer (who
		// holds the lock) arrives even when the wait runs out.
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, wait+requestTimeout)
		data, err := c.do(rctx, http.MethodPut, lockPath(name), url.Values{"wait": {wait.String()}}, body)
		cancel()
		if err == nil {
			fmt.Fprintf(stderr, "locked %q with key %q\n", name, p.Key)
			return decodeLock(data)
		}
		last = err
		var ae *apiError
		switch {
		case errors.As(err, &ae) && ae.status == http.StatusLocked:
			backoff = firstBackoff
			if time.Since(start) < wait/2 {
				// The server did not wait: it predates ?wait=. Poll instead.
				fmt.Fprintf(stderr, "the server answered at once; asking again in %v\n", pollInterval)
				if err := sleep(ctx, pollInterval, deadline); err != nil {
					return lockInfo{}, stopped(err, last)
				}
			}
		case retryable(err) && ctx.Err() == nil:
			fmt.Fprintf(stderr, "could not lock %q: %v; trying again in %v\n", name, err, backoff)
			if err := sleep(ctx, backoff, deadline); err != nil {
				return lockInfo{}, stopped(err, last)
			}
			backoff = min(2*backoff, maxBackoff)
		default:
			return lockInfo{}, err
		}
	}
}

// reportWhileWaiting says on stderr, after reportFirst and then every
// reportEvery until stopped, who holds the lock called name and where this
// request stands in its queue.
func reportWhileWaiting(ctx context.Context, c *client, name string, p OutParams, stderr io.Writer) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTimer(reportFirst)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			reportWait(ctx, c, name, p, stderr)
			t.Reset(reportEvery)
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// reportWait says on stderr who holds the lock and where this request
// stands in its queue.
func reportWait(ctx context.Context, c *client, name string, p OutParams, stderr io.Writer) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	l, _, err := c.getLock(rctx, name)
	if err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(stderr, "still waiting for %q (could not see who holds it: %v)\n", name, err)
		}
		return
	}
	msg := fmt.Sprintf("waiting for %q: held with key %q by %s", name, l.Key, cmp.Or(l.holdersString(), "no one"))
	me := cmp.Or(p.requestor(), p.Key)
	place := 0
	for i, w := range l.Waiting {
		if w.Requestor == me && w.Key == p.Key {
			place = i + 1
			break
		}
	}
	if place > 0 {
		msg += fmt.Sprintf("; this job is number %d of %d in the queue", place, len(l.Waiting))
	} else if len(l.Waiting) > 0 {
		msg += fmt.Sprintf("; %d request(s) in the queue", len(l.Waiting))
	}
	fmt.Fprintln(stderr, msg)
}

// syncWriter lets several goroutines write whole lines to one writer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// unlock gives back the lock called name, retrying while the server cannot
// be reached, until ctx is done or the deadline passes.
func unlock(ctx context.Context, c *client, name string, p OutParams, deadline time.Time, stderr io.Writer) (lockInfo, error) {
	body := map[string]any{"key": p.Key}
	if r := p.requestor(); r != "" {
		body["lock_by"] = r
	}
	if p.All {
		body["all"] = true
	}
	backoff := firstBackoff
	for {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		data, err := c.do(rctx, http.MethodDelete, lockPath(name), nil, body)
		cancel()
		if err == nil {
			return released(data, name, p, stderr)
		}
		if !retryable(err) || ctx.Err() != nil {
			return lockInfo{}, err
		}
		fmt.Fprintf(stderr, "could not unlock %q: %v; trying again in %v\n", name, err, backoff)
		if serr := sleep(ctx, backoff, deadline); serr != nil {
			return lockInfo{}, stopped(serr, err)
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// released reads an unlock's answer. One that gave back nothing fails,
// with the server's reason, unless the params allow it: an unlock with a
// misspelt key or locked_by would otherwise pass and leave the lock held.
// (A server older than the "released" field is taken at its word.)
func released(data []byte, name string, p OutParams, stderr io.Writer) (lockInfo, error) {
	l, err := decodeLock(data)
	if err != nil {
		return lockInfo{}, err
	}
	var reply struct {
		Released *int   `json:"released"`
		Response string `json:"response"`
	}
	_ = json.Unmarshal(data, &reply) // decodeLock took it: it is JSON
	if reply.Released != nil && *reply.Released == 0 {
		if !p.AllowNotHeld {
			return lockInfo{}, fmt.Errorf("unlock of %q gave back nothing: %s. Check params.key and params.locked_by; if this step may run when the lock is not held (an ensure: after a lock that failed), set params.allow_not_held: true",
				name, reply.Response)
		}
		fmt.Fprintf(stderr, "nothing to unlock on %q with key %q (allowed by allow_not_held): %s\n", name, p.Key, reply.Response)
		return l, nil
	}
	fmt.Fprintf(stderr, "unlocked %q with key %q\n", name, p.Key)
	return l, nil
}

// newIdempotencyKey returns a key for this step's requests: random, so
// that another step (or another run of this one) never shares it.
func newIdempotencyKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand does not fail on the systems Go supports
	return hex.EncodeToString(b)
}

// buildNote returns a link to the running build, from the variables
// Concourse sets for resources, or "" outside a build.
func buildNote(env func(string) string) string {
	base := strings.TrimRight(env("ATC_EXTERNAL_URL"), "/")
	if base == "" {
		return ""
	}
	team, pipeline, job, build := env("BUILD_TEAM_NAME"), env("BUILD_PIPELINE_NAME"), env("BUILD_JOB_NAME"), env("BUILD_NAME")
	if team != "" && pipeline != "" && job != "" && build != "" {
		return fmt.Sprintf("%s/teams/%s/pipelines/%s/jobs/%s/builds/%s", base,
			url.PathEscape(team), url.PathEscape(pipeline), url.PathEscape(job), url.PathEscape(build))
	}
	if id := env("BUILD_ID"); id != "" {
		return base + "/builds/" + url.PathEscape(id)
	}
	return ""
}

func decodeLock(data []byte) (lockInfo, error) {
	var l lockInfo
	if err := json.Unmarshal(data, &l); err != nil {
		return lockInfo{}, fmt.Errorf("the locker's answer is not a lock: %w", err)
	}
	return l, nil
}

// errDeadline stops a sleep that would end past the deadline.
var errDeadline = errors.New("deadline reached")

// timedOut is the last error of a put whose timeout ran out.
type timedOut struct{ last error }

func (e timedOut) Error() string { return e.last.Error() }
func (e timedOut) Unwrap() error { return e.last }

// stopped returns why a retry loop stopped: the timeout ran out (last
// says what was wrong then), or the build was aborted.
func stopped(sleepErr, last error) error {
	if errors.Is(sleepErr, errDeadline) {
		return timedOut{last}
	}
	return sleepErr
}

// sleep waits for d, or until the deadline (unless zero) if that comes
// first; it fails at once if the deadline has passed, or when ctx is done.
func sleep(ctx context.Context, d time.Duration, deadline time.Time) error {
	if !deadline.IsZero() {
		left := time.Until(deadline)
		if left <= 0 {
			return errDeadline
		}
		d = min(d, left)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
