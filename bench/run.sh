#!/usr/bin/env bash
# Builds release binaries, makes sure PostgreSQL is up, runs the benchmark scenarios and
# prints a summary table. Usage: bench/run.sh [scenario ...] [-- extra flags for each]
#   scenarios: engine throughput latency fanout isolation tenant-create hot-tenant audit-chain replay (default: all, in that order)
# Figures are measurements, not pass/fail: nothing here fails on a slow result.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
ALL=(engine throughput latency fanout isolation tenant-create hot-tenant audit-chain replay)

scenarios=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    engine|throughput|latency|fanout|isolation|tenant-create|hot-tenant|audit-chain|replay) scenarios+=("$1"); shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "unknown scenario: $1 (one of: ${ALL[*]})" >&2; exit 2 ;;
  esac
done
[ ${#scenarios[@]} -eq 0 ] && scenarios=("${ALL[@]}")

echo "bench: building release binaries" >&2
$CARGO build --release -q -p stratum-server -p stratum-bench

scripts/pg.sh up stratum
# The benchmarks' databases live on this checkout's development cluster (durable, as in
# production) unless STRATUM_TEST_DATABASE_URL names another server.
export STRATUM_TEST_DATABASE_URL=${STRATUM_TEST_DATABASE_URL:-$(scripts/pg.sh server-url)}

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/stratum-bench.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
# Snapshots of the binaries just built: a concurrent build in the shared target dir must not
# swap the server between two scenarios.
cp "$TARGET/release/stratum-bench" "$OUT/stratum-bench"
BENCH="$OUT/stratum-bench"
if [ -z "${STRATUM_BIN:-}" ]; then
  cp "$TARGET/release/stratum" "$OUT/stratum"
  export STRATUM_BIN="$OUT/stratum"
fi
echo "bench: server binary $STRATUM_BIN; PostgreSQL: $(ps -o args= -C postgres 2>/dev/null | grep -m1 -- ' -D ' | grep -o -- '-c fsync=off' || echo 'fsync on')" >&2
# The machine's yardstick first, from the same run, so every figure below can be read as a
# ratio to it.
bench/yardstick.sh | tee "$OUT/yardstick.out"
# The engine prints rows a and f as shares of it too.
STRATUM_BENCH_YARDSTICK_TPS=$(sed -n 's/.*"pg_one_row_tps":\([0-9.]*\).*/\1/p' "$OUT/yardstick.out" | tail -1)
export STRATUM_BENCH_YARDSTICK_TPS
failed=()
for s in "${scenarios[@]}"; do
  echo
  if ! "$BENCH" "$s" "${extra[@]}" | tee "$OUT/$s.out"; then
    failed+=("$s")
  fi
done

echo
echo "== summary ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ))"
grep '^== yardstick' "$OUT/yardstick.out" || true
outs=()
for s in "${scenarios[@]}"; do [ -f "$OUT/$s.out" ] && outs+=("$OUT/$s.out"); done
[ ${#outs[@]} -gt 0 ] && "$BENCH" summarize "${outs[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "scenarios that did not complete: ${failed[*]}" >&2
  exit 1
fi
