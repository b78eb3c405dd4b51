#!/usr/bin/env bash
# The machine's yardstick, printed beside every benchmark run so that figures carry across
# machines of different speed: one-row INSERT transactions per second from pgbench (16
# clients, 8 s) on this checkout's test cluster (fsync=off, synchronous_commit=off: it
# measures CPU, not the disk), and the time of a fixed single-core CPU loop.
# Ends with one line of JSON: {"scenario":"yardstick","pg_one_row_tps":…,"cpu_loop_s":…}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STRATUM_PG_CLUSTER=test scripts/pg.sh up >/dev/null
SERVER=$(STRATUM_PG_CLUSTER=test scripts/pg.sh server-url)
BIN=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")
DB=stratum_yardstick
PGOPTIONS="-c client_min_messages=warning" psql -X -q -d "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
trap 'psql -X -q -d "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT
psql -X -q -d "$SERVER/$DB" -c "CREATE TABLE one_row (id bigserial PRIMARY KEY, v text NOT NULL)"
SCRIPT=$(mktemp)
echo "INSERT INTO one_row (v) VALUES ('yardstick');" > "$SCRIPT"
TPS=$("$BIN/pgbench" -n -c 16 -j 2 -T 8 -f "$SCRIPT" "$SERVER/$DB" 2>/dev/null \
      | awk '/^tps = / {printf "%d", $3; exit}')
rm -f "$SCRIPT"
# A fixed amount of integer work on one core (the same on every machine and run).
CPU=$(python3 -c '
import time
t = time.perf_counter()
x = 0
for i in range(30_000_000):
    x = (x + i * i) % 1_000_003
print(f"{time.perf_counter() - t:.2f}")')
echo "== yardstick: one-row INSERT transactions/s (pgbench, 16 clients, 8 s, fsync=off) $TPS; single-core CPU loop ${CPU} s"
echo "{\"scenario\":\"yardstick\",\"pg_one_row_tps\":$TPS,\"cpu_loop_s\":$CPU}"
