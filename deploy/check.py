#!/usr/bin/env python3
"""Checks the deploy manifests: they parse, validate against the real schemas
(Kubernetes via kubernetes-validate, Compose via the compose-spec schema bundled with
check-jsonschema), and every probe, port, command and secret points at something real; the
Patroni configuration and the CloudNativePG cluster describe the replicated database of
docs/OPERATIONS.md (three members, synchronous replication, pg_rewind possible)."""

import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV_BIN = pathlib.Path(sys.executable).parent
SUBCOMMANDS = {"serve", "worker", "migrate", "api-key", "openapi"}

failures = []


def fail(msg):
    failures.append(msg)


def routes_served():
    """Paths registered outside /api/v1 by the API crate (health, ready, metrics)."""
    found = set()
    for f in (ROOT / "crates/api/src").glob("*.rs"):
        found.update(re.findall(r'\.route\(\s*"(/[a-z]+)"', f.read_text()))
    return found


def check_k8s():
    served = routes_served()
    secret_keys = set()
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs.append((f.name, d))
                if d["kind"] == "Secret":
                    secret_keys.update(d.get("stringData", {}).keys())
    kinds = {d["kind"] for _, d in docs}
    for k in ("Deployment", "Service", "Job", "Secret"):
        if k not in kinds:
            fail(f"k8s: no {k} manifest")
    for name, d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        for c in spec["containers"]:
            args = c.get("args", [])
            if not args or args[0] not in SUBCOMMANDS:
                fail(f"{name}: container {c['name']} runs unknown subcommand {args}")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            env = {e["name"]: e for e in c.get("env", [])}
            for e in env.values():
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in secret_keys:
                    fail(f"{name}: secret key {ref['key']} is not in the Secret")
            for var in ("DATABASE_URL", "STRATUM_ENCRYPTION_KEY"):
                if args and args[0] in ("serve", "worker") and var not in env:
                    fail(f"{name}: {var} missing")
            if "DATABASE_URL" not in env:
                fail(f"{name}: DATABASE_URL missing")
            # A worker's port is its operations port (/health, /ready, /metrics).
            bind_var = "STRATUM_WORKER_BIND" if args and args[0] == "worker" else "STRATUM_BIND"
            bind = env.get(bind_var, {}).get("value")
            if ports and (not bind or int(bind.rsplit(":", 1)[1]) not in ports.values()):
                fail(f"{name}: {bind_var} {bind} does not match containerPort {ports}")
            for probe, want in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
                p = c.get(probe)
                if args and args[0] in ("serve", "worker"):
                    if not p:
                        fail(f"{name}: {probe} missing")
                        continue
                    path = p["httpGet"]["path"]
                    if path != want or path not in served:
                        fail(f"{name}: {probe} path {path} is not the served {want}")
                    if p["httpGet"]["port"] not in ports and p["httpGet"]["port"] not in ports.values():
                        fail(f"{name}: {probe} port {p['httpGet']['port']} is not a container port")
            if "resources" not in c or "requests" not in c["resources"]:
                fail(f"{name}: no resource requests")
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "stratum-api":
            if "--no-worker" not in d["spec"]["template"]["spec"]["containers"][0]["args"]:
                fail("api deployment must run serve --no-worker")
    r = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", *map(str, sorted((DEPLOY / "k8s").glob("*.yaml")))],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        fail("kubernetes-validate: " + r.stdout + r.stderr)


def check_compose():
    f = DEPLOY / "docker-compose.yml"
    d = yaml.safe_load(f.read_text())
    services = d["services"]
    for s in ("postgres", "stratum", "worker"):
        if s not in services:
            fail(f"compose: service {s} missing")
    if services.get("stratum", {}).get("command", [None])[0] != "serve":
        fail("compose: stratum must run serve")
    if services.get("worker", {}).get("command", [None])[0] != "worker":
        fail("compose: worker must run worker")
    r = subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(f)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        fail("compose-spec: " + r.stdout + r.stderr)


def check_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M | re.I)
    if len(stages) < 2:
        fail("Dockerfile: not multi-stage")
    if not re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M):
        fail("Dockerfile: runtime does not drop root")
    if "-p stratum-server" not in text or "/usr/local/bin/stratum" not in text:
        fail("Dockerfile: does not ship the stratum binary")


def check_patroni():
    files = sorted((DEPLOY / "patroni").glob("*.yml"))
    if len(files) != 3:
        fail(f"patroni: {len(files)} member configurations, not 3")
        return
    members = [(f.name, yaml.safe_load(f.read_text())) for f in files]
    if len({d["scope"] for _, d in members}) != 1:
        fail("patroni: members of different scopes")
    for key in ("name",):
        if len({d[key] for _, d in members}) != 3:
            fail(f"patroni: member {key}s are not distinct")
    for path in (("postgresql", "connect_address"), ("restapi", "connect_address")):
        if len({d[path[0]][path[1]] for _, d in members}) != 3:
            fail(f"patroni: {'.'.join(path)} not distinct")
    for name, d in members:
        hosts = d.get("etcd3", {}).get("hosts", [])
        if len(hosts) < 3:
            fail(f"{name}: etcd3 needs three hosts (a quorum that survives one loss), has {hosts}")
        dcs = d["bootstrap"]["dcs"]
        if dcs.get("synchronous_mode") is not True:
            fail(f"{name}: synchronous_mode must be true (RPO 0)")
        if dcs.get("maximum_lag_on_failover", 1) != 0:
            fail(f"{name}: maximum_lag_on_failover must be 0")
        ttl, loop, retry = dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]
        if ttl < 20 or loop + 2 * retry > ttl:
            fail(f"{name}: ttl {ttl} must be >= 20 and >= loop_wait + 2 * retry_timeout")
        pg = dcs["postgresql"]
        if pg.get("use_pg_rewind") is not True:
            fail(f"{name}: use_pg_rewind must be true (a failed primary rejoins)")
        checksums = "data-checksums" in d["bootstrap"].get("initdb", [])
        if not checksums and pg.get("parameters", {}).get("wal_log_hints") != "on":
            fail(f"{name}: pg_rewind needs data checksums or wal_log_hints")
        if not any(r.split()[:2] == ["host", "replication"] for r in d["postgresql"]["pg_hba"]):
            fail(f"{name}: pg_hba lets no standby replicate")
        auth = d["postgresql"]["authentication"]
        for role in ("superuser", "replication", "rewind"):
            if role not in auth:
                fail(f"{name}: no {role} credentials")


def check_cloudnative_pg():
    f = DEPLOY / "k8s" / "cloudnative-pg" / "cluster.yaml"
    d = yaml.safe_load(f.read_text())
    if d.get("apiVersion") != "postgresql.cnpg.io/v1" or d.get("kind") != "Cluster":
        fail(f"{f.name}: not a CloudNativePG Cluster")
        return
    spec = d["spec"]
    if spec.get("instances", 0) < 3:
        fail(f"{f.name}: fewer than three instances")
    sync = spec.get("postgresql", {}).get("synchronous", {})
    if sync.get("number", 0) < 1 or sync.get("method") not in ("any", "first"):
        fail(f"{f.name}: no synchronous standby")
    if spec.get("bootstrap", {}).get("initdb", {}).get("database") != "stratum":
        fail(f"{f.name}: does not create the stratum database")
    if spec.get("affinity", {}).get("podAntiAffinityType") != "required":
        fail(f"{f.name}: instances may share a node")
    if not spec.get("storage", {}).get("size"):
        fail(f"{f.name}: no storage size")


check_k8s()
check_patroni()
check_cloudnative_pg()
check_compose()
check_dockerfile()
if failures:
    print("deploy check failed:\n- " + "\n- ".join(failures))
    sys.exit(1)
print("deploy check: manifests parse, validate, and point at real routes, ports and secrets")
