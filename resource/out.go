package resource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/locker-ci/locker/internal/client"
)

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
	c, err := newClient(req.Source)
	if err != nil {
		return Response{}, err
	}
	var mu sync.Mutex // the wait's reports come from another goroutine
	opts := client.Options{Deadline: deadline, ReportFirst: reportFirst, ReportEvery: reportEvery,
		Progress: func(msg string) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintln(stderr, msg)
		}}
	var l client.Reply
	if p.LockOp == "lock" {
		l, err = acquire(ctx, c, name, p, buildNote(env), opts)
	} else {
		l, err = release(ctx, c, name, p, opts)
	}
	var to *client.TimedOut
	if errors.As(err, &to) {
		return Response{}, fmt.Errorf("gave up on %s %q after %v: %w", p.LockOp, name, timeout, to.Last)
	}
	if err != nil {
		return Response{}, err
	}
	requestor := p.requestor()
	if requestor == "" {
		requestor = p.Key
	}
	return Response{Version: version(l), Metadata: []MetadataField{
		{Name: "lock_name", Value: name},
		{Name: "key", Value: p.Key},
		{Name: "locked_by", Value: requestor},
		{Name: "token", Value: strconv.FormatUint(l.Token, 10)},
	}}, nil
}

// acquire takes the lock called name, waiting for it until it is granted,
// ctx is done, or the deadline (unless zero) passes.
func acquire(ctx context.Context, c *client.Client, name string, p OutParams, defaultNote string, o client.Options) (client.Reply, error) {
	r := client.Request{Key: p.Key, Requestor: p.requestor(), TTL: p.lease(), Note: cmp.Or(p.Note, defaultNote)}
	if r.TTL != "" && p.TTL == "" {
		o.Progress(fmt.Sprintf("taking %q with a lease of %s, the default: set params.ttl for another, or ttl: none to hold it until it is unlocked", name, r.TTL))
	}
	l, err := c.Lock(ctx, name, r, true, o)
	if err == nil {
		o.Progress(fmt.Sprintf("locked %q with key %q", name, p.Key))
	}
	return l, err
}

// release gives back the lock called name, retrying while the server cannot
// be reached, until ctx is done or the deadline passes.
func release(ctx context.Context, c *client.Client, name string, p OutParams, o client.Options) (client.Reply, error) {
	l, err := c.Unlock(ctx, name, client.Request{Key: p.Key, Requestor: p.requestor(), All: p.All}, o)
	if err != nil {
		return client.Reply{}, err
	}
	return released(l, name, p, o)
}

// released reads an unlock's answer. One that gave back nothing fails,
// with the server's reason, unless the params allow it: an unlock with a
// misspelt key or locked_by would otherwise pass and leave the lock held.
// (A server older than the "released" field is taken at its word.)
func released(l client.Reply, name string, p OutParams, o client.Options) (client.Reply, error) {
	if l.Released != nil && *l.Released == 0 {
		if !p.AllowNotHeld {
			return client.Reply{}, fmt.Errorf("unlock of %q gave back nothing: %s. Check params.key and params.locked_by; if this step may run when the lock is not held (an ensure: after a lock that failed), set params.allow_not_held: true",
				name, l.Response)
		}
		o.Progress(fmt.Sprintf("nothing to unlock on %q with key %q (allowed by allow_not_held): %s", name, p.Key, l.Response))
		return l, nil
	}
	o.Progress(fmt.Sprintf("unlocked %q with key %q", name, p.Key))
	return l, nil
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
