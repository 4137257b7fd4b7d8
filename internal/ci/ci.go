// Package ci ends the holds that belong to a CI build once that build
// has finished as they named (aborted, errored, ...): a lock taken by a
// Concourse put step in a build that was aborted is given back, and its
// next waiter granted, without anyone force-releasing it. Builds tells a
// build's outcome; Concourse is the one there is, and another CI system
// (a GitLab job, a GitHub run) would be another Builds.
package ci

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/locker-ci/locker/internal/engine"
)

// Builds looks up builds in a CI system.
type Builds interface {
	// Outcome returns the status of the build with id, as the CI system
	// says it ("started", "succeeded", "aborted", ...), lock.Gone for a
	// build it does not know, or an error when it cannot say.
	Outcome(ctx context.Context, id int64) (string, error)
	// String names the CI system, for logs and messages.
	String() string
}

// Table is what the watcher needs of the engine.
type Table interface {
	BuildBound(ctx context.Context) ([]engine.BoundHold, error)
	EndWithBuild(ctx context.Context, h engine.BoundHold, outcome string) (bool, error)
}

// Every is how often the watcher looks at the build-bound holds' builds:
// one lookup a build each time, however many holds it has.
const Every = 5 * time.Second

// Watcher looks up the builds of build-bound holds every Every, and ends
// the holds whose builds finished as they named. A CI system that cannot
// be reached, or refuses, never ends anything: the watcher says so (Log,
// Status) and tries again.
type Watcher struct {
	Table  Table
	Builds Builds
	Log    *slog.Logger
	// Leads, if set, says whether this node is the one that looks (on
	// PostgreSQL, one node of several does); nil: it is.
	Leads func(ctx context.Context) bool
	// Looked, if set, is told of each lookup, and whether it answered.
	Looked func(ok bool)
	// Ended, if set, is told of each hold ended.
	Ended func()

	mu      sync.Mutex // guards failing and since
	failing error      // why the latest lookup failed; nil when it answered
	since   time.Time  // when lookups began to fail
}

// Run looks every Every until ctx is done.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if w.Leads == nil || w.Leads(ctx) {
			w.Round(ctx)
		}
	}
}

// Round looks once at every build-bound hold's build.
func (w *Watcher) Round(ctx context.Context) {
	holds, err := w.Table.BuildBound(ctx)
	if err != nil {
		w.Log.Warn("cannot list the holds bound to builds; trying again", "every", Every, "err", err)
		return
	}
	byBuild := map[int64][]engine.BoundHold{}
	var order []int64
	for _, h := range holds {
		if _, seen := byBuild[h.Build.ID]; !seen {
			order = append(order, h.Build.ID)
		}
		byBuild[h.Build.ID] = append(byBuild[h.Build.ID], h)
	}
	for _, id := range order {
		lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		outcome, err := w.Builds.Outcome(lctx, id)
		cancel()
		w.record(err)
		if err != nil {
			continue // nothing ends on a lookup that failed
		}
		for _, h := range byBuild[id] {
			if !h.Build.Ends(outcome) {
				continue
			}
			if ended, err := w.Table.EndWithBuild(ctx, h, outcome); err != nil {
				w.Log.Warn("cannot end a hold whose build ended; trying again", "lock", h.Lock, "holder", h.Holder, "build", id, "outcome", outcome, "err", err)
			} else if ended && w.Ended != nil {
				w.Ended()
			}
		}
	}
}

// record keeps whether a lookup answered, and logs when lookups begin to
// fail and when they answer again.
func (w *Watcher) record(err error) {
	if w.Looked != nil {
		w.Looked(err == nil)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err != nil && w.failing == nil:
		w.since = time.Now()
		w.Log.Error("cannot look up builds, so no hold ends with its build until it can; trying again", "ci", w.Builds.String(), "every", Every, "err", err)
	case err == nil && w.failing != nil:
		w.Log.Info("builds can be looked up again", "ci", w.Builds.String(), "after", time.Since(w.since).Round(time.Second))
	}
	w.failing = err
}

// Status says whether builds can be looked up: "" when the latest lookup
// answered, or why not and since when.
func (w *Watcher) Status() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failing == nil {
		return ""
	}
	return "builds cannot be looked up since " + w.since.UTC().Format(time.RFC3339) + ", so no hold ends with its build: " + w.failing.Error()
}
