//go:build bug_token

package faults

// Planted is the planted bug built in.
const Planted = "token"
