#!/usr/bin/env bash
# Run several integration passes of `make test` at the same time, each a make target with a lab of its own.
#
# Usage: scripts/integration-passes.sh PASS [PASS...]     (make test: CHECK_PASSES - unit, sanity, lint, the
#        upstream npm cache - then INTEGRATION_PASSES in the Makefile)
#
# Each PASS is a make target (integration, integration-valkey, ...). It runs in the background with its output in
# .state/passes/<PASS>.log, which is printed whole, under a header, as soon as that pass ends (so two passes never
# interleave their lines). The script waits for every pass - one that fails does not stop the others - and exits
# non-zero when any failed, naming them. On Ctrl-C / TERM every pass is stopped (its whole process group) and its
# lab taken down.
#
# A pass must not share a lab with another: each target sets its own P3LAB_DIR and P3LAB_BASE_PORT (integration:
# the default lab at P3LAB_BASE_PORT; integration-valkey: .state/lab-valkey at +500; the next one, e.g.
# integration-upstream: .state/lab-upstream at +700) and lists the lab dir in PASS_LAB_DIRS below for the clean-up.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
MAKE=${MAKE:-make}
LOGS=$ROOT/.state/passes
mkdir -p "$LOGS"

# The lab each pass uses, for the clean-up after an interrupt (a pass that ends by itself takes its lab down).
declare -A PASS_LAB_DIRS=(
  [integration]="${P3LAB_DIR:-$ROOT/.lab}"
  [integration-a]="${P3LAB_DIR:-$ROOT/.lab}"
  [integration-b]="$ROOT/.state/lab-b"
  [integration-c]="$ROOT/.state/lab-c"
  [integration-d]="$ROOT/.state/lab-d"
  [integration-valkey]="$ROOT/.state/lab-valkey"
  [integration-upstream]="$ROOT/.state/lab-upstream"
  [integration-upstream-1]="$ROOT/.state/lab-upstream"
  [integration-upstream-2]="$ROOT/.state/lab-upstream-2"
)

if [ $# -eq 0 ]; then
  echo "usage: $0 PASS [PASS...]" >&2
  exit 2
fi

declare -A PID_OF=() START=()
cleanup() {
  trap - INT TERM
  echo "[passes] interrupted: stopping ${!PID_OF[*]}" >&2
  for pass in "${!PID_OF[@]}"; do
    kill -TERM -- "-${PID_OF[$pass]}" 2>/dev/null || true
  done
  sleep 2
  for pass in "${!PID_OF[@]}"; do
    kill -KILL -- "-${PID_OF[$pass]}" 2>/dev/null || true
    dir=${PASS_LAB_DIRS[$pass]:-}
    if [ -n "$dir" ] && [ -d "$dir" ]; then
      P3LAB_DIR=$dir .venv/bin/python lab/p3lab down >/dev/null 2>&1 || true
    fi
  done
  exit 130
}
trap cleanup INT TERM

for pass in "$@"; do
  log=$LOGS/$pass.log
  # setsid: each pass in its own process group, so an interrupt stops all of it (pytest, ansible, the lab's tools);
  # -o setup: make test ran setup once already, two passes must not run it at the same time.
  setsid "$MAKE" --no-print-directory -o setup "$pass" >"$log" 2>&1 </dev/null &
  PID_OF[$pass]=$!
  START[$pass]=$SECONDS
  echo "[passes] $pass started (pid ${PID_OF[$pass]}, log $log)"
done

failed=()
while [ ${#PID_OF[@]} -gt 0 ]; do
  done_pid=""
  wait -n -p done_pid "${PID_OF[@]}"
  rc=$?
  [ -n "$done_pid" ] || { echo "[passes] lost track of ${!PID_OF[*]}" >&2; failed+=("${!PID_OF[@]}"); break; }
  for pass in "${!PID_OF[@]}"; do
    [ "${PID_OF[$pass]}" = "$done_pid" ] || continue
    unset "PID_OF[$pass]"
    echo
    echo "==================== $pass: rc $rc after $((SECONDS - START[$pass])) s (log $LOGS/$pass.log) ===================="
    cat "$LOGS/$pass.log"
    echo "==================== end of $pass ===================="
    [ "$rc" -eq 0 ] || failed+=("$pass")
  done
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "[passes] FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "[passes] all passed: $*"
