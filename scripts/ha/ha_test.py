#!/usr/bin/env python3
"""The failover test: a Patroni cluster (one etcd, two PostgreSQL members, synchronous
replication) on the loopback, two `stratum serve --no-worker` and two `stratum worker` on
the multi-host URL, a webhook receiver and a steady PATCH load; then, under that load, a
planned switchover, a kill -9 of the primary (postmaster and its Patroni), and the old
primary rejoining (pg_rewind through Patroni) followed by a failover back to it.

After each fault it proves the fault's precondition first, then that every acknowledged
write is in the audit log and the tenants' final state, that every acknowledged write's
event reached the receiver, that no write refused with 503 took effect, that the audit
chain verifies and that no process restarted. One line per fault:

    ha <fault>: unavailable_s=<x> acknowledged_lost=<n> deliveries_lost=<n> duplicates=<n> in_flight=<n> retried=<n>

and a non-zero exit when anything was lost. `in_flight` counts the deliveries leased (claimed,
their completion not yet written) when the fault struck, as the database itself holds them:
the promotion candidate's last state while it was still a standby, and the new primary's
leases taken before it was seen leading. Only those can be sent twice (a send whose
completion the fault swallowed goes again once its lease expires), so every duplicate must
be one of them, except a retry: a duplicate whose earlier send was recorded as a failed
attempt (the receiver answered after the send timeout), counted apart as `retried`.
Standard library only.

Usage: ha_test.py --bin target/release/stratum   (scripts/ha/run.sh prepares and calls it)
       ha_test.py ... --sync-bench 'COMMAND'      (no faults: COMMAND against the primary with a
                                                   synchronous standby, then an asynchronous one)
       ha_test.py receiver --port P --out FILE    (the webhook receiver, run by the test)
"""

import argparse
import http.client
import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Ports: BASE to BASE + 50 (scripts/ha/run.sh derives BASE from STRATUM_PG_PORT so that
# checkouts with their own PostgreSQL port do not collide; STRATUM_HA_PORT_BASE sets it).
BASE = int(os.environ.get("STRATUM_HA_PORT_BASE", "26000"))
ETCD_CLIENT, ETCD_PEER = BASE, BASE + 1
PG = [BASE + 10, BASE + 11]
REST = [BASE + 20, BASE + 21]
API = [BASE + 30, BASE + 31]
WORKER_OPS = [BASE + 40, BASE + 41]
RECEIVER = BASE + 50
MEMBERS = ["pg0", "pg1"]
TENANTS = 64
WRITERS = 16
RATE = float(os.environ.get("STRATUM_HA_RATE", "240"))  # PATCHes per second, all writers
TTL = 20  # Patroni's leader key lifetime (its minimum): bounds the unplanned failover.
WEBHOOK_TIMEOUT_MS = 2000
RECEIVER_DELAY_S = float(os.environ.get("STRATUM_HA_RECEIVER_DELAY_MS", "50")) / 1000
# A worker's lease on the deliveries it claims (crates/server/src/wiring.rs: three send
# timeouts plus 5 s).
LEASE_S = 3 * WEBHOOK_TIMEOUT_MS / 1000 + 5
# The deliveries leased and not completed, with the last instant of their leases.
LEASED_SQL = ("SELECT id, extract(epoch FROM lease_expires_at) FROM webhook_deliveries "
              "WHERE status = 'pending' AND lease_id IS NOT NULL")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- receiver


def receiver(port, out):
    lock = threading.Lock()
    f = open(out, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                ev = json.loads(body)
                name = (ev.get("data") or {}).get("name", "")
                line = f"{self.headers.get('X-Stratum-Delivery')}\t{ev.get('id')}\t{name}\n"
            except ValueError:
                line = f"{self.headers.get('X-Stratum-Delivery')}\t-\t-\n"
            with lock:
                f.write(line)
            # A receiver that takes a moment, as real ones do: deliveries are in flight at
            # any instant, so every fault strikes some.
            time.sleep(RECEIVER_DELAY_S)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


# ---------------------------------------------------------------------------- helpers


def http_json(method, url, key=None, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw
    except (OSError, http.client.HTTPException):
        return None, None


def wait_for(what, pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - a probe that fails is a probe that says no
            pass
        time.sleep(0.2)
    raise SystemExit(f"ha: timed out after {timeout}s waiting for {what}")


class Test:
    def __init__(self, args):
        self.bin = os.path.abspath(args.bin)
        self.dir = args.dir
        self.pgbin = args.pgbin
        self.user = args.user
        self.procs = {}  # name -> Popen (processes that must never restart)
        self.patroni = {}  # member -> Popen
        self.key = "sk_ha_" + secrets.token_hex(24)
        self.enc = secrets.token_hex(24)
        self.url = (
            "postgres://postgres@"
            + ",".join(f"127.0.0.1:{p}" for p in PG)
            + "/stratum?target_session_attrs=read-write&connect_timeout=2"
        )
        self.records = []  # (token, tenant, t_start, t_end, outcome)
        self.rec_lock = threading.Lock()
        self.open = {}  # token -> t_start of the PATCHes sent and not yet answered
        self.stop = threading.Event()
        self.receipts_file = os.path.join(self.dir, "receiver.tsv")
        self.failed = False

    # ------------------------------------------------------------------ processes

    def owner(self):
        if os.getuid() != 0:
            return {}
        pw = pwd.getpwnam(self.user)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def spawn(self, name, argv, env=None, as_owner=False):
        logf = open(os.path.join(self.dir, f"{name}.log"), "ab")
        kw = self.owner() if as_owner else {}
        e = dict(os.environ)
        e.update(env or {})
        if as_owner:
            e["HOME"] = self.dir
        p = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, env=e, cwd=self.dir,
            start_new_session=True, **kw,
        )
        # For scripts/ha/run.sh to stop what an interrupted run left behind.
        with open(os.path.join(self.dir, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def patroni_config(self, i):
        m = MEMBERS[i]
        cfg = {
            "scope": "stratum-ha",
            "namespace": f"/stratum-ha-{os.path.basename(self.dir)}/",
            "name": m,
            "restapi": {"listen": f"127.0.0.1:{REST[i]}", "connect_address": f"127.0.0.1:{REST[i]}"},
            "etcd3": {"hosts": [f"127.0.0.1:{ETCD_CLIENT}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": 2,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 0,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_log_hints": "on",
                            "max_connections": 200,
                            "max_wal_senders": 5,
                            "max_replication_slots": 5,
                            "wal_keep_size": "256MB",
                            "hot_standby": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{PG[i]}",
                "connect_address": f"127.0.0.1:{PG[i]}",
                "data_dir": os.path.join(self.dir, m, "data"),
                "bin_dir": self.pgbin,
                "pgpass": os.path.join(self.dir, m, "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {"unix_socket_directories": os.path.join(self.dir, m)},
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }
        path = os.path.join(self.dir, f"{m}.yml")
        # JSON is YAML: no YAML writer needed.
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)
        return path

    def start_patroni(self, i):
        m = MEMBERS[i]
        os.makedirs(os.path.join(self.dir, m), mode=0o700, exist_ok=True)
        self.chown(os.path.join(self.dir, m))
        cfg = self.patroni_config(i)
        self.patroni[m] = self.spawn(f"patroni-{m}", ["patroni", cfg], as_owner=True)

    def chown(self, path):
        if os.getuid() == 0:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def member(self, i):
        st, body = http_json("GET", f"http://127.0.0.1:{REST[i]}/patroni", timeout=2)
        return body if st == 200 else None

    def cluster(self):
        for i in range(2):
            st, body = http_json("GET", f"http://127.0.0.1:{REST[i]}/cluster", timeout=2)
            if st == 200:
                return body
        return None

    def leader(self):
        """The index of the member Patroni's REST API says is the primary, or None."""
        for i in range(2):
            st, _ = http_json("GET", f"http://127.0.0.1:{REST[i]}/primary", timeout=2)
            if st == 200:
                return i
        return None

    def has_sync_standby(self):
        c = self.cluster()
        return bool(c) and any(
            m.get("role") == "sync_standby" and m.get("state") in ("streaming", "running")
            for m in c.get("members", [])
        )

    def psql(self, sql, port=None):
        port = port or PG[self.leader()]
        out = subprocess.run(
            [os.path.join(self.pgbin, "psql"), "-X", "-q", "-At", "-h", "127.0.0.1", "-p",
             str(port), "-U", "postgres", "-d", "stratum", "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )
        return out.stdout

    def leases_on(self, port):
        """What the member at `port` holds of the deliveries leased and not completed:
        (is a standby, has replayed all it received, {delivery id: lease end (epoch s)})."""
        out = subprocess.run(
            [os.path.join(self.pgbin, "psql"), "-X", "-q", "-At", "-h", "127.0.0.1", "-p",
             str(port), "-U", "postgres", "-d", "stratum", "-c",
             "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_receive_lsn() <= "
             "pg_last_wal_replay_lsn(), true), coalesce((SELECT string_agg(l.id::text || ':' "
             f"|| l.until::text, ',') FROM ({LEASED_SQL}) AS l (id, until)), '')"],
            check=True, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        standby, caught_up, rows = out.split("|")
        leases = {}
        for row in filter(None, rows.split(",")):
            i, until = row.split(":")
            leases[i] = float(until)
        return standby == "t", caught_up == "t", leases

    def watch_candidate(self, cand):
        """Samples the leases on the member about to be promoted while it is still a
        standby: its last sample after the old primary stopped is the old primary's final
        state (every claim commits, synchronously replicated, before its send)."""
        state = {"leases": None, "samples": 0, "promoted_at": None, "stop": threading.Event()}

        def run():
            while not state["stop"].is_set():
                try:
                    standby, caught_up, leases = self.leases_on(PG[cand])
                except (subprocess.SubprocessError, ValueError, OSError):
                    time.sleep(0.05)
                    continue
                if not standby:
                    state["promoted_at"] = time.time()
                    return
                if caught_up:
                    state["leases"] = leases
                    state["samples"] += 1
                time.sleep(0.05)

        state["thread"] = threading.Thread(target=run, daemon=True)
        state["thread"].start()
        return state

    def in_flight_after(self, fault, watch, lead, t_seen_wall):
        """The deliveries leased when the fault struck: the candidate's last sample as a
        standby, and the leases that the new primary (`lead`) holds from before it was
        promoted (seen by the sampler, else `t_seen_wall`): a planned switchover can end the
        old primary after the candidate's last sample; those leases run LEASE_S, longer
        than the switchover."""
        watch["thread"].join(timeout=30)
        watch["stop"].set()
        promoted = watch["promoted_at"] or t_seen_wall
        _, _, now = self.leases_on(PG[lead])
        mine = {i for i, until in now.items() if until - LEASE_S <= promoted}
        sampled = set(watch["leases"] or {})
        ids = sampled | mine
        log(f"{fault}: in flight at the fault: {len(ids)} deliveries leased "
            f"({len(sampled)} on the standby's last of {watch['samples']} samples, "
            f"{len(mine)} on the new primary from before it led)")
        return ids

    def open_writes(self):
        """Waits (up to 5 s) until at least one PATCH is sent and not yet answered, so that
        the fault strikes while writes are in flight; the caller checks afterwards."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.rec_lock:
                if self.open:
                    return len(self.open)
            time.sleep(0.001)
        return 0

    def patronictl(self, *args):
        cfg = os.path.join(self.dir, "pg0.yml")
        r = subprocess.run(["patronictl", "-c", cfg, *args], capture_output=True, text=True,
                           timeout=60, **self.owner())
        log(f"patronictl {' '.join(args)} -> {r.returncode}: {r.stdout.strip()[-300:]} {r.stderr.strip()[-300:]}")
        return r.returncode

    def start(self):
        log(f"cluster in {self.dir}, ports {BASE}-{BASE + 50}")
        for port in [ETCD_CLIENT, ETCD_PEER, BASE + 2, *PG, *REST, *API, *WORKER_OPS, RECEIVER]:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    raise SystemExit(f"ha: 127.0.0.1:{port} is taken; set STRATUM_HA_PORT_BASE "
                                     "(or STRATUM_PG_PORT) to another base")
        self.procs["etcd"] = self.spawn("etcd", [
            "etcd", "--name", "ha", "--data-dir", os.path.join(self.dir, "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{ETCD_CLIENT}",
            "--advertise-client-urls", f"http://127.0.0.1:{ETCD_CLIENT}",
            "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER}",
            "--initial-cluster", f"ha=http://127.0.0.1:{ETCD_PEER}",
            "--listen-metrics-urls", f"http://127.0.0.1:{BASE + 2}",
        ], as_owner=True)
        wait_for("etcd", lambda: http_json("GET", f"http://127.0.0.1:{ETCD_CLIENT}/health")[0] == 200, 30)
        self.start_patroni(0)
        wait_for("pg0 to bootstrap as the primary", lambda: self.leader() == 0, 90)
        self.start_patroni(1)
        wait_for("pg1 to stream as a synchronous standby", self.has_sync_standby, 90)

    def start_stratum(self):
        subprocess.run([os.path.join(self.pgbin, "psql"), "-X", "-q", "-h", "127.0.0.1", "-p",
                        str(PG[0]), "-U", "postgres", "-d", "postgres", "-c",
                        "CREATE DATABASE stratum"], check=True)
        env = self.stratum_env()
        subprocess.run([self.bin, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        for i in range(2):
            self.procs[f"serve{i}"] = self.spawn(
                f"serve{i}", [self.bin, "serve", "--no-worker"],
                env={**self.stratum_env(), "STRATUM_BIND": f"127.0.0.1:{API[i]}"})
        for i in range(2):
            self.procs[f"worker{i}"] = self.spawn(
                f"worker{i}", [self.bin, "worker"],
                env={**self.stratum_env(), "STRATUM_WORKER_BIND": f"127.0.0.1:{WORKER_OPS[i]}"})
        self.procs["receiver"] = self.spawn("receiver", [
            sys.executable, os.path.abspath(__file__), "receiver", "--port", str(RECEIVER),
            "--out", self.receipts_file])
        for i in range(2):
            wait_for(f"serve{i} ready",
                     lambda i=i: http_json("GET", f"http://127.0.0.1:{API[i]}/ready")[0] == 200, 60)
        wait_for("receiver", lambda: http_json("POST", f"http://127.0.0.1:{RECEIVER}/", body={})[0] == 200, 20)

    def stratum_env(self):
        return {
            "DATABASE_URL": self.url,
            "STRATUM_ENCRYPTION_KEY": self.enc,
            "STRATUM_ADMIN_API_KEY": self.key,
            "STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "STRATUM_WEBHOOK_TIMEOUT_MS": str(WEBHOOK_TIMEOUT_MS),
            "STRATUM_WEBHOOK_BACKOFF_BASE_MS": "500",
            "STRATUM_WEBHOOK_BACKOFF_MAX_MS": "2000",
            "STRATUM_WEBHOOK_MAX_ATTEMPTS": "50",
            "STRATUM_RATE_LIMIT_PER_SECOND": "100000",
            "STRATUM_RATE_LIMIT_BURST": "100000",
            "STRATUM_LOG_FORMAT": "json",
            "RUST_LOG": "warn",
        }

    def shutdown(self):
        self.stop.set()
        for name, p in list(self.procs.items()) + [(f"patroni-{m}", p) for m, p in self.patroni.items()]:
            if name == "etcd":
                continue
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in list(self.patroni.values()):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        # A member killed with -9 leaves its postmaster behind only if the test stopped
        # half-way; stop whatever still runs in the members' data directories.
        for m in MEMBERS:
            pidfile = os.path.join(self.dir, m, "data", "postmaster.pid")
            if os.path.exists(pidfile):
                try:
                    os.kill(int(open(pidfile).readline()), signal.SIGQUIT)
                except (OSError, ValueError):
                    pass
        etcd = self.procs.get("etcd")
        if etcd and etcd.poll() is None:
            os.killpg(etcd.pid, signal.SIGTERM)
            etcd.wait(timeout=10)

    # ------------------------------------------------------------------ load

    def setup_tenants(self):
        self.tenants = []
        api = f"http://127.0.0.1:{API[0]}/api/v1"
        run = secrets.token_hex(3)
        for n in range(TENANTS):
            st, t = http_json("POST", f"{api}/tenants", self.key, {"name": "t", "slug": f"ha_{run}_{n}"})
            assert st == 201, (st, t)
            st, w = http_json("POST", f"{api}/webhooks", self.key, {
                "url": f"http://127.0.0.1:{RECEIVER}/hook", "events": ["tenant.updated"],
                "tenant_id": t["id"], "secret": "whsec_" + secrets.token_hex(16)})
            assert st == 201, (st, w)
            self.tenants.append(t["id"])

    def writer(self, w):
        mine = self.tenants[w::WRITERS]
        period = WRITERS / RATE
        seq = 0
        nxt = time.monotonic()
        while not self.stop.is_set():
            tenant = mine[seq % len(mine)]
            port = API[seq % 2]
            token = f"w{w}_{seq}"
            seq += 1
            body = json.dumps({"name": token})
            # The client waits longer than a server takes to settle a commit whose answer was
            # lost (stratum_postgres::tx::COMMIT_SETTLE, 30 s): every write gets an answer.
            t0 = time.monotonic()
            with self.rec_lock:
                self.open[token] = t0
            outcome = "err"
            # A connection per request: a kept-alive one that the server closed while this
            # writer waited on the other server would fail a request it never received.
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=45)
            try:
                c.request("PATCH", f"/api/v1/tenants/{tenant}", body,
                          {"Content-Type": "application/json", "X-API-Key": self.key})
                r = c.getresponse()
                r.read()
                outcome = "ok" if 200 <= r.status < 300 else str(r.status)
            except (OSError, http.client.HTTPException) as e:
                outcome = f"err:{type(e).__name__}"
            finally:
                c.close()
            t1 = time.monotonic()
            with self.rec_lock:
                self.records.append((token, tenant, t0, t1, outcome))
                del self.open[token]
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    def watch_ready(self):
        """Samples /ready of every Stratum process (the API's and the workers' operations
        port) four times a second: (time, port, status)."""
        self.ready = []
        ports = API + WORKER_OPS

        def run():
            while not self.stop.is_set():
                for port in ports:
                    st, _ = http_json("GET", f"http://127.0.0.1:{port}/ready", timeout=6)
                    self.ready.append((time.monotonic(), port, st))
                time.sleep(0.25)

        threading.Thread(target=run, daemon=True).start()

    def start_load(self):
        self.threads = [threading.Thread(target=self.writer, args=(w,), daemon=True) for w in range(WRITERS)]
        for t in self.threads:
            t.start()

    # ------------------------------------------------------------------ checks

    def receipts(self):
        out = []
        try:
            with open(self.receipts_file) as f:
                for line in f:
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) == 3 and parts[0] != "None":
                        out.append(parts)
        except FileNotFoundError:
            pass
        return out

    def snapshot(self):
        with self.rec_lock:
            return list(self.records)

    def check(self, fault, t_fault, seen_receipts, in_flight):
        # Precondition: writes were in flight when the fault struck (sent before, answered
        # after), and so were deliveries (leased, their completion not yet written).
        # The fault strikes at the kill for kill9; a planned one when the old primary stops
        # taking writes, seen as the start of the first request that failed.
        recs = self.snapshot()
        strike = t_fault
        if fault != "kill9":
            failed = [r[2] for r in recs if r[2] >= t_fault and r[4] != "ok"]
            strike = min(failed) if failed else t_fault
        open_at_fault = sum(1 for r in recs if r[2] <= strike < r[3])
        if open_at_fault == 0 or not in_flight:
            raise SystemExit(f"ha {fault}: precondition failed: {open_at_fault} PATCHes and "
                             f"{len(in_flight)} deliveries in flight at the fault")
        log(f"{fault}: precondition: {open_at_fault} PATCHes in flight when the fault struck "
            f"({strike - t_fault:.2f} s after it was started)")
        # Every delivery in flight at the fault is settled (its lease ran out and it was sent
        # again, or its completion was written) before duplicates are counted, so that a
        # resend lands in this fault's count and not in the next one's.
        ids = "{" + ",".join(sorted(in_flight)) + "}"
        wait_for(f"{fault}: the deliveries in flight at the fault to settle", lambda: self.psql(
            f"SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' "
            f"AND id = ANY('{ids}'::uuid[])").strip() == "0", 90)
        cut = time.monotonic()
        recs = [r for r in self.snapshot() if r[3] <= cut]
        acked = {r[0] for r in recs if r[4] == "ok"}
        refused = {r[0] for r in recs if r[4] == "503"}
        other = [r for r in recs if r[4] not in ("ok", "503")]
        kinds = sorted({r[4] for r in other})
        phase = [r for r in recs if r[3] >= t_fault]
        # Unavailability: from the first failed request of this fault to the first success
        # that started after its last failed one.
        fails = [r for r in phase if r[4] != "ok"]
        unavailable = 0.0
        if fails:
            first = min(r[2] for r in fails)
            last = max(r[2] for r in fails)
            after = [r[3] for r in phase if r[4] == "ok" and r[2] > last]
            unavailable = (min(after) if after else cut) - first
        oks = sorted(r[3] for r in phase if r[4] == "ok")
        stall = max((b - a for a, b in zip(oks, oks[1:])), default=0.0)

        # Final state: no tenant's name is older than its last acknowledged write (one
        # writer owns each tenant and numbers its writes in order), and it is a write that
        # the audit log holds.
        names = dict(line.split("|") for line in self.psql(
            "SELECT id, name FROM tenants WHERE name LIKE 'w%'").split())
        # Every acknowledged write is in the audit log (read on the current primary, after
        # the names, so that every name read is in it).
        audited = set(self.psql(
            "SELECT after_state->>'name' FROM audit_logs WHERE action = 'tenant.updated'").split())
        acked_lost = len(acked - audited)
        refused_applied = len(refused & audited)
        last_acked = {}
        for r in recs:
            if r[4] == "ok":
                last_acked[r[1]] = max(last_acked.get(r[1], -1), int(r[0].split("_")[1]))
        stale = 0
        for tenant, seq in last_acked.items():
            name = names.get(tenant)
            if name is None or int(name.split("_")[1]) < seq or name not in audited:
                stale += 1
        # Every acknowledged write's event reached the receiver (wait for the backlog).
        deadline = time.monotonic() + 90
        while True:
            rc = self.receipts()
            delivered = {r[2] for r in rc}
            missing = acked - delivered
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        new = rc[seen_receipts:]
        seen_ids = {r[0] for r in rc[:seen_receipts]}
        duplicates = 0
        duplicated = set()
        dup_count = {}
        for r in new:
            if r[0] in seen_ids:
                duplicates += 1
                duplicated.add(r[0])
                dup_count[r[0]] = dup_count.get(r[0], 0) + 1
            seen_ids.add(r[0])
        # A duplicate whose delivery has an attempt recorded as failed (the receiver's answer
        # came after the send timeout) is an ordinary retry. Any other is a send whose
        # completion the fault swallowed, sent again after its lease: those are bounded by
        # what was in flight (each is a delivery leased at the fault, sent again at most once).
        failed_attempts = {}
        if duplicated:
            dids = "{" + ",".join(sorted(duplicated)) + "}"
            for line in self.psql(
                    "SELECT delivery_id, string_agg(DISTINCT left(coalesce(error, 'status ' || "
                    "status_code), 60), ';') FROM webhook_delivery_attempts "
                    f"WHERE delivery_id = ANY('{dids}'::uuid[]) AND (status_code IS NULL "
                    "OR status_code NOT BETWEEN 200 AND 299) GROUP BY 1").splitlines():
                i, errors = line.split("|", 1)
                failed_attempts[i] = errors
        retried = sum(n for i, n in dup_count.items() if i in failed_attempts)
        swallowed = duplicates - retried
        errors = sorted(set(failed_attempts.values()))
        unexplained = sorted(i for i in duplicated if i not in failed_attempts and i not in in_flight)
        log(f"{fault}: duplicates: {swallowed} of sends whose completion was lost, {retried} "
            f"retries after a failed attempt {errors[:3]}")
        if swallowed > len(in_flight) or unexplained:
            log(f"{fault}: {swallowed} sends whose completion was lost exceed the "
                f"{len(in_flight)} deliveries in flight at the fault (not in flight: {unexplained[:5]})")
            self.failed = True
        refused_delivered = len(refused & delivered)
        st, v = http_json("GET", f"http://127.0.0.1:{API[0]}/api/v1/audit-logs/verify", self.key, timeout=60)
        verified = st == 200 and v and v.get("ok") is True
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        # /ready said 503 while no primary was reachable (on the unplanned failover, long
        # enough to be sampled), and 200 again on every process before the checks.
        ready = [x for x in list(self.ready) if x[0] >= t_fault]
        ready_503 = sorted({p for _, p, st in ready if st == 503})
        ready_now = {p: st for _, p, st in ready}
        not_ready = sorted(p for p, st in ready_now.items() if st != 200)
        if fault == "kill9" and not ready_503:
            log("kill9: /ready never answered 503 during the outage")
            self.failed = True
        if not_ready:
            log(f"{fault}: /ready is not 200 on {not_ready}")
            self.failed = True
        rate = len([r for r in phase]) / max(cut - t_fault, 1e-9)
        log(f"{fault}: acked={len(acked)} refused_503={len(refused)} unanswered={len(other)} {kinds} "
            f"phase_requests={len(phase)} ({rate:.0f}/s) max_stall_s={stall:.2f} "
            f"refused_applied={refused_applied} refused_delivered={refused_delivered} "
            f"stale_tenants={stale} verify={v if not verified else 'ok'} dead={dead} "
            f"ready_503_on={ready_503}")
        print(f"ha {fault}: unavailable_s={unavailable:.2f} acknowledged_lost={acked_lost} "
              f"deliveries_lost={len(missing)} duplicates={duplicates} in_flight={len(in_flight)} "
              f"retried={retried}",
              flush=True)
        if acked_lost or missing or refused_applied or refused_delivered or stale or not verified or dead:
            self.failed = True
        return len(rc)

    def in_flight_at(self, t):
        """Writes acknowledged in the two seconds before `t` (the load is on) and whether the
        load thread pool is still issuing requests."""
        recs = self.snapshot()
        return sum(1 for r in recs if r[4] == "ok" and t - 2 <= r[3] <= t)

    # ------------------------------------------------------------------ faults

    def precondition_load(self, fault):
        n = self.in_flight_at(time.monotonic())
        if n < 100:
            raise SystemExit(f"ha {fault}: precondition failed: only {n} writes acknowledged in the last 2 s")
        log(f"{fault}: precondition: {n} writes acknowledged in the 2 s before the fault")

    def switchover(self):
        lead = self.leader()
        assert lead is not None, "no primary before the switchover"
        wait_for("a synchronous standby", self.has_sync_standby, 60)
        other = 1 - lead
        self.precondition_load("switchover")
        log(f"switchover: precondition: {MEMBERS[lead]} is the primary, {MEMBERS[other]} a synchronous standby")
        watch = self.watch_candidate(other)
        self.open_writes()
        t = time.monotonic()
        if self.patronictl("switchover", "--leader", MEMBERS[lead], "--candidate", MEMBERS[other], "--force") != 0:
            raise SystemExit("ha switchover: patronictl failed")
        wait_for(f"{MEMBERS[other]} to lead", lambda: self.leader() == other, 60)
        return t, self.in_flight_after("switchover", watch, other, time.time())

    def kill9(self):
        lead = self.leader()
        assert lead is not None
        wait_for("a synchronous standby", self.has_sync_standby, 60)
        m = MEMBERS[lead]
        pidfile = os.path.join(self.dir, m, "data", "postmaster.pid")
        postmaster = int(open(pidfile).readline())
        # Precondition: that postmaster serves the primary's port, as the primary.
        st, info = http_json("GET", f"http://127.0.0.1:{REST[lead]}/patroni")
        assert st == 200 and info["role"] in ("master", "primary") and info["postmaster_start_time"], info
        pat = self.patroni[m]
        assert pat.poll() is None
        self.precondition_load("kill9")
        log(f"kill9: precondition: {m} is the primary (postmaster {postmaster}, patroni {pat.pid})")
        watch = self.watch_candidate(1 - lead)
        self.open_writes()
        t = time.monotonic()
        os.kill(pat.pid, signal.SIGKILL)
        os.kill(postmaster, signal.SIGKILL)
        self.killed = lead
        wait_for(f"{MEMBERS[1 - lead]} to lead", lambda: self.leader() == 1 - lead, 90)
        return t, self.in_flight_after("kill9", watch, 1 - lead, time.time())

    def rejoin_and_fail_back(self):
        old = self.killed
        m = MEMBERS[old]
        # Its orphaned backends die with the postmaster; wait until none holds the data dir.
        self.start_patroni(old)
        wait_for(f"{m} to rejoin as a synchronous standby",
                 lambda: self.member(old) and self.member(old)["role"] == "replica" and self.has_sync_standby(), 120)
        with open(os.path.join(self.dir, f"patroni-{m}.log"), errors="replace") as f:
            rewound = "pg_rewind exit code=0" in f.read()
        lead = self.leader()
        log(f"rejoin: {m} is a replica again (timeline {self.member(old).get('timeline')}, "
            f"pg_rewind {'ran' if rewound else 'was not needed'}); {MEMBERS[lead]} leads")
        self.precondition_load("failback")
        watch = self.watch_candidate(old)
        self.open_writes()
        t = time.monotonic()
        if self.patronictl("failover", "--candidate", m, "--force") != 0:
            raise SystemExit("ha failback: patronictl failed")
        wait_for(f"{m} to lead", lambda: self.leader() == old, 60)
        return t, self.in_flight_after("failback", watch, old, time.time())


def latencies(t, secs):
    """p50/p99 in ms of the PATCHes acknowledged in the next `secs` seconds."""
    t0 = time.monotonic()
    time.sleep(secs)
    lat = sorted((r[3] - r[2]) * 1000 for r in t.snapshot() if r[4] == "ok" and r[2] >= t0)
    if not lat:
        return "no writes"
    return (f"{len(lat) / secs:.0f}/s p50={lat[len(lat) // 2]:.1f}ms "
            f"p99={lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f}ms")


def sync_cost(t, secs):
    """The write latency of the same load with a synchronous standby and without one."""
    wait_for("a synchronous standby", t.has_sync_standby, 60)
    with_sync = latencies(t, secs)
    t.patronictl("edit-config", "--set", "synchronous_mode=false", "--force")
    wait_for("no synchronous standby", lambda: not t.has_sync_standby(), 60)
    time.sleep(2)
    without = latencies(t, secs)
    t.patronictl("edit-config", "--set", "synchronous_mode=true", "--force")
    log(f"write latency, synchronous standby: {with_sync}; asynchronous standby: {without}")


def sync_bench(t, command, runs):
    """Runs `command` (a benchmark that reads STRATUM_TEST_DATABASE_URL) against the
    cluster's primary `runs` times with a synchronous standby and as many with the standby
    asynchronous, alternated (on, off, on, off, ...)."""
    for n in range(runs):
        for sync in (True, False):
            t.patronictl("edit-config", "--set", f"synchronous_mode={'true' if sync else 'false'}", "--force")
            wait_for("the standby's mode", lambda: t.has_sync_standby() == sync, 60)
            lead = t.leader()
            url = f"postgres://postgres@127.0.0.1:{PG[lead]}"
            label = "synchronous" if sync else "asynchronous"
            log(f"sync-bench run {n + 1}/{runs}: {label} standby ({MEMBERS[lead]} leads): {command}")
            print(f"== sync-bench run {n + 1}: {label} standby", flush=True)
            r = subprocess.run(command, shell=True, env={**os.environ, "STRATUM_TEST_DATABASE_URL": url})
            if r.returncode != 0:
                t.failed = True


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "receiver":
        p = argparse.ArgumentParser()
        p.add_argument("cmd")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--out", required=True)
        a = p.parse_args()
        receiver(a.port, a.out)
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--pgbin", required=True)
    p.add_argument("--user", default="stratum-pg")
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--latency-secs", type=float, default=0,
                   help="after the faults, compare write latency with and without a synchronous standby")
    p.add_argument("--sync-bench", metavar="COMMAND",
                   help="no faults: run COMMAND against the cluster's primary with a synchronous "
                        "standby and with an asynchronous one, alternated")
    p.add_argument("--sync-bench-runs", type=int, default=2)
    a = p.parse_args()
    started = time.monotonic()
    t = Test(a)
    if a.sync_bench:
        try:
            t.start()
            sync_bench(t, a.sync_bench, a.sync_bench_runs)
        finally:
            t.shutdown()
        return 1 if t.failed else 0
    try:
        t.start()
        t.start_stratum()
        t.setup_tenants()
        t.watch_ready()
        t.start_load()
        time.sleep(a.settle)
        seen = 0
        for fault, run in (("switchover", t.switchover), ("kill9", t.kill9),
                           ("failback", t.rejoin_and_fail_back)):
            t_fault, in_flight = run()
            time.sleep(a.settle)
            seen = t.check(fault, t_fault, seen, in_flight)
        if a.latency_secs:
            sync_cost(t, a.latency_secs)
        recs = t.snapshot()
        span = recs[-1][3] - recs[0][2] if recs else 0
        log(f"load: {len(recs)} PATCHes in {span:.0f} s ({len(recs) / max(span, 1):.0f}/s); "
            f"wall time {time.monotonic() - started:.0f} s")
    finally:
        t.shutdown()
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
