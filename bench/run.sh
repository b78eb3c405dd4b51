#!/usr/bin/env bash
# Builds release binaries, makes sure PostgreSQL is up, runs the benchmark scenarios and
# prints a summary table. Usage: bench/run.sh [scenario ...] [-- extra flags for each]
#   scenarios: throughput latency fanout isolation tenant-create (default: all, in that order)
# Figures are measurements, not pass/fail: nothing here fails on a slow result.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
ALL=(throughput latency fanout isolation tenant-create)

scenarios=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    throughput|latency|fanout|isolation|tenant-create) scenarios+=("$1"); shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "unknown scenario: $1 (one of: ${ALL[*]})" >&2; exit 2 ;;
  esac
done
[ ${#scenarios[@]} -eq 0 ] && scenarios=("${ALL[@]}")

echo "bench: building release binaries" >&2
$CARGO build --release -q -p stratum-server -p stratum-bench

scripts/pg.sh up stratum

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH="$TARGET/release/stratum-bench"
export STRATUM_BIN=${STRATUM_BIN:-$TARGET/release/stratum}

OUT=$(mktemp -d "${TMPDIR:-/tmp}/stratum-bench.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
failed=()
for s in "${scenarios[@]}"; do
  echo
  if ! "$BENCH" "$s" "${extra[@]}" | tee "$OUT/$s.out"; then
    failed+=("$s")
  fi
done

echo
echo "== summary ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ))"
"$BENCH" summarize "$OUT"/*.out
if [ ${#failed[@]} -gt 0 ]; then
  echo "scenarios that did not complete: ${failed[*]}" >&2
  exit 1
fi
