//go:build bug_early_ack

package main

// A server with a planted bug, to calibrate TestLinearizable. Never ship it.
const plantedBug = "early_ack"
