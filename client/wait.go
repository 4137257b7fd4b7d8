package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Waiting is done in rounds of at most waitRound, so that a proxy in front
// of the server never sees a request longer than that; the server cuts
// longer waits to its LOCKER_MAX_WAIT (15m by default) anyway.
const waitRound = 5 * time.Minute

// After an error worth retrying (the server is down, or failed), a call
// waits firstBackoff, doubling up to maxBackoff.
const (
	firstBackoff = time.Second
	maxBackoff   = 30 * time.Second
)

// pollInterval is how often Lock asks a server that answers 423 without
// waiting (the original locker had no ?wait=).
const pollInterval = 10 * time.Second

// Request is one change to a lock, sent as many times as it takes.
type Request struct {
	// Key is what the holders of a lock share: a request with another key
	// is refused, or waits, until they have all let go.
	Key       string
	Requestor string // lock_by; "" sends none, and the server takes the key
	// TTL is the lease, e.g. "10m", of Lock, LockSet, Claim and the
	// renewals: the server frees the lock when it runs out unless renewed.
	// "" takes the server's default (none, unless it sets
	// LOCKER_DEFAULT_TTL).
	TTL   string
	Note  string // Lock, LockSet, Claim: shown to others, e.g. a build's URL
	All   bool   // Unlock, UnlockSet: every count the requestor holds
	Limit int    // Lock, LockSet: the most holds it may have at once; 0 for no cap
	// Supersede, on Lock, LockSet or Claim with Options.Wait, answers the
	// requestor's earlier waiting requests for the same lock, set or pool
	// (409, "superseded by a newer request") and waits in their stead.
	Supersede bool
	// Priority, on Lock, LockSet or Claim: a waiting request of higher
	// priority is served before those of lower priority (default 0).
	Priority int
	// Build, on Lock, LockSet or Claim, is the CI build the request runs
	// in: the hold belongs to it, and the server shows it.
	Build *Build
	// EndWithBuild, with Build, names the build outcomes that end the
	// hold (e.g. aborted, errored), when the server can look the build up
	// (LOCKER_CONCOURSE_URL); none for a hold that outlives its build.
	EndWithBuild []string
	// IdempotencyKey goes with every try, so that a retry after a lost
	// reply is not counted twice. A call makes one when it is "": set it
	// to carry one change across calls (e.g. across restarts of a program
	// that waits for a lock).
	IdempotencyKey string
}

// Options say whether a call waits for its locks, how long it keeps
// trying, and whom it tells.
type Options struct {
	// Wait makes Lock, LockSet and Claim wait in the queue until the
	// locks are granted, ctx is done or Deadline passes; without it, a
	// refusal is returned at once: an *Error with Status 423.
	Wait bool
	// Deadline ends the waiting and the retrying with a *TimedOut; zero
	// never ends them (ctx still does).
	Deadline time.Time
	// Progress, when set, is told of each retry and, while a lock is
	// waited for, who holds it and where the request stands in the queue:
	// after ReportFirst (1 s if zero), then every ReportEvery (30 s).
	Progress                 func(msg string)
	ReportFirst, ReportEvery time.Duration
}

func (o Options) say(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(fmt.Sprintf(format, args...))
	}
}

// TimedOut is the error of a call whose Deadline passed: Last is the last
// thing that went wrong (a 423 saying who holds the lock, or why the
// server could not be reached).
type TimedOut struct {
	Last error // nil when nothing went wrong before the time ran out
}

// Error says what went wrong last, or that the time ran out.
func (e *TimedOut) Error() string {
	if e.Last == nil {
		return "the time to wait ran out"
	}
	return e.Last.Error()
}

// Unwrap returns Last, for errors.As and IsStatus: a wait that ran out
// while the lock was held is a 423.
func (e *TimedOut) Unwrap() error { return e.Last }

// Lock takes the lock called name for r.Key and r.Requestor. With
// o.Wait, it waits in the lock's queue, round after round, until it is
// granted, ctx is done or o.Deadline passes (a *TimedOut); without, a
// refusal (an *Error with Status 423) is returned at once. Network errors
// and 5xx answers are retried, with the same Idempotency-Key, until the
// deadline: a lost answer does not count a take twice.
func (c *Client) Lock(ctx context.Context, name string, r Request, o Options) (Reply, error) {
	data, err := c.take(ctx, lockPath(name), c.lockReport(name), strconv.Quote(name), r.body(takeFields), r, o)
	if err != nil {
		return Reply{}, err
	}
	return decodeReply(name, data)
}

// LockSet takes every lock in names, all in one change or none (PUT
// /locks), as Lock takes one, and returns each one by name.
func (c *Client) LockSet(ctx context.Context, names []string, r Request, o Options) (map[string]Lock, error) {
	if len(names) == 0 {
		return nil, errors.New("LockSet needs the names of the locks to take")
	}
	body := r.body(takeFields)
	body["locks"] = names
	data, err := c.take(ctx, "/locks", c.lockReport(names[0]), quoteAll(names), body, r, o)
	if err != nil {
		return nil, err
	}
	return decodeSet(data)
}

// Claim takes count free members of the pool called pool, in one change
// (PUT /pool/<pool>/claim), as Lock takes a lock, and returns the members
// it got, by name. Give them back with Unlock or UnlockSet.
func (c *Client) Claim(ctx context.Context, pool string, count int, r Request, o Options) (map[string]Lock, error) {
	if r.Limit > 0 {
		return nil, errors.New("Request.Limit caps a lock's holders, and a claim on a pool takes none: leave it 0")
	}
	body := r.body(claimFields)
	body["count"] = count
	data, err := c.take(ctx, poolPath(pool)+"/claim", c.poolReport(pool, count), fmt.Sprintf("%d of the pool %q", count, pool), body, r, o)
	if err != nil {
		return nil, err
	}
	return decodeSet(data)
}

// take sends the PUT at path with body until it is answered: Lock's loop.
// While it waits, report tells o.Progress where it stands (see
// reportWhileWaiting);
// label names what it takes in messages. A grant that ended before its
// answer arrived (the server's 409) is asked for again, with a new
// Idempotency-Key, unless the caller chose the key.
func (c *Client) take(ctx context.Context, path string, report reporter, label string, body map[string]any, r Request, o Options) ([]byte, error) {
	if r.Supersede && !o.Wait {
		return nil, errors.New("Request.Supersede takes the place of the requestor's earlier waiting requests, so it is for a request that waits: set Options.Wait")
	}
	ownKey := r.IdempotencyKey == ""
	r.IdempotencyKey = cmp.Or(r.IdempotencyKey, NewIdempotencyKey())
	wait := o.Wait
	if wait {
		defer reportWhileWaiting(ctx, report, r, o)()
	}
	backoff := firstBackoff
	var last error
	for {
		round := time.Duration(0)
		if wait {
			round = waitRound
			if !o.Deadline.IsZero() {
				round = min(round, waitLeft(o.Deadline))
				if round <= 0 {
					return nil, &TimedOut{last}
				}
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// The request outlives the wait, so that the server's answer (who
		// holds the lock) arrives even when the wait runs out.
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, round+RequestTimeout)
		var query url.Values
		if round > 0 {
			query = url.Values{"wait": {round.String()}}
		}
		data, err := c.Do(rctx, http.MethodPut, path, query, body, r.IdempotencyKey)
		cancel()
		if err == nil {
			return data, nil
		}
		last = err
		switch {
		case IsStatus(err, http.StatusLocked) && !wait:
			return nil, err
		case IsStatus(err, http.StatusLocked):
			backoff = firstBackoff
			if time.Since(start) < round/2 {
				// The server did not wait: it predates ?wait=. Poll instead.
				o.say("the server answered at once; asking again in %v", pollInterval)
				if err := sleep(ctx, pollInterval, o.Deadline); err != nil {
					return nil, stopped(err, last)
				}
			}
		case ownKey && grantEnded(err):
			// Its lease ran out while the answer was lost (the request
			// was sent again) or on its way: the lock is not held.
			o.say("the grant of %s ended before its answer arrived (%v); asking again with a new Idempotency-Key", label, err)
			r.IdempotencyKey = NewIdempotencyKey()
			backoff = firstBackoff
		case Retryable(err) && ctx.Err() == nil:
			if backoff, err = o.retry(ctx, "take "+label, err, backoff); err != nil {
				return nil, err
			}
		default:
			return nil, err
		}
	}
}

// waitLeft is the wait to ask the server for until deadline: what is left
// of it, to the millisecond, and, from a second, rounded up to a tenth
// of one, so that a refusal says the wait that was asked for ("timed out
// after 5s", not "after 4.999s").
func waitLeft(deadline time.Time) time.Duration {
	left := time.Until(deadline)
	if left >= time.Second-100*time.Millisecond {
		return (left + 99*time.Millisecond).Truncate(100 * time.Millisecond)
	}
	return left.Truncate(time.Millisecond)
}

// retry says that the call will be tried again after backoff, sleeps, and
// returns the next backoff, or why to stop trying. The first retry says
// how long the trying goes on.
func (o Options) retry(ctx context.Context, action string, err error, backoff time.Duration) (time.Duration, error) {
	switch {
	case backoff > firstBackoff:
		o.say("still could not %s: %v; trying again in %v", action, err, backoff)
	case o.Deadline.IsZero():
		o.say("could not %s: %v; trying again in %v, and on until it works", action, err, backoff)
	default:
		o.say("could not %s: %v; trying again in %v, and on until %s", action, err, backoff, o.Deadline.Format("15:04:05"))
	}
	if serr := sleep(ctx, backoff, o.Deadline); serr != nil {
		return 0, stopped(serr, err)
	}
	return min(2*backoff, maxBackoff), nil
}

// Unlock gives back one of the requestor's counts of the lock called name
// (every count with r.All), retrying while the server cannot be reached.
// The reply's Released says how many it gave back: 0 when the requestor
// held none.
func (c *Client) Unlock(ctx context.Context, name string, r Request, o Options) (Reply, error) {
	return c.changeOne(ctx, http.MethodDelete, "unlock", name, nil, r.body(sendAll), r, o)
}

// Renew extends the requestor's lease on the lock called name to r.TTL
// from now, retrying while the server cannot be reached.
func (c *Client) Renew(ctx context.Context, name string, r Request, o Options) (Reply, error) {
	return c.changeOne(ctx, http.MethodPatch, "renew", name, nil, r.body(sendTTL), r, o)
}

// ForceUnlock frees the lock called name, whoever holds it.
func (c *Client) ForceUnlock(ctx context.Context, name string, o Options) (Reply, error) {
	return c.ForceUnlockWith(ctx, name, Forcing{}, o)
}

// Forcing says why a lock is forced free and, optionally, which holding
// of it.
type Forcing struct {
	// Reason is kept with the forced release in the lock's history, the
	// stream and the server's log.
	Reason string
	// Token, unless 0, frees the lock only while it is held at this
	// fencing token (If-Match): one that changed hands since it was read
	// is refused with an *Error of status 412, and the next holder keeps
	// it.
	Token uint64
}

// ForceUnlockWith frees the lock called name, whoever holds it, as f
// says.
func (c *Client) ForceUnlockWith(ctx context.Context, name string, f Forcing, o Options) (Reply, error) {
	body := map[string]any{}
	if f.Reason != "" {
		body["reason"] = f.Reason
	}
	var header http.Header
	if f.Token != 0 {
		header = http.Header{"If-Match": {`"` + strconv.FormatUint(f.Token, 10) + `"`}}
	}
	data, err := c.change(ctx, http.MethodDelete, "force-unlock", strconv.Quote(name), lockPath(name), url.Values{"force": {"true"}}, body, "", header, o)
	if err != nil {
		return Reply{}, err
	}
	return decodeReply(name, data)
}

// UnlockSet gives back the requestor's count of every lock in names, in
// one change (DELETE /locks), as Unlock does for one, and says how many
// counts it gave back of each.
func (c *Client) UnlockSet(ctx context.Context, names []string, r Request, o Options) (map[string]Lock, map[string]int, error) {
	data, err := c.changeSet(ctx, http.MethodDelete, "unlock", names, r.body(sendAll), o, r.IdempotencyKey)
	if err != nil {
		return nil, nil, err
	}
	var reply struct {
		Released map[string]int `json:"released"`
	}
	_ = json.Unmarshal(data, &reply) // decodeSet read it whole already
	views, err := decodeSet(data)
	return views, reply.Released, err
}

// RenewSet extends the requestor's lease on every lock in names, in one
// change (PATCH /locks), as Renew does for one.
func (c *Client) RenewSet(ctx context.Context, names []string, r Request, o Options) (map[string]Lock, error) {
	data, err := c.changeSet(ctx, http.MethodPatch, "renew", names, r.body(sendTTL), o, r.IdempotencyKey)
	if err != nil {
		return nil, err
	}
	return decodeSet(data)
}

// changeOne sends a change to the lock called name.
func (c *Client) changeOne(ctx context.Context, method, what, name string, query url.Values, body any, r Request, o Options) (Reply, error) {
	data, err := c.change(ctx, method, what, strconv.Quote(name), lockPath(name), query, body, r.IdempotencyKey, nil, o)
	if err != nil {
		return Reply{}, err
	}
	return decodeReply(name, data)
}

// changeSet sends a change with body to every lock in names, and returns
// the answer.
func (c *Client) changeSet(ctx context.Context, method, what string, names []string, body map[string]any, o Options, idem string) ([]byte, error) {
	body["locks"] = names
	return c.change(ctx, method, what, quoteAll(names), "/locks", nil, body, idem, nil, o)
}

// change sends a change that does not wait to path, with header, retrying
// it with one Idempotency-Key while the server cannot be reached; label
// names its locks in messages.
func (c *Client) change(ctx context.Context, method, what, label, path string, query url.Values, body any, idem string, header http.Header, o Options) ([]byte, error) {
	header = withIdempotencyKey(header, cmp.Or(idem, NewIdempotencyKey()))
	backoff := firstBackoff
	for {
		rctx, cancel := context.WithTimeout(ctx, RequestTimeout)
		data, err := c.do(rctx, method, path, query, body, header)
		cancel()
		if err == nil {
			return data, nil
		}
		if !Retryable(err) || ctx.Err() != nil {
			return nil, err
		}
		if backoff, err = o.retry(ctx, what+" "+label, err, backoff); err != nil {
			return nil, err
		}
	}
}

// errDeadline stops a sleep that would end past the deadline.
var errDeadline = errors.New("deadline reached")

// stopped returns why a retry loop stopped: the deadline passed (last
// says what was wrong then), or ctx was done.
func stopped(sleepErr, last error) error {
	if errors.Is(sleepErr, errDeadline) {
		return &TimedOut{last}
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
