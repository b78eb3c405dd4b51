#!/usr/bin/env bash
# `make conformance`: the release binary, checked by clients nobody here wrote.
#
# Outside: prepares a database of its own on the project's PostgreSQL, then re-runs this
# script inside a network namespace with only loopback (`unshare -n`), so invented webhook
# URLs reach nothing; the database is reached over its unix socket, which a network
# namespace does not hide. Inside: starts `target/release/stratum serve`, verifies real
# deliveries with the official Standard Webhooks library, then runs Schemathesis over the
# served OpenAPI document. Any failure fails the run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv}
DB=${STRATUM_CONFORMANCE_DB:-stratum_conformance}
# The test cluster of this checkout (`make conformance` starts it); STRATUM_PG_PORT overrides.
PG_PORT=$(STRATUM_PG_CLUSTER=test scripts/pg.sh port)
SEED=${CONFORMANCE_SEED:-20261130}
EXAMPLES=${CONFORMANCE_MAX_EXAMPLES:-30}
OUT=${CONFORMANCE_OUT:-target/conformance}
BIN=${STRATUM_CONFORMANCE_BIN:-target/release/stratum}
ADMIN_KEY=sk_conformance_admin_key_0123456789abcdef0123

inside() {
  ip link set lo up
  local port=3901
  local url="postgres://postgres@localhost/$DB?host=$SOCK&port=$PG_PORT"
  mkdir -p "$OUT"
  DATABASE_URL="$url" \
  STRATUM_BIND="127.0.0.1:$port" \
  STRATUM_ENCRYPTION_KEY=conformance-encryption-key-0123456789abcdef \
  STRATUM_ADMIN_API_KEY="$ADMIN_KEY" \
  STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS=true \
  STRATUM_WEBHOOK_MAX_ATTEMPTS=2 \
  STRATUM_WEBHOOK_BACKOFF_BASE_MS=200 \
  STRATUM_WEBHOOK_TIMEOUT_MS=2000 \
  STRATUM_LOG_FORMAT=json RUST_LOG=warn \
    "$BIN" serve >"$OUT/stratum.log" 2>&1 &
  local pid=$!
  trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
  local base="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do
    "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$base/health', timeout=1)" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "conformance: stratum exited early" >&2; tail -20 "$OUT/stratum.log" >&2; exit 1; }
    sleep 0.1
  done

  echo "== standardwebhooks: real deliveries of all nine events, /test and a secret rotation"
  "$VENV/bin/python" scripts/conformance/webhooks.py "$base" "$ADMIN_KEY"

  echo "== schemathesis over $base/api/v1/openapi.json (seed $SEED, $EXAMPLES examples per operation)"
  local rc=0
  # One worker: with two threads, CPython 3.11's ast module (which Hypothesis calls to
  # describe strategies) can fail with "AST constructor recursion depth mismatch", a tool
  # error that says nothing about the server.
  "$VENV/bin/schemathesis" run "$base/api/v1/openapi.json" \
    --header "X-API-Key: $ADMIN_KEY" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection \
    --phases examples,coverage,fuzzing,stateful \
    --mode all \
    --seed "$SEED" \
    --max-examples "$EXAMPLES" \
    --workers 1 \
    --request-timeout 30 \
    --continue-on-failure \
    --suppress-health-check all \
    --report junit,ndjson --report-dir "$OUT" \
    || rc=$?
  # Stratum's own error logs (every 5xx is logged with its cause); actix-http's notes
  # about unparseable requests are the fuzzer's doing and answered with 400.
  if grep '"level":"ERROR"' "$OUT/stratum.log" | grep -q '"target":"stratum'; then
    echo "conformance: the server logged errors (see $OUT/stratum.log):" >&2
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
command -v unshare >/dev/null || { echo "conformance: unshare (util-linux) is required" >&2; exit 1; }
test -x "$BIN" || { echo "conformance: build $BIN first (make build)" >&2; exit 1; }
psql() { command psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }
psql -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
SOCK=$(psql -tAc "SHOW unix_socket_directories" | cut -d, -f1 | tr -d ' ')
[ -S "$SOCK/.s.PGSQL.$PG_PORT" ] || { echo "conformance: no PostgreSQL socket in $SOCK" >&2; exit 1; }
export SOCK VENV DB PG_PORT SEED EXAMPLES OUT BIN
if [ "$(id -u)" -eq 0 ]; then
  exec unshare -n "$0" --inside
else
  # Without root, a user namespace grants the network namespace.
  exec unshare -rn "$0" --inside
fi
