#!/usr/bin/env bash
# `make test-clients`: the Rust, TypeScript and Python clients' suites against a live
# `stratum serve`.
#
# Like `make conformance`: outside, a database of its own on this checkout's test cluster;
# then the script re-runs itself in a network namespace with only loopback (`unshare -n`),
# where it starts the server on 127.0.0.1 and runs each suite in turn (each starts its own
# webhook receiver and connection-resetting proxy on loopback). The clients must already be
# generated and their dependencies installed (the Makefile does that first, outside, where the
# package registries are reachable). Any failure fails the run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# The Rust client builds into the checkout's target directory (see the Makefile).
CARGO_TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-target}")
export CARGO_TARGET_DIR
DB=${STRATUM_CLIENTS_DB:-stratum_clients}
PG_PORT=$(STRATUM_PG_CLUSTER=test scripts/pg.sh port)
BIN=${STRATUM_CLIENTS_BIN:-$CARGO_TARGET_DIR/debug/stratum}
OUT=${CLIENTS_OUT:-$CARGO_TARGET_DIR/clients}
SUITES=${CLIENT_SUITES:-rust typescript python}
ADMIN_KEY=sk_clients_admin_key_0123456789abcdef0123456

inside() {
  ip link set lo up
  local port=${STRATUM_CLIENTS_PORT:-3101}
  local url="postgres://postgres@localhost/$DB?host=$SOCK&port=$PG_PORT"
  mkdir -p "$OUT"
  DATABASE_URL="$url" \
  STRATUM_BIND="127.0.0.1:$port" \
  STRATUM_ENCRYPTION_KEY=clients-encryption-key-0123456789abcdef0123 \
  STRATUM_ADMIN_API_KEY="$ADMIN_KEY" \
  STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS=true \
  STRATUM_WEBHOOK_BACKOFF_BASE_MS=200 \
  STRATUM_WEBHOOK_TIMEOUT_MS=5000 \
  STRATUM_LOG_FORMAT=json RUST_LOG=warn \
    "$BIN" serve >"$OUT/stratum.log" 2>&1 &
  local pid=$!
  trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
  local base="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do
    python3 -c "import urllib.request; urllib.request.urlopen('$base/ready', timeout=1)" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "test-clients: stratum exited early" >&2; tail -20 "$OUT/stratum.log" >&2; exit 1; }
    sleep 0.1
  done
  export STRATUM_URL="$base" STRATUM_ADMIN_KEY="$ADMIN_KEY"

  local rc=0 start
  for suite in $SUITES; do
    start=$(date +%s)
    echo "== $suite client against $base"
    case "$suite" in
      rust) (cd clients/rust && cargo test --offline --locked -q) || rc=1 ;;
      typescript) (cd clients/typescript && npm test --silent) || rc=1 ;;
      python) (cd clients/python && .venv/bin/python -m pytest -q --durations=5 tests) || rc=1 ;;
      *) echo "test-clients: unknown suite $suite" >&2; rc=1 ;;
    esac
    echo "== $suite: $(( $(date +%s) - start )) s"
  done
  if grep '"level":"ERROR"' "$OUT/stratum.log" | grep -q '"target":"stratum'; then
    echo "test-clients: the server logged errors (see $OUT/stratum.log):" >&2
    grep '"level":"ERROR"' "$OUT/stratum.log" | grep '"target":"stratum' | head -5 >&2
    rc=1
  fi
  exit "$rc"
}

if [ "${1:-}" = "--inside" ]; then
  inside
  exit 0
fi

# --- outside the namespace ---------------------------------------------------------------
command -v unshare >/dev/null || { echo "test-clients: unshare (util-linux) is required" >&2; exit 1; }
test -x "$BIN" || { echo "test-clients: build $BIN first" >&2; exit 1; }
psql() { command psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }
psql -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
SOCK=$(psql -tAc "SHOW unix_socket_directories" | cut -d, -f1 | tr -d ' ')
[ -S "$SOCK/.s.PGSQL.$PG_PORT" ] || { echo "test-clients: no PostgreSQL socket in $SOCK" >&2; exit 1; }
export SOCK DB PG_PORT BIN OUT SUITES
if [ "$(id -u)" -eq 0 ]; then
  exec unshare -n "$0" --inside
else
  exec unshare -rn "$0" --inside
fi
