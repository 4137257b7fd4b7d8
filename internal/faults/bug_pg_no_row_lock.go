//go:build bug_pg_no_row_lock

package faults

// Planted is the planted bug built in.
const Planted = "pg_no_row_lock"
