package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Domain errors; api.go maps each one to an HTTP status.
var (
	errLockHeld = errors.New("locked")
	errSave     = errors.New("could not save the lock state")
)

// Lock is one named lock as the API and the state file show it: the key its
// holders share and how many times each holder took it. A free lock has an
// empty key and no holders.
type Lock struct {
	Key      string
	LockedBy map[string]int
}

// free reports whether no one holds l.
func (l Lock) free() bool { return len(l.LockedBy) == 0 }

// clone returns a copy of l that shares no map with it.
func (l Lock) clone() Lock {
	return Lock{Key: l.Key, LockedBy: maps.Clone(l.LockedBy)}
}

func (l Lock) equal(m Lock) bool {
	return l.Key == m.Key && maps.Equal(l.LockedBy, m.LockedBy)
}

// holdersString lists l's holders for messages: "node-a (2), node-b (1)".
func (l Lock) holdersString() string {
	names := slices.Sorted(maps.Keys(l.LockedBy))
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s (%d)", n, l.LockedBy[n])
	}
	return strings.Join(parts, ", ")
}

// saver makes a whole lock table durable. The table calls it with its mutex
// held, so the file always matches an order of changes clients saw.
type saver interface {
	save(locks map[string]Lock) error
}

// table is the in-memory lock table. Every change is saved before it is
// visible to anyone, and undone if saving fails.
type table struct {
	store saver

	mu    sync.Mutex      // guards locks; held across saves
	locks map[string]Lock // only held locks; a released lock is deleted
}

func newTable(store saver, locks map[string]Lock) *table {
	if locks == nil {
		locks = make(map[string]Lock)
	}
	return &table{store: store, locks: locks}
}

// Get returns the lock called name; a lock no one holds is free.
func (t *table) Get(name string) Lock {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.locks[name].clone()
}

// List returns a copy of every held lock.
func (t *table) List() map[string]Lock {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]Lock, len(t.locks))
	for name, l := range t.locks {
		out[name] = l.clone()
	}
	return out
}

// Len returns the number of held locks.
func (t *table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.locks)
}

// Acquire takes the lock called name for requestor with key. A free lock, or
// one already held with key, is granted and requestor's count goes up by one;
// a lock held with another key is refused with errLockHeld.
func (t *table) Acquire(name, key, requestor string) (Lock, error) {
	return t.change(name, func(l *Lock) error {
		if !l.free() && l.Key != key {
			return fmt.Errorf("%w: %q is held with key %q by %s; wait until they release it, or use their key to share it",
				errLockHeld, name, l.Key, l.holdersString())
		}
		if l.LockedBy == nil {
			l.LockedBy = make(map[string]int)
		}
		l.Key = key
		l.LockedBy[requestor]++
		return nil
	})
}

// Release gives back one count of requestor's hold on the lock called name,
// or every count when all is set, and says how many counts it gave back.
// Releasing a free lock, or for a requestor that holds nothing under key,
// changes nothing and succeeds; a lock held with another key is refused
// with errLockHeld.
func (t *table) Release(name, key, requestor string, all bool) (Lock, int, error) {
	released := 0
	l, err := t.change(name, func(l *Lock) error {
		if l.free() {
			return nil
		}
		if l.Key != key {
			return fmt.Errorf("%w: %q is held with key %q by %s; a release must send the key the lock was taken with",
				errLockHeld, name, l.Key, l.holdersString())
		}
		n := l.LockedBy[requestor]
		switch {
		case n == 0:
			return nil
		case all || n == 1:
			released = n
			delete(l.LockedBy, requestor)
		default:
			released = 1
			l.LockedBy[requestor] = n - 1
		}
		if l.free() {
			*l = Lock{}
		}
		return nil
	})
	if err != nil {
		return Lock{}, 0, err
	}
	return l, released, nil
}

// change applies fn to a copy of the lock called name, saves the table with
// the result and only then makes it visible. If fn fails nothing changes; if
// saving fails the old lock is put back and the error wraps errSave.
func (t *table) change(name string, fn func(*Lock) error) (Lock, error) {
	t.mu.Lock()
	defer t.mu.Unlock()

	old, held := t.locks[name]
	next := old.clone()
	if err := fn(&next); err != nil {
		return Lock{}, err
	}
	if next.equal(old) {
		return next, nil // nothing to save
	}
	t.put(name, next)
	if err := t.store.save(t.locks); err != nil {
		if held {
			t.locks[name] = old
		} else {
			delete(t.locks, name)
		}
		return Lock{}, fmt.Errorf("%w: %w", errSave, err)
	}
	return next.clone(), nil
}

// put stores l under name, or deletes name when l is free so that released
// locks do not accumulate. Callers hold t.mu.
func (t *table) put(name string, l Lock) {
	if l.free() {
		delete(t.locks, name)
		return
	}
	t.locks[name] = l
}
