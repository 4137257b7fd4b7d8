package engine

import (
	"context"
	"time"

	"github.com/locker-ci/locker/internal/txn"
)

// The listing: the table read a page at a time, so that no reader holds
// up changes for longer than one page takes, or keeps more than one page
// in memory, however many locks there are.

// scanPage is how many locks a listing reads at a time.
const scanPage = 1000

// Listed is a lock in a listing.
type Listed struct {
	Name string
	Snapshot
}

// List returns a page of the locks held or waited for, in name order, and
// the name to go on after when there may be more ("" at the end).
func (e *Engine) List(ctx context.Context, page txn.Page) ([]Listed, string, error) {
	limit := page.Limit
	if limit > 0 {
		page.Limit++ // one more says whether there are more
	}
	var t txn.Tables
	if err := e.scan(ctx, page, &t); err != nil {
		return nil, "", err
	}
	names, next := t.Names, ""
	if limit > 0 && len(names) > limit {
		names = names[:limit]
		next = names[limit-1]
	}
	out := make([]Listed, 0, len(names))
	for _, name := range names {
		if s := snapshot(&t, name); !s.Free() || len(s.Waiting) > 0 {
			out = append(out, Listed{Name: name, Snapshot: s})
		}
	}
	return out, next, nil
}

// Each calls fn with each lock held or waited for whose name starts with
// prefix and sorts after after, in name order, a page at a time, until fn
// returns an error (which Each returns). The locks fn is given share
// their holders with the store's copy: fn must not change them.
func (e *Engine) Each(ctx context.Context, prefix, after string, fn func(Listed) error) error {
	return e.pages(ctx, txn.Page{Prefix: prefix, After: after}, func(t *txn.Tables) error {
		for _, name := range t.Names {
			if s := current(t, name); !s.Free() || len(s.Waiting) > 0 {
				if err := fn(Listed{Name: name, Snapshot: s}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// pages calls fn with each page of the table from page on, scanPage locks
// at a time, read into one Tables.
func (e *Engine) pages(ctx context.Context, page txn.Page, fn func(*txn.Tables) error) error {
	page.Limit = scanPage
	var t txn.Tables
	for {
		if err := e.scan(ctx, page, &t); err != nil {
			return err
		}
		if err := fn(&t); err != nil {
			return err
		}
		if len(t.Names) < scanPage {
			return nil
		}
		page.After = t.Names[len(t.Names)-1]
	}
}

// scan reads one page into t, within changeTimeout.
func (e *Engine) scan(ctx context.Context, page txn.Page, t *txn.Tables) error {
	ctx, cancel := context.WithTimeout(ctx, changeTimeout)
	defer cancel()
	if err := e.store.Scan(ctx, page, t); err != nil {
		return e.fail("", err)
	}
	return nil
}

// TableStats is what the gauges show of the table: locks held, their
// holders, requests waiting, and how long the longest-held lock has been
// held.
type TableStats struct {
	Locks, Holders, Waiters int
	OldestAge               time.Duration
	OldestWait              time.Duration
}

// Stats returns the gauges' figures, read a page at a time with no
// snapshot per lock (a scrape of a big table allocates little): locks
// held, their holders, requests waiting, how long the longest-held lock
// has been held, and how long the longest waiter has waited. A table that cannot be read counts what was read.
func (e *Engine) Stats() TableStats {
	var st TableStats
	_ = e.pages(context.Background(), txn.Page{}, func(t *txn.Tables) error {
		for _, l := range t.Locks {
			if l.Free() {
				continue
			}
			st.Locks++
			st.Holders += len(l.Holders)
			if !l.AcquiredAt.IsZero() {
				st.OldestAge = max(st.OldestAge, t.At.Sub(l.AcquiredAt))
			}
		}
		for _, q := range t.Queues {
			for _, w := range q {
				if w.Waiting() {
					st.Waiters++
					st.OldestWait = max(st.OldestWait, t.At.Sub(w.Since))
				}
			}
		}
		return nil
	})
	return st
}

// Len returns the number of held locks (as many as could be read, when
// the store cannot say).
func (e *Engine) Len() int { return e.Stats().Locks }
