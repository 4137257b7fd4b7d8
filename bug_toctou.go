//go:build bug_toctou

package main

// A server with a planted bug, to calibrate TestLinearizable. Never ship it.
const plantedBug = "toctou"
