"""The client against a live `stratum serve` (`make test-clients` starts one and sets
STRATUM_URL and STRATUM_ADMIN_KEY)."""

from __future__ import annotations

import http.server
import json
import os
import queue
import select
import socket
import struct
import threading
import uuid
from urllib.parse import urlparse

import httpx
import pytest

from stratum_client import (
    check,
    ConnectionError,
    PreconditionFailedError,
    RetryPolicy,
    Stratum,
    StratumError,
    Webhook,
    WebhookVerificationError,
)
from stratum_client._generated.api.webhooks import list_webhooks


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run `make test-clients`")
    return value


@pytest.fixture
def s():
    with Stratum(env("STRATUM_URL"), env("STRATUM_ADMIN_KEY")) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def receiver():
    """A webhook receiver on loopback that answers 200 and queues each request."""
    got: queue.Queue = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server hook
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.send_header("connection", "close")
            self.end_headers()
            got.put(({k.lower(): v for k, v in self.headers.items()}, body))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


class ResettingProxy:
    """A loopback proxy to the server that lets the server answer the first `resets`
    connections and then resets them instead of passing the answer on. `done` counts the
    connections reset after the server had answered."""

    def __init__(self, resets: int) -> None:
        up = urlparse(env("STRATUM_URL"))
        self.upstream = (up.hostname, up.port)
        self.resets = resets
        self.accepted = 0
        self.done = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            reset = self.accepted <= self.resets
            threading.Thread(target=self._serve, args=(conn, reset), daemon=True).start()

    def _serve(self, conn: socket.socket, reset: bool) -> None:
        server = socket.create_connection(self.upstream)
        # One thread per connection, so that the reset below is not held up by a recv()
        # another thread has pending on the same socket.
        with conn, server:
            while True:
                ready, _, _ = select.select([conn, server], [], [], 30)
                if not ready:
                    return
                if server in ready:
                    data = server.recv(65536)
                    if not data:
                        return
                    if reset:
                        # The server has answered; the client gets a reset instead.
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.done += 1
                        return
                    conn.sendall(data)
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        return
                    server.sendall(data)

    def close(self) -> None:
        self.sock.close()


class ThrottlingProxy:
    """A loopback proxy to the server that answers the first requests itself with the
    statuses of `answers` (429 with `Retry-After: 1`, others without) and forwards the rest
    (each on a connection of its own). `keys` are the `Idempotency-Key`s of the requests it
    answered."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = list(answers)
        self.keys: list[str | None] = []
        up = urlparse(env("STRATUM_URL"))
        upstream = f"{up.scheme}://{up.netloc}"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - the http.server hook
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if proxy.answers:
                    status = proxy.answers.pop(0)
                    proxy.keys.append(self.headers.get("idempotency-key"))
                    payload = json.dumps({"error": {"code": "RATE_LIMITED", "message": "slow down"}}).encode()
                    self.send_response(status)
                    if status == 429:
                        self.send_header("retry-after", "1")
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    answer = httpx.post(upstream + self.path, content=body, headers=headers)
                    status, payload = answer.status_code, answer.content
                    self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_tenant_tree_webhook_and_a_verified_delivery(s, receiver):
    url, got = receiver
    root = s.create_tenant(unique("py_root"), unique("py_root"))
    child = s.create_tenant("child", unique("py_child"), parent_id=root.id)
    grand = s.create_tenant("grandchild", unique("py_grand"), parent_id=child.id)
    assert grand.depth == 2
    assert grand.parent_id == child.id

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    hook = s.create_webhook(url, ["tenant.created"], tenant_id=root.id, secret=secret)
    assert not hook.secret, "a secret the caller chose is not echoed"

    leaf = s.create_tenant("leaf", unique("py_leaf"), parent_id=grand.id)
    headers, body = got.get(timeout=60)
    Webhook(secret).verify(body, headers)  # raises when it does not verify
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGwh").verify(body, headers)
    event = json.loads(body)
    assert event["event"] == "tenant.created"
    assert event["data"]["id"] == str(leaf.id)

    deliveries = list(s.deliveries(hook.id, page_size=1))
    assert len(deliveries) == 1
    assert headers["webhook-id"] == str(deliveries[0].id)

    ours = {root.id, child.id, grand.id, leaf.id}
    seen = [t.id for t in s.tenants(page_size=2) if t.id in ours]
    assert sorted(seen) == sorted(ours)


def test_pages_through_250_audit_entries_once_each(s):
    t = s.create_tenant("audit", unique("py_audit"))
    for i in range(250):
        s.put_config(t.id, f"key_{i:03}", i)
    entries = list(s.audit_logs(tenant_id=t.id, action="config.updated", page_size=100))
    assert len(entries) == 250
    assert len({e.id for e in entries}) == 250, "no entry twice"
    assert len({e.resource_id for e in entries}) == 250, "every key once"


def test_a_conditional_update_loses_the_race(s):
    t = s.create_tenant("race", unique("py_race"))
    _, version = s.get_tenant(t.id)
    assert version, "GET returns an ETag"
    won, new_version = s.update_tenant(t.id, name="first", if_match=version)
    assert won.name == "first"
    assert new_version != version
    with pytest.raises(PreconditionFailedError) as lost:
        s.update_tenant(t.id, name="second", if_match=version)
    assert lost.value.status == 412
    assert lost.value.code == "PRECONDITION_FAILED"
    assert lost.value.request_id
    assert s.get_tenant(t.id)[0].name == "first", "the loser changed nothing"


def test_errors_are_typed(s):
    with pytest.raises(StratumError) as missing:
        s.get_tenant(uuid.uuid4())
    assert not isinstance(missing.value, PreconditionFailedError)
    assert (missing.value.status, missing.value.code) == (404, "TENANT_NOT_FOUND")
    assert missing.value.message
    assert missing.value.request_id
    slug = unique("py_dup")
    s.create_tenant("dup", slug)
    with pytest.raises(StratumError) as dup:
        s.create_tenant("dup", slug)
    assert (dup.value.status, dup.value.code) == (409, "CONFLICT")
    with pytest.raises(StratumError) as bad:
        s.create_tenant("x", "Not A Slug")
    assert bad.value.code == "VALIDATION_ERROR"
    assert any(d["field"] == "slug" for d in bad.value.details)


def test_a_post_retried_through_connection_resets_creates_once(s):
    proxy = ResettingProxy(2)
    try:
        with Stratum(proxy.base, env("STRATUM_ADMIN_KEY"), retry=RetryPolicy(base_delay=0.05, max_delay=2)) as via:
            slug = unique("py_retry")
            created = via.create_tenant("retry", slug)
        # Precondition: the server answered twice and the client saw two broken connections.
        assert proxy.done == 2
    finally:
        proxy.close()

    creations = [e for e in s.audit_logs(action="tenant.created", page_size=100) if e.resource_id == str(created.id)]
    assert len(creations) == 1, "created exactly once"
    assert [t.id for t in s.tenants(page_size=100) if t.slug == slug] == [created.id]

    # Without retries, the same fault is an error: the test can fail.
    once = ResettingProxy(1)
    try:
        with Stratum(once.base, env("STRATUM_ADMIN_KEY"), retry=RetryPolicy(max_retries=0)) as no_retry:
            with pytest.raises(ConnectionError):
                no_retry.create_tenant("x", unique("py_noretry"))
    finally:
        once.close()


def test_a_post_answered_429_then_503_is_retried_with_one_idempotency_key(s):
    proxy = ThrottlingProxy([429, 503])
    try:
        with Stratum(proxy.base, env("STRATUM_ADMIN_KEY"), retry=RetryPolicy(base_delay=0.05, max_delay=2)) as via:
            slug = unique("py_throttled")
            created = via.create_tenant("throttled", slug)
    finally:
        proxy.close()
    assert len(proxy.keys) == 2, "both refusals were seen"
    assert proxy.keys[0], "the POST carries an Idempotency-Key"
    assert proxy.keys[0] == proxy.keys[1], "one key for every attempt of the call"
    assert s.get_tenant(created.id)[0].slug == slug


def test_a_post_that_refuses_a_key_is_not_repeated_after_a_reset(s):
    root = s.create_tenant("unsafe", unique("py_unsafe"))
    proxy = ResettingProxy(1)
    try:
        with Stratum(proxy.base, env("STRATUM_ADMIN_KEY")) as via:
            # Without a secret the server generates one and refuses an Idempotency-Key: a
            # repeat could create a second webhook, so the client must not repeat it.
            with pytest.raises(ConnectionError):
                via.create_webhook("http://127.0.0.1:9/hook", ["tenant.updated"], tenant_id=root.id)
        assert proxy.done == 1, "the server answered once"
    finally:
        proxy.close()
    hooks = check(list_webhooks.sync_detailed(client=s.raw, tenant_id=root.id))
    assert len(hooks) == 1, "created once, not repeated"
