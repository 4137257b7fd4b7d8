//go:build bug_pg_node_tokens

package faults

// Planted is the planted bug built in.
const Planted = "pg_node_tokens"
