#!/usr/bin/env bash
# Brings up (or down) one of this checkout's own PostgreSQL clusters: no Docker, nothing
# assumed running.
# Usage: scripts/pg.sh up [db...] | down | status | url [db] | server-url | port | prefix
#
# Two clusters per checkout, kept apart (own data directory, own port):
#   STRATUM_PG_CLUSTER=dev  (default)  127.0.0.1:25432, durable: `make run`, `make bench`
#   STRATUM_PG_CLUSTER=test            127.0.0.1:25433, fsync=off: `make test`, `make lint`
# Both ports lie below the ephemeral range (32768-60999), so no outgoing connection of the
# machine can hold them. STRATUM_PG_PORT overrides the port (e.g. for a second checkout:
# `up` refuses a PostgreSQL on its port that is not this checkout's cluster).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
CLUSTER=${STRATUM_PG_CLUSTER:-dev}
case "$CLUSTER" in
  dev) DEFAULT_PORT=25432 ;;
  test) DEFAULT_PORT=25433 ;;
  *) echo "pg: STRATUM_PG_CLUSTER must be dev or test, not '$CLUSTER'" >&2; exit 2 ;;
esac
PORT=${STRATUM_PG_PORT:-$DEFAULT_PORT}
PG_USER=${STRATUM_PG_OS_USER:-stratum-pg}
# The clusters live under /tmp keyed by the checkout path: a checkout under /root is not
# reachable by the unprivileged user that must own the cluster.
HASH=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
PGDATA_DIR=${STRATUM_PGDATA:-/tmp/stratum-pg-$HASH-$CLUSTER}
DATA="$PGDATA_DIR/data"
SOCK="$PGDATA_DIR/sock"
LOG="$PGDATA_DIR/postgres.log"
# Test databases of this checkout are named "<prefix><uuid>": `make test` drops only those,
# so checkouts sharing a server never drop each other's (stratum-testkit derives the same
# default from the same path).
DB_PREFIX=${STRATUM_TEST_DB_PREFIX:-stratum_t_$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)_}

find_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir 2>/dev/null)/initdb" ]; then
    pg_config --bindir; return
  fi
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v initdb)")"; return; fi
  return 1
}

install_pg() {
  echo "pg: PostgreSQL server binaries not found; installing Debian's postgresql package" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq postgresql postgresql-contrib >&2
}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

ensure_owner() {
  [ "$(id -u)" -eq 0 ] || return 0
  if ! id "$PG_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER" 2>/dev/null \
      || adduser --system --no-create-home "$PG_USER" >/dev/null
  fi
}

running() {
  [ -f "$DATA/postmaster.pid" ] || return 1
  local pid; pid=$(head -1 "$DATA/postmaster.pid" 2>/dev/null || true)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres
}

# Fails unless the PostgreSQL answering on $PORT is this checkout's cluster ($DATA).
ensure_ours() {
  local theirs ours
  theirs=$("$BIN/psql" -X -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc "SHOW data_directory" 2>/dev/null) \
    || theirs="(unknown: it does not let this script in as postgres without a password)"
  ours=$(readlink -f "$DATA" 2>/dev/null || echo "$DATA")
  if [ "$theirs" != "$ours" ] && [ "$theirs" != "$DATA" ]; then
    cat >&2 <<MSG
pg: 127.0.0.1:$PORT is already served by a PostgreSQL that is not this checkout's $CLUSTER cluster:
pg:   its data directory:  $theirs
pg:   this checkout's:     $DATA
pg: stop that server, or give this checkout another port (STRATUM_PG_PORT=<port> make ...).
MSG
    exit 1
  fi
}

up() {
  BIN=$(find_bindir) || { install_pg; BIN=$(find_bindir); }
  if running || "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres 2>/dev/null; then
    ensure_ours
    create_dbs "$@"
    return 0
  fi
  ensure_owner
  mkdir -p "$PGDATA_DIR" "$SOCK"
  [ "$(id -u)" -eq 0 ] && chown -R "$PG_USER" "$PGDATA_DIR"
  chmod 700 "$PGDATA_DIR"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    echo "pg: initdb into $DATA" >&2
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null 2>&1 \
      || as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  fi
  # A crash (kill -9, reboot) leaves a postmaster.pid behind whose process is gone.
  if [ -f "$DATA/postmaster.pid" ]; then
    local pid; pid=$(head -1 "$DATA/postmaster.pid" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "pg: removing stale postmaster.pid" >&2
      rm -f "$DATA/postmaster.pid" "$SOCK"/.s.PGSQL."$PORT".lock
    fi
  fi
  local extra=()
  if [ "$CLUSTER" = test ]; then
    # The test cluster only: durability is not what tests measure.
    extra=(-c fsync=off -c synchronous_commit=off -c full_page_writes=off)
  fi
  as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start -o \
    "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$SOCK -c max_connections=400 -c shared_buffers=256MB ${extra[*]}" >/dev/null \
    || { tail -30 "$LOG" >&2; exit 1; }
  for _ in $(seq 1 50); do
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres && break
    sleep 0.1
  done
  ensure_ours
  create_dbs "$@"
  echo "pg: $CLUSTER cluster running on 127.0.0.1:$PORT (data $DATA)" >&2
}

create_dbs() {
  for db in "$@"; do
    "$BIN/psql" -X -h 127.0.0.1 -p "$PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
      || "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -c "CREATE DATABASE \"$db\""
  done
}

down() {
  BIN=$(find_bindir) || exit 0
  [ -f "$DATA/postmaster.pid" ] || { echo "pg: not running" >&2; return 0; }
  as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
  echo "pg: stopped" >&2
}

cmd=${1:-up}; shift || true
case "$cmd" in
  up) BIN=$(find_bindir || true); up "$@" ;;
  down) down ;;
  status) BIN=$(find_bindir) && running && echo running || { echo stopped; exit 1; } ;;
  url) echo "postgres://postgres@127.0.0.1:$PORT/${1:-stratum}" ;;
  server-url) echo "postgres://postgres@127.0.0.1:$PORT" ;;
  port) echo "$PORT" ;;
  prefix) echo "$DB_PREFIX" ;;
  *) echo "usage: $0 up|down|status|url [db]|server-url|port|prefix" >&2; exit 2 ;;
esac
