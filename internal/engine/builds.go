package engine

import (
	"context"
	"log/slog"

	"github.com/locker-ci/locker/internal/lock"
	"github.com/locker-ci/locker/internal/txn"
)

// Holds that end with the CI build that took them: the server looks up
// their builds (internal/ci) and ends the holds whose builds finished as
// they named.

// BoundHold is a hold that ends with its build.
type BoundHold struct {
	Lock, Holder string
	Build        lock.Build
}

// BuildBound returns every hold that ends with its build.
func (e *Engine) BuildBound(ctx context.Context) ([]BoundHold, error) {
	var out []BoundHold
	err := e.Each(ctx, "", "", func(l Listed) error {
		for _, h := range l.Holders {
			if h.Build != nil && len(h.Build.EndWith) > 0 {
				out = append(out, BoundHold{Lock: l.Name, Holder: h.Name, Build: *h.Build})
			}
		}
		return nil
	})
	return out, err
}

// EndWithBuild ends the hold of b.Holder on b.Lock, if it still belongs
// to b's build, which finished as outcome (lock.Gone for a build the CI
// system no longer knows): its history says so, and the next waiters are
// granted. It reports whether it ended the hold.
func (e *Engine) EndWithBuild(ctx context.Context, b BoundHold, outcome string) (bool, error) {
	var ended bool
	reason := b.Build.Ending(outcome)
	_, err := e.change(ctx, []string{b.Lock}, nil, options{}, func(tx txn.Tx) error {
		defer ending(tx, lock.Ending{Kind: lock.Ended, By: b.Build.URL, Reason: reason})()
		next, ok := lock.EndWithBuild(tx.Lock(b.Lock), b.Holder, b.Build.ID)
		if !ok {
			return nil // given back, or taken by another build, since
		}
		tx.Set(b.Lock, next)
		grantQueue(tx, b.Lock)
		ended = true
		return nil
	})
	if err != nil {
		return false, err
	}
	if ended {
		e.log.LogAttrs(ctx, slog.LevelWarn, "hold ended with its build", slog.String("lock", b.Lock), slog.String("holder", b.Holder),
			slog.Int64("build", b.Build.ID), slog.String("outcome", outcome), slog.String("build_url", b.Build.URL))
	}
	return ended, nil
}
