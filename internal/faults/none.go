//go:build !bug_toctou && !bug_early_ack && !bug_token && !bug_release_key && !bug_pg_no_row_lock && !bug_pg_node_tokens

package faults

// Planted is the planted bug built in: none.
const Planted = ""
