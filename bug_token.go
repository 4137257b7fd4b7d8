//go:build bug_token

package main

// A server with a planted bug, to calibrate TestLinearizable. Never ship it.
const plantedBug = "token"
