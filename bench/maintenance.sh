#!/usr/bin/env bash
# Maintenance benchmarks: key rotation of N webhook secrets + N sensitive config values
# (default 10,000 + 10,000) and purge-expired over M expired deliveries (default 1,000,000,
# each with one attempt and its own event), through the API of a release `stratum serve`.
# Usage: bench/maintenance.sh [rotation] [purge]     (env: ROTATE_N, PURGE_N)
# Figures are measurements, not pass/fail.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
ROTATE_N=${ROTATE_N:-10000}
PURGE_N=${PURGE_N:-1000000}
DB=stratum_bench_maintenance
KEY_A="bench-encryption-key-A-0123456789abcdefghij"
KEY_B="bench-encryption-key-B-0123456789abcdefghij"
ADMIN="sk_bench_admin_key_0123456789abcdef0123456789"
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(rotation purge)

echo "bench: building release binaries" >&2
$CARGO build --release -q -p stratum-server
$CARGO build --release -q -p stratum-maintenance --example envelopes
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
STRATUM="$TARGET/release/stratum"
ENVELOPES="$TARGET/release/examples/envelopes"

scripts/pg.sh up stratum >&2
SERVER=${STRATUM_TEST_DATABASE_URL:-$(scripts/pg.sh server-url)}
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -d)
"${PSQL[@]}" "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
URL="$SERVER/$DB"
sql() { "${PSQL[@]}" "$URL" "$@"; }
DATABASE_URL="$URL" "$STRATUM" migrate

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
SERVER_PID=""
LOG=$(mktemp)
stop_server() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi
}
trap 'stop_server; rm -f "$LOG"' EXIT
start_server() { # $1 = encryption key
  env -i PATH="$PATH" DATABASE_URL="$URL" STRATUM_ENCRYPTION_KEY="$1" STRATUM_ADMIN_API_KEY="$ADMIN" \
    STRATUM_BIND="127.0.0.1:$PORT" STRATUM_LOG_FORMAT=json RUST_LOG=warn \
    "$STRATUM" serve --no-worker >"$LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    curl -fsS "$BASE/health" >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG" >&2; return 1; }
    sleep 0.05
  done
  echo "server did not become healthy" >&2; return 1
}
# POSTs $2 to $1; prints "<seconds> <body>".
post() {
  curl -sS -o /tmp/stratum_bench_body.$$ -w '%{time_total}' -X POST "$BASE/api/v1$1" \
    -H "X-API-Key: $ADMIN" -H 'Content-Type: application/json' -d "$2"
  echo " $(cat /tmp/stratum_bench_body.$$)"; rm -f /tmp/stratum_bench_body.$$
}
rss_peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status"; }

declare -a SUMMARY
CURRENT_KEY="$KEY_A"
for s in "${scenarios[@]}"; do
  case "$s" in
  rotation)
    TENANT=$(python3 -c 'import uuid; print(uuid.uuid4())')
    sql -c "INSERT INTO tenants (id, name, slug, ancestry_path, depth) VALUES ('$TENANT', 'Bench', 'bench_rotation', '/$TENANT/', 0)"
    t0=$(date +%s.%N)
    STRATUM_ENCRYPTION_KEY="$KEY_A" "$ENVELOPES" webhooks "$ROTATE_N" \
      | sql -c "COPY webhooks (id, url, events, secret_encrypted) FROM STDIN"
    STRATUM_ENCRYPTION_KEY="$KEY_A" "$ENVELOPES" config "$ROTATE_N" "$TENANT" \
      | sql -c "COPY config_entries (tenant_id, key, encrypted_value, sensitive) FROM STDIN"
    echo "rotation: loaded $ROTATE_N + $ROTATE_N envelopes in $(echo "$(date +%s.%N) - $t0" | bc) s" >&2
    start_server "$KEY_A"
    read -r secs body < <(post /maintenance/rotate-encryption-key "{\"old_key\":\"$KEY_A\",\"new_key\":\"$KEY_B\"}")
    echo "rotation: $body" >&2
    case "$body" in *"\"webhooks_rotated\":$ROTATE_N"*) ;; *) echo "rotation failed: $body" >&2; exit 1 ;; esac
    stop_server
    CURRENT_KEY="$KEY_B"
    # The old key is refused now.
    if env -i PATH="$PATH" DATABASE_URL="$URL" STRATUM_ENCRYPTION_KEY="$KEY_A" STRATUM_BIND="127.0.0.1:$PORT" \
        RUST_LOG=error "$STRATUM" worker >/dev/null 2>&1; then
      echo "rotation: a worker with the old key started" >&2; exit 1
    fi
    SUMMARY+=("rotate-encryption-key  ${ROTATE_N} webhook secrets + ${ROTATE_N} config values   ${secs} s (HTTP round trip, one transaction)")
    ;;
  purge)
    STRATUM_ENCRYPTION_KEY="$CURRENT_KEY" "$ENVELOPES" webhooks 1 \
      | sed 's#https://example.com/hooks/0#https://example.com/purge#' \
      | sql -c "COPY webhooks (id, url, events, secret_encrypted) FROM STDIN"
    HOOK=$(sql -tAc "SELECT id FROM webhooks WHERE url = 'https://example.com/purge'")
    t0=$(date +%s.%N)
    sql <<SQL
-- As a server running for 120 days would have written them: ids (UUIDv7, the partition
-- key) minted at that time, into the weekly partitions it would have created ahead.
SELECT stratum_create_partitions(now() - interval '120 days', now());
INSERT INTO webhook_events (id, event_type, payload, created_at)
SELECT stratum_uuid_v7_at(now() - interval '120 days'), 'tenant.updated', jsonb_build_object('n', g),
       now() - interval '120 days'
  FROM generate_series(1, $PURGE_N) g;
INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, attempts, created_at, completed_at)
SELECT stratum_uuid_v7_at(e.created_at), '$HOOK', e.id, 'tenant.updated', 'success', 1, e.created_at, e.created_at + interval '1 second'
  FROM webhook_events e;
INSERT INTO webhook_delivery_attempts (id, delivery_id, event_id, attempt, status_code, duration_ms, created_at)
SELECT stratum_uuid_v7_at(d.created_at), d.id, d.event_id, 1, 200, 12, d.created_at FROM webhook_deliveries d;
VACUUM ANALYZE webhook_events, webhook_deliveries, webhook_delivery_attempts;
SQL
    echo "purge: loaded $PURGE_N events + deliveries + attempts in $(echo "$(date +%s.%N) - $t0" | bc) s" >&2
    start_server "$CURRENT_KEY"
    read -r secs body < <(post /maintenance/purge-expired '{}')
    echo "purge: $body (server peak RSS $(rss_peak_kib) KiB)" >&2
    case "$body" in *"\"deliveries\":$PURGE_N"*) ;; *) echo "purge failed: $body" >&2; exit 1 ;; esac
    left=$(sql -tAc "SELECT (SELECT count(*) FROM webhook_deliveries) + (SELECT count(*) FROM webhook_events) + (SELECT count(*) FROM webhook_delivery_attempts)")
    [ "$left" = 0 ] || { echo "purge left $left rows" >&2; exit 1; }
    SUMMARY+=("purge-expired          ${PURGE_N} deliveries + attempts + events              ${secs} s (HTTP round trip, one transaction; server peak RSS $(rss_peak_kib) KiB)")
    stop_server
    ;;
  *) echo "unknown scenario: $s (rotation, purge)" >&2; exit 2 ;;
  esac
done

"${PSQL[@]}" "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
echo
echo "maintenance benchmarks ($(nproc) CPUs, PostgreSQL $("${PSQL[@]}" -d postgres -tAc 'SHOW server_version'))"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
