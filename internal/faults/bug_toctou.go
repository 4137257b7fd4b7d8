//go:build bug_toctou

package faults

// Planted is the planted bug built in.
const Planted = "toctou"
