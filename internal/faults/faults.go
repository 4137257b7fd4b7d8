// Package faults holds what the crash and linearizability tests build into
// the server on purpose, by build tag, and nothing else: the planted bugs
// that prove the tests can catch one, and a journal file that loses what
// was not synced, as a power cut does (lazyfs.go). A normal build has none
// of it: Planted is "", and the compiler drops the code it guards.
//
// Never ship a binary built with these tags.
package faults

// The planted bugs. Planted names the one built in with the build tag
// bug_<name> (see scripts/calibrate.sh), or is "".
const (
	// EarlyAck answers before the change is on disk.
	EarlyAck = "early_ack"
	// ReleaseAnyKey lets a release with the wrong key through.
	ReleaseAnyKey = "release_key"
	// TOCTOU checks a lock, then acts on what it checked without the
	// mutex in between.
	TOCTOU = "toctou"
	// ForgetTokens does not keep the token counter across restarts.
	ForgetTokens = "token"
	// PGNoRowLock: the PostgreSQL store reads and changes a lock without
	// its row lock.
	PGNoRowLock = "pg_no_row_lock"
	// PGNodeTokens: the PostgreSQL store hands out tokens from a counter
	// of its own node instead of the database's sequence.
	PGNodeTokens = "pg_node_tokens"
)
