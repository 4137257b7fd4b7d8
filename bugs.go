//go:build !bug_toctou && !bug_early_ack && !bug_token && !bug_release_key

package main

// plantedBug names a bug built into the server on purpose, by a build tag,
// to prove that TestLinearizable catches it (see scripts/calibrate.sh).
// Normal builds have none; the compiler drops the code that checks for one.
const plantedBug = ""
