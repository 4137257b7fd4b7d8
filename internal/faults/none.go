//go:build !bug_toctou && !bug_early_ack && !bug_token && !bug_release_key

package faults

// Planted is the planted bug built in: none.
const Planted = ""
