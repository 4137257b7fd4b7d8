// Package faults holds the faults the tests inject into the file store,
// as net/http/httptest holds what tests of net/http need: Faulty, a real
// file system whose chosen operation fails or stops. Only tests import it.
//
// The planted bugs that prove the linearizability tests can catch one are
// not here: they are patches (scripts/bugs), applied to a copy of the
// tree by scripts/calibrate.sh. The crash tests' lazy journal is
// internal/lazyfs, built in with a tag.
package faults
