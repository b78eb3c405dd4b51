"""Real deliveries, checked with a library nobody here wrote.

A local receiver verifies every delivery with the official Standard Webhooks library
(`standardwebhooks.Webhook(secret).verify(body, headers)`) and checks
`X-Stratum-Signature` as API.md defines it. A driver makes all nine event types happen,
and calls `POST /webhooks/:id/test`, for two webhooks: one with a generated `whsec_`
secret and one with a plain secret. Exits non-zero on any failure.

Usage: webhooks.py <stratum base url> <admin key>
"""

import base64
import hashlib
import hmac
import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

EVENTS = [
    "tenant.created",
    "tenant.updated",
    "tenant.deleted",
    "tenant.moved",
    "config.updated",
    "config.deleted",
    "permission.created",
    "permission.updated",
    "permission.deleted",
]
PLAIN_SECRET = "a-plain-secret-of-some-length-0123"

secrets = {}  # receiver path -> the secret Stratum signs with
ROTATING = "/rotating"
OLD_SECRET = "the-secret-before-rotation-0123"
NEW_SECRET = "the-secret-after-rotation-45678"
GRACE_SECONDS = 5
rotated = []  # (tenant slug, verified with the old secret only, with the new secret only)
received = []  # (path, event type, payload)
failures = []
lock = threading.Lock()


def fail(msg):
    with lock:
        failures.append(msg)
    print("FAIL:", msg, file=sys.stderr)


def library_secret(secret):
    # The library takes `whsec_<base64>` or bare base64 of the key; API.md keys a plain
    # secret with its UTF-8 bytes, which is the library's bare form once encoded.
    if secret.startswith("whsec_"):
        return secret
    return base64.b64encode(secret.encode()).decode()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path = self.path
        self.send_response(200)
        self.end_headers()
        if path == ROTATING:
            self.rotating(body)
            return
        secret = secrets.get(path)
        if secret is None:
            fail(f"delivery to unknown path {path}")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = Webhook(library_secret(secret)).verify(body, headers)
        except Exception as e:  # noqa: BLE001 - any verification error is a failure
            fail(f"{path}: standardwebhooks verify failed: {e!r}")
            return
        ts = headers.get("x-stratum-timestamp", "")
        expected = "sha256=" + hmac.new(
            secret.encode(), ts.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, headers.get("x-stratum-signature", "")):
            fail(f"{path}: X-Stratum-Signature does not verify")
            return
        if headers.get("webhook-id") != headers.get("x-stratum-delivery"):
            fail(f"{path}: webhook-id differs from X-Stratum-Delivery")
        if headers.get("x-stratum-event") != payload.get("event"):
            fail(f"{path}: X-Stratum-Event differs from the body's event")
        for key in ("id", "event", "timestamp", "tenant_id", "data"):
            if key not in payload:
                fail(f"{path}: body lacks {key}: {payload}")
        with lock:
            received.append((path, payload.get("event"), payload))


    def rotating(self, body):
        # Two receivers in one: one holding only the old secret, one only the new.
        headers = {k.lower(): v for k, v in self.headers.items()}
        verdicts = []
        for secret in (OLD_SECRET, NEW_SECRET):
            try:
                payload = Webhook(library_secret(secret)).verify(body, headers)
                verdicts.append(True)
            except Exception:  # noqa: BLE001 - a refusal is the answer being checked
                verdicts.append(False)
        ts = headers.get("x-stratum-timestamp", "")
        current = "sha256=" + hmac.new(
            NEW_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(current, headers.get("x-stratum-signature", "")):
            fail(f"{ROTATING}: X-Stratum-Signature is not made with the current secret")
        payload = json.loads(body)
        with lock:
            rotated.append((payload["data"].get("slug"), verdicts[0], verdicts[1]))


def check_rotation(base, key, rx):
    """A secret rotated with a grace period: during it, a receiver holding either secret
    verifies with the library; after it, only the new one does."""
    hook = must(
        api(
            base,
            key,
            "POST",
            "/webhooks",
            {"url": rx + ROTATING, "events": ["tenant.created"], "secret": OLD_SECRET},
        ),
        201,
        "webhook to rotate",
    )
    body = must(
        api(
            base,
            key,
            "POST",
            f"/webhooks/{hook['id']}/rotate-secret",
            {"secret": NEW_SECRET, "grace_period_seconds": GRACE_SECONDS},
        ),
        200,
        "rotate-secret",
    )
    if "secret" in body or not body.get("previous_secret_expires_at"):
        fail(f"rotate-secret answered {body}")
    must(api(base, key, "POST", "/tenants", {"name": "R1", "slug": "rot_during"}), 201, "during")
    time.sleep(GRACE_SECONDS + 1)
    must(api(base, key, "POST", "/tenants", {"name": "R2", "slug": "rot_after"}), 201, "after")
    deadline = time.time() + 60
    while time.time() < deadline:
        with lock:
            if {slug for slug, _, _ in rotated} >= {"rot_during", "rot_after"}:
                break
        time.sleep(0.2)
    with lock:
        seen = {slug: (old, new) for slug, old, new in rotated}
    if seen.get("rot_during") != (True, True):
        fail(f"during the grace period both secrets must verify: {seen.get('rot_during')}")
    if seen.get("rot_after") != (False, True):
        fail(f"after the grace period only the new secret may verify: {seen.get('rot_after')}")
    return len(rotated)


def api(base, key, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + "/api/v1" + path, data=data, method=method)
    req.add_header("X-API-Key", key)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            raw = res.read()
            return res.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


def must(result, status, what):
    got, body = result
    if got != status:
        raise SystemExit(f"{what}: expected {status}, got {got}: {body}")
    return body


def main():
    base, key = sys.argv[1], sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rx = f"http://127.0.0.1:{server.server_address[1]}"

    generated = must(
        api(base, key, "POST", "/webhooks", {"url": rx + "/whsec", "events": EVENTS}),
        201,
        "webhook with a generated secret",
    )
    secrets["/whsec"] = generated["secret"]
    plain = must(
        api(
            base,
            key,
            "POST",
            "/webhooks",
            {"url": rx + "/plain", "events": EVENTS, "secret": PLAIN_SECRET},
        ),
        201,
        "webhook with a plain secret",
    )
    secrets["/plain"] = PLAIN_SECRET

    a = must(api(base, key, "POST", "/tenants", {"name": "A", "slug": "conf_a"}), 201, "tenant a")
    b = must(api(base, key, "POST", "/tenants", {"name": "B", "slug": "conf_b"}), 201, "tenant b")
    c = must(
        api(base, key, "POST", "/tenants", {"name": "C", "slug": "conf_c", "parent_id": a["id"]}),
        201,
        "tenant c",
    )
    must(api(base, key, "PATCH", f"/tenants/{c['id']}", {"name": "C2"}), 200, "tenant.updated")
    moved = must(
        api(base, key, "POST", f"/tenants/{c['id']}/move", {"new_parent_id": b["id"]}),
        200,
        "tenant.moved",
    )
    must(api(base, key, "PUT", f"/tenants/{c['id']}/config/k", {"value": 1}), 200, "config.updated")
    must(api(base, key, "DELETE", f"/tenants/{c['id']}/config/k"), 204, "config.deleted")
    p = must(
        api(
            base,
            key,
            "POST",
            f"/tenants/{c['id']}/permissions",
            {"key": "billing", "value": True, "mode": "INHERITED"},
        ),
        201,
        "permission.created",
    )
    must(
        api(base, key, "PATCH", f"/tenants/{c['id']}/permissions/{p['id']}", {"value": False}),
        200,
        "permission.updated",
    )
    must(
        api(base, key, "DELETE", f"/tenants/{c['id']}/permissions/{p['id']}"),
        204,
        "permission.deleted",
    )
    must(api(base, key, "DELETE", f"/tenants/{c['id']}"), 204, "tenant.deleted")
    for hook in (generated, plain):
        result = must(api(base, key, "POST", f"/webhooks/{hook['id']}/test"), 200, "test")
        if result.get("success") is not True:
            fail(f"test delivery to {hook['url']} failed: {result}")

    want = {(path, e) for path in secrets for e in EVENTS + ["webhook.test"]}
    deadline = time.time() + 120
    while time.time() < deadline:
        with lock:
            got = {(path, e) for path, e, _ in received}
        if want <= got:
            break
        time.sleep(0.2)
    with lock:
        got = {(path, e) for path, e, _ in received}
        moved_payloads = [p for _, e, p in received if e == "tenant.moved"]
    missing = sorted(want - got)
    if missing:
        fail(f"never received: {missing}")
    for payload in moved_payloads:
        data = payload["data"]
        if data.get("id") != moved["id"] or data.get("previous_parent_id") != a["id"] or "tenant" in data:
            fail(f"tenant.moved data is not the tenant after the move: {data}")
    n_rotated = check_rotation(base, key, rx)
    server.shutdown()
    print(
        f"rotation: {n_rotated} deliveries checked with the old-only and new-only secrets"
    )
    print(
        f"webhooks: {len(received)} deliveries verified with standardwebhooks and "
        f"X-Stratum-Signature ({len(want)} distinct (webhook, event) pairs), "
        f"{len(failures)} failures"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
