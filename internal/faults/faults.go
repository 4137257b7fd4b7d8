// Package faults holds the faults the tests inject into the file store,
// as net/http/httptest holds what tests of net/http need: Faulty, a real
// file system whose chosen operation fails or stops, and, with the build
// tag lazyfs only, a journal file that loses what was not synced when the
// process is killed, as a power cut does (lazyfs.go). A normal build gets
// FS as the identity (sanefs.go) and nothing else from here.
//
// The planted bugs that prove the linearizability tests can catch one are
// not here: they are patches (scripts/bugs), applied to a copy of the
// tree by scripts/calibrate.sh.
//
// Never ship a binary built with the lazyfs tag.
package faults
