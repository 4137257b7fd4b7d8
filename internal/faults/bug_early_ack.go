//go:build bug_early_ack

package faults

// Planted is the planted bug built in.
const Planted = "early_ack"
