#!/usr/bin/env bash
# `make ha-test`: installs what the failover test needs (Debian's patroni, etcd-server and
# postgresql packages, with sudo when not root), lays out a fresh folder for the cluster
# under /tmp keyed to this checkout (the unprivileged user that owns PostgreSQL cannot
# reach a checkout under /root) and runs scripts/ha/ha_test.py against the given binary.
# Usage: scripts/ha/run.sh <path to the stratum binary>
# STRATUM_HA_ARGS adds flags of ha_test.py (e.g. --latency-secs 15). Its ports are
# STRATUM_HA_PORT_BASE to +50; by default the base follows this checkout's PostgreSQL port
# (STRATUM_PG_PORT, as for scripts/pg.sh), so that checkouts with their own port keep apart:
# 26000 + (port mod 64) * 100, below the kernel's ephemeral range.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd -P)
BIN=${1:?usage: scripts/ha/run.sh <stratum binary>}
PG_USER=${STRATUM_PG_OS_USER:-stratum-pg}
HASH=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
DIR=${STRATUM_HA_DIR:-/tmp/stratum-ha-$HASH}
PG_PORT=${STRATUM_PG_PORT:-25432}
export STRATUM_HA_PORT_BASE=${STRATUM_HA_PORT_BASE:-$((26000 + (PG_PORT % 64) * 100))}

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
need=()
command -v patroni >/dev/null 2>&1 || need+=(patroni)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "ha: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq "${need[@]}" >&2
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

if [ "$(id -u)" -eq 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER" 2>/dev/null \
    || adduser --system --no-create-home "$PG_USER" >/dev/null
fi

# A previous run that was interrupted may have left members running in the folder.
if [ -d "$DIR" ]; then
  # Its processes (each started in the folder, in a session of its own) go first.
  if [ -f "$DIR/pids" ]; then
    while read -r pid; do
      [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$DIR" ] && kill -KILL -- "-$pid" 2>/dev/null || true
    done < "$DIR/pids"
  fi
  for pidfile in "$DIR"/pg*/data/postmaster.pid; do
    [ -f "$pidfile" ] && kill -QUIT "$(head -1 "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$DIR"
fi
mkdir -p "$DIR"
chmod 700 "$DIR"
[ "$(id -u)" -eq 0 ] && chown "$PG_USER" "$DIR"

exec python3 "$ROOT/scripts/ha/ha_test.py" --bin "$BIN" --dir "$DIR" --pgbin "$PGBIN" --user "$PG_USER" ${STRATUM_HA_ARGS:-}
