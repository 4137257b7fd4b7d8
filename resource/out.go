package resource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/locker-ci/locker/client"
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

// Out takes or gives back the lock, as req.Params.LockOp says, or claims
// or gives back a member of a pool. env gives Concourse's build variables,
// for the default note; dir is the build's directory, where the get step
// that params.release names is.
func Out(ctx context.Context, req OutRequest, dir string, env func(string) string, stderr io.Writer) (Response, error) {
	if err := errors.Join(req.Source.Validate(), req.Params.Validate(req.Source.Pool != "")); err != nil {
		return Response{}, err
	}
	p := req.Params
	name := ""
	switch {
	case p.Claim:
		name = "a member of the pool " + strconv.Quote(req.Source.Pool)
	case p.Release != "":
		data, err := os.ReadFile(filepath.Join(dir, p.Release, "name")) // the build's own file
		if err != nil {
			return Response{}, fmt.Errorf("params.release: reading the member's name: %w (name the get step of the put that claimed it)", err)
		}
		name = strings.TrimSpace(string(data))
	default:
		var err error
		if name, err = lockName(ctx, req.Source); err != nil {
			return Response{}, err
		}
	}
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
	if len(p.Locks) > 0 && !slices.Contains(p.Locks, name) {
		return Response{}, fmt.Errorf("params.locks %q does not name the resource's own lock %q: add it (check and get report on it)", p.Locks, name)
	}
	take := p.take(env)
	if len(p.EndWithBuild) > 0 && take.Build == nil && p.LockOp != "unlock" {
		opts.Progress("params.end_with_build is set, but this step runs outside a Concourse build (BUILD_ID is not set): the hold does not end with a build")
	}
	var l client.Reply
	switch {
	case p.Claim:
		name, l, err = claim(ctx, c, req.Source.Pool, p, take, opts)
	case len(p.Locks) > 0:
		l, err = setOp(ctx, c, name, p, take, opts)
	case p.LockOp == "lock":
		l, err = acquire(ctx, c, name, p, take, opts)
	default:
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
	v := version(l.Lock)
	if req.Source.Pool != "" {
		v.Lock = name
	}
	meta := []MetadataField{
		{Name: "lock_name", Value: name},
		{Name: "key", Value: p.Key},
		{Name: "locked_by", Value: requestor},
		{Name: "token", Value: strconv.FormatUint(l.Token, 10)},
	}
	if len(p.Locks) > 0 {
		meta = append(meta, MetadataField{Name: "locks", Value: strings.Join(slices.Sorted(slices.Values(p.Locks)), " ")})
	}
	return Response{Version: v, Metadata: meta}, nil
}

// setOp takes or gives back every lock in p.Locks in one change, and
// returns the resource's own, name. An unlock that gave back nothing of
// any fails, unless the params allow it, as for one lock.
func setOp(ctx context.Context, c *client.Client, name string, p OutParams, take client.Request, o client.Options) (client.Reply, error) {
	names := slices.Sorted(slices.Values(p.Locks))
	if p.LockOp == "lock" {
		o.Wait = true
		views, err := c.LockSet(ctx, names, take, o)
		if err != nil {
			return client.Reply{}, err
		}
		o.Progress(fmt.Sprintf("locked %s with key %q", strings.Join(names, ", "), p.Key))
		return client.Reply{Lock: views[name]}, nil
	}
	views, released, err := c.UnlockSet(ctx, names, client.Request{Key: p.Key, Requestor: p.requestor(), All: p.All}, o)
	if err != nil {
		return client.Reply{}, err
	}
	total := 0
	for _, n := range released {
		total += n
	}
	if total == 0 && !p.AllowNotHeld {
		return client.Reply{}, fmt.Errorf("unlock of %s gave back nothing: key %q (locked_by %q) held none of them. Check params.key and params.locked_by; if this step may run when the locks are not held (an ensure: after a lock that failed), set params.allow_not_held: true",
			strings.Join(names, ", "), p.Key, p.requestor())
	}
	o.Progress(fmt.Sprintf("unlocked %s with key %q", strings.Join(names, ", "), p.Key))
	return client.Reply{Lock: views[name]}, nil
}

// claim claims a free member of pool, waiting for one until it is granted,
// ctx is done, or the deadline (unless zero) passes, and returns its name.
func claim(ctx context.Context, c *client.Client, pool string, p OutParams, take client.Request, o client.Options) (string, client.Reply, error) {
	o.Wait = true
	got, err := c.Claim(ctx, pool, 1, take, o)
	if err != nil {
		return "", client.Reply{}, err
	}
	for member, view := range got {
		o.Progress(fmt.Sprintf("claimed %q from the pool %q with key %q", member, pool, p.Key))
		return member, client.Reply{Lock: view}, nil
	}
	return "", client.Reply{}, fmt.Errorf("the claim on the pool %q was answered with no member", pool)
}

// acquire takes the lock called name, waiting for it until it is granted,
// ctx is done, or the deadline (unless zero) passes.
func acquire(ctx context.Context, c *client.Client, name string, p OutParams, take client.Request, o client.Options) (client.Reply, error) {
	if take.TTL != "" && p.TTL == "" {
		o.Progress(fmt.Sprintf("taking %q with a lease of %s, the default: set params.ttl for another, or ttl: none to hold it until it is unlocked", name, take.TTL))
	}
	o.Wait = true
	l, err := c.Lock(ctx, name, take, o)
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

// take is the request that takes the lock(s): the params, with the
// build's URL as the default note, and the build the step runs in.
func (p OutParams) take(env func(string) string) client.Request {
	return client.Request{Key: p.Key, Requestor: p.requestor(), TTL: p.lease(), Note: cmp.Or(p.Note, buildNote(env)), Limit: p.Limit,
		Supersede: p.Supersede, Priority: p.Priority, Build: buildOf(env), EndWithBuild: p.EndWithBuild}
}

// buildOf returns the build the step runs in, from the variables
// Concourse sets for resources (BUILD_ID and the rest), or nil outside a
// build (run by hand).
func buildOf(env func(string) string) *client.Build {
	id, err := strconv.ParseInt(env("BUILD_ID"), 10, 64)
	if err != nil || id <= 0 {
		return nil
	}
	return &client.Build{ID: id, Name: env("BUILD_NAME"), Job: env("BUILD_JOB_NAME"), Pipeline: env("BUILD_PIPELINE_NAME"),
		Team: env("BUILD_TEAM_NAME"), URL: buildNote(env)}
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
