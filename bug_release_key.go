//go:build bug_release_key

package main

// A server with a planted bug, to calibrate TestLinearizable. Never ship it.
const plantedBug = "release_key"
