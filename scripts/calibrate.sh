#!/usr/bin/env bash
# Proves that TestLinearizable has teeth: each server variant with a planted
# bug (build tags in internal/faults) must be caught in at least 9 runs out of 10,
# and the real server must pass every run. Takes about half an hour.
#   scripts/calibrate.sh [runs [variant...]]
# Variants: none toctou early_ack token release_key (TestLinearizable, one
# server on a state file) and pg_no_row_lock pg_node_tokens
# (TestLinearizableNodes, three servers on PostgreSQL).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
shift || true
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(none toctou early_ack token release_key pg_no_row_lock pg_node_tokens)
status=0
for bug in "${variants[@]}"; do
  tags=()
  [ "$bug" != none ] && tags=(-tags "bug_$bug")
  case $bug in
    none) test='^TestLinearizable(Nodes)?$' ;;
    pg_*) test='^TestLinearizableNodes$' ;;
    *) test='^TestLinearizable$' ;;
  esac
  caught=0
  for _ in $(seq "$runs"); do
    out=$(go test "${tags[@]}" -count=1 -run "$test" ./blackbox 2>&1)
    if grep -q 'is not linearizable' <<<"$out"; then
      caught=$((caught + 1))
    elif ! grep -q '^ok' <<<"$out"; then
      echo "a run of $bug failed for another reason:" >&2
      echo "$out" | tail -20 >&2
      status=1
    fi
  done
  if [ "$bug" = none ]; then
    echo "real server: failed $caught of $runs runs (want 0)"
    [ "$caught" -eq 0 ] || status=1
  else
    echo "planted bug $bug: caught in $caught of $runs runs (want at least $((runs * 9 / 10)))"
    [ "$caught" -ge $((runs * 9 / 10)) ] || status=1
  fi
done
exit $status
