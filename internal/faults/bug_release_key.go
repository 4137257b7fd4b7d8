//go:build bug_release_key

package faults

// Planted is the planted bug built in.
const Planted = "release_key"
