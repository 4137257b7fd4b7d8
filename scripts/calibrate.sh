#!/usr/bin/env bash
# Proves that TestLinearizable and TestLinearizableNodes have teeth: each
# planted bug (a patch in scripts/bugs, applied to a copy of the tree) must
# be caught in at least 9 runs out of 10, and the real server must pass
# every run. Takes about 40 minutes.
#   scripts/calibrate.sh [runs [variant...]]
# Variants: none, and the patches' names: toctou early_ack token set_one_at_a_time claim_held
# release_key (TestLinearizable, one server on a state file) and
# pg_no_row_lock pg_node_tokens (TestLinearizableNodes, three servers on
# PostgreSQL), failover_no_jump (TestFailover: a standby promoted after
# missing commits hands their tokens out again). The product's files hold
# none of these bugs.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
shift || true
variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
  variants=(none)
  for p in scripts/bugs/*.patch; do variants+=("$(basename "$p" .patch)"); done
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for bug in "${variants[@]}"; do
  tree=.
  if [ "$bug" != none ]; then
    tree=$work/$bug
    mkdir -p "$tree"
    # The working tree as it is, committed or not, without what builds make.
    tar --exclude=./.git --exclude=./bin -cf - . | tar -xf - -C "$tree"
    if ! (cd "$tree" && git apply "$OLDPWD/scripts/bugs/$bug.patch"); then
      echo "the patch for $bug no longer applies: mend scripts/bugs/$bug.patch" >&2
      status=1
      continue
    fi
  fi
  case $bug in
    none) test='^TestLinearizable(Nodes)?$' ;;
    pg_*) test='^TestLinearizableNodes$' ;;
    failover_*) test='^TestFailover$' ;;
    *) test='^TestLinearizable$' ;;
  esac
  caught=0
  for _ in $(seq "$runs"); do
    out=$(cd "$tree" && go test -count=1 -run "$test" ./blackbox 2>&1)
    if grep -qE 'is not linearizable|is not above every token' <<<"$out"; then
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
