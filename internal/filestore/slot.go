package filestore

import "fmt"

// slot is one named thing a transaction may read and change besides its
// locks, in one of the store's maps: the pool it named, the credential
// it named. It keeps the thing as the transaction found it, the first
// time the transaction changes it, so that the change can be undone.
type slot[T any] struct {
	kind string // "pool", "credential": for messages
	name string // "" when the transaction named none
	was  *found[T]
}

// found is a thing as a transaction found it: there or not.
type found[T any] struct {
	v  T
	ok bool
}

// named reports whether the transaction named the thing called name.
func (sl *slot[T]) named(name string) bool { return name != "" && name == sl.name }

// check panics when the transaction did not name the thing called name:
// a database store must lock it up front.
func (sl *slot[T]) check(name string) {
	if !sl.named(name) {
		panic(fmt.Sprintf("filestore: %s %q is not the one the transaction named (%q)", sl.kind, name, sl.name))
	}
}

// get returns the thing called name from m.
func (sl *slot[T]) get(m map[string]T, name string) (T, bool) {
	sl.check(name)
	v, ok := m[name]
	return v, ok
}

// set makes v the thing called name in m.
func (sl *slot[T]) set(m map[string]T, name string, v T) {
	sl.keep(m, name)
	m[name] = v
}

// remove takes the thing called name out of m.
func (sl *slot[T]) remove(m map[string]T, name string) {
	sl.keep(m, name)
	delete(m, name)
}

// keep remembers the thing as the transaction found it, the first time.
func (sl *slot[T]) keep(m map[string]T, name string) {
	sl.check(name)
	if sl.was == nil {
		v, ok := m[name]
		sl.was = &found[T]{v, ok}
	}
}

// changed reports whether the transaction changed the thing.
func (sl *slot[T]) changed() bool { return sl.was != nil }

// putBack puts the thing back in m as the transaction found it. Callers
// hold s.mu.
func (sl *slot[T]) putBack(m map[string]T) {
	switch {
	case sl.was == nil:
	case sl.was.ok:
		m[sl.name] = sl.was.v
	default:
		delete(m, sl.name)
	}
}

// record returns the thing as the change leaves it, for its journal
// record: by name, nil when removed; nil when unchanged.
func (sl *slot[T]) record(m map[string]T) map[string]*T {
	if sl.was == nil {
		return nil
	}
	if v, ok := m[sl.name]; ok {
		return map[string]*T{sl.name: &v}
	}
	return map[string]*T{sl.name: nil}
}

// applyChanges makes the changes of a record in m (made if it is nil), and
// returns m.
func applyChanges[T any](m map[string]T, changes map[string]*T) map[string]T {
	for name, v := range changes {
		if m == nil {
			m = map[string]T{}
		}
		if v == nil {
			delete(m, name)
		} else {
			m[name] = *v
		}
	}
	return m
}
