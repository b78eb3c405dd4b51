"""Client for the Stratum API.

``stratum_client._generated`` is generated at build time by openapi-python-client from the
OpenAPI document the server serves (one module per operation, e.g.
``stratum_client.create_tenant.sync_detailed(client=s.raw, body=...)``).
:class:`Stratum` adds on top of it:

- typed errors (:class:`StratumError`, :class:`PreconditionFailedError`) with the server's
  ``code``, ``message``, ``details`` and the request id;
- retries of connection errors, 429 (honouring ``Retry-After``) and 503 with exponential
  backoff, in the HTTP transport, so they apply to every call, generated ones included; each
  ``POST`` carries one ``Idempotency-Key`` for the whole call, so a retried POST creates at
  most once;
- iterators over the cursor-paged lists (:meth:`Stratum.audit_logs`,
  :meth:`Stratum.deliveries`, :meth:`Stratum.tenants`) that yield every entry exactly once;
- ``If-Match`` on conditional updates.

Receivers verify deliveries with the Standard Webhooks library, re-exported as
:class:`Webhook`: ``Webhook(secret).verify(body, headers)`` raises
:class:`WebhookVerificationError` when the signature does not hold.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ._generated import api, models
from ._generated.api.audit import list_audit_logs
from ._generated.api.config import put_config
from ._generated.api.tenants import create_tenant, get_tenant, list_tenants, update_tenant
from ._generated.api.deliveries import list_webhook_deliveries
from ._generated.api.webhooks import create_webhook
from ._generated.client import AuthenticatedClient
from ._generated.types import UNSET, Response

__all__ = [
    "ConnectionError",
    "PreconditionFailedError",
    "RetryPolicy",
    "Stratum",
    "StratumError",
    "Webhook",
    "WebhookVerificationError",
    "api",
    "models",
]

T = TypeVar("T")


class StratumError(Exception):
    """An error answer of the API: ``{"error": {code, message, details}}`` and the request id."""

    def __init__(self, status: int, body: bytes, headers: httpx.Headers | Any) -> None:
        try:
            err = json.loads(body or b"{}").get("error") or {}
        except (ValueError, AttributeError):
            err = {}
        self.status: int = status
        self.code: str = err.get("code", "UNEXPECTED_RESPONSE")
        self.message: str = err.get("message", f"unexpected {status} answer")
        self.details: list[dict[str, str]] = err.get("details", [])
        self.request_id: str | None = headers.get("x-request-id") or err.get("request_id")
        after = headers.get("retry-after")
        self.retry_after: int | None = int(after) if after and after.isdigit() else None
        super().__init__(f"{status} {self.code}: {self.message}")

    @staticmethod
    def of(status: int, body: bytes, headers: Any) -> StratumError:
        """The typed error for an answer: :class:`PreconditionFailedError` for 412."""
        cls = PreconditionFailedError if status == 412 else StratumError
        return cls(status, body, headers)


class PreconditionFailedError(StratumError):
    """412 ``PRECONDITION_FAILED``: the ``If-Match`` version is no longer current; nothing changed."""


class ConnectionError(Exception):  # noqa: A001 - the client's own, raised instead of httpx's
    """The server could not be reached, or the connection broke (after the retries)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How calls are retried."""

    max_retries: int = 4
    """Retries after the first attempt (0 = never retry)."""
    base_delay: float = 0.2
    """First backoff in seconds; doubles with each retry (±20 % jitter)."""
    max_delay: float = 30.0
    """Cap on one backoff and on a server's ``Retry-After``, in seconds."""

    def backoff(self, retry: int) -> float:
        return min(self.base_delay * 2**retry, self.max_delay) * random.uniform(0.8, 1.2)


def _refuses_key(request: httpx.Request) -> bool:
    """POSTs that refuse an ``Idempotency-Key`` (their answer carries a secret, or they cannot
    wait for a request-wide commit): retried only on 429 and 503, which changed nothing."""
    path = request.url.path
    if path.endswith("/api/v1/api-keys") or path.endswith("/maintenance/rotate-encryption-key"):
        return True
    if path.endswith("/api/v1/webhooks"):
        try:
            return json.loads(request.content or b"{}").get("secret") is None
        except ValueError:
            return True
    return False


class RetryTransport(httpx.BaseTransport):
    """An httpx transport that retries, with one ``Idempotency-Key`` per POST call."""

    def __init__(self, policy: RetryPolicy, inner: httpx.BaseTransport | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        replay_safe = True
        if request.method == "POST":
            if _refuses_key(request):
                replay_safe = False
            elif "idempotency-key" not in request.headers:
                request.headers["Idempotency-Key"] = str(uuid.uuid4())
        retry = 0
        while True:
            try:
                response = self.inner.handle_request(request)
            except httpx.TransportError as e:
                if not replay_safe or retry >= self.policy.max_retries:
                    raise ConnectionError(f"{type(e).__name__}: {e}") from e
                wait = self.policy.backoff(retry)
            else:
                if response.status_code not in (429, 503) or retry >= self.policy.max_retries:
                    return response
                after = response.headers.get("retry-after", "")
                wait = float(after) if after.isdigit() else self.policy.backoff(retry)
                response.close()
            time.sleep(min(wait, self.policy.max_delay))
            retry += 1

    def close(self) -> None:
        self.inner.close()


def check(response: Response[Any]) -> Any:
    """The parsed body of a generated call's answer, or the typed error it stands for."""
    if 200 <= response.status_code < 300:
        return response.parsed
    raise StratumError.of(int(response.status_code), response.content, response.headers)


class Stratum:
    """The Stratum client (synchronous)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.raw = AuthenticatedClient(
            base_url=base_url.rstrip("/"),
            token=api_key,
            prefix="",
            auth_header_name="X-API-Key",
            timeout=httpx.Timeout(timeout),
            httpx_args={"transport": RetryTransport(retry or RetryPolicy(), transport)},
        )

    def close(self) -> None:
        self.raw.get_httpx_client().close()

    def __enter__(self) -> Stratum:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- tenants ---------------------------------------------------------------------------

    def create_tenant(self, name: str, slug: str, parent_id: uuid.UUID | None = None) -> models.Tenant:
        body = models.CreateTenant(name=name, slug=slug, parent_id=parent_id if parent_id else UNSET)
        return check(create_tenant.sync_detailed(client=self.raw, body=body))

    def get_tenant(self, id: uuid.UUID) -> tuple[models.Tenant, str | None]:
        """The tenant and its version (the ``ETag`` to pass as ``if_match``)."""
        r = get_tenant.sync_detailed(id, client=self.raw)
        return check(r), r.headers.get("etag")

    def update_tenant(
        self,
        id: uuid.UUID,
        *,
        name: str | None = None,
        slug: str | None = None,
        if_match: str | None = None,
    ) -> tuple[models.Tenant, str | None]:
        """Updates a tenant; with ``if_match``, only while it is at that version (else
        :class:`PreconditionFailedError`). Returns the tenant and its new version."""
        body = models.PatchTenant(name=name if name is not None else UNSET, slug=slug if slug is not None else UNSET)
        r = update_tenant.sync_detailed(
            id, client=self.raw, body=body, if_match=if_match if if_match is not None else UNSET
        )
        return check(r), r.headers.get("etag")

    def tenants(self, page_size: int | None = None) -> Iterator[models.Tenant]:
        """Every tenant the key can see, each exactly once."""
        cursor: Any = UNSET
        while True:
            page = check(
                list_tenants.sync_detailed(client=self.raw, cursor=cursor, limit=page_size or UNSET)
            )
            yield from page.data
            if not page.has_more or not page.next_cursor:
                return
            cursor = page.next_cursor

    # --- webhooks, config --------------------------------------------------------------------

    def create_webhook(
        self,
        url: str,
        events: list[str],
        *,
        tenant_id: uuid.UUID | None = None,
        secret: str | None = None,
        description: str | None = None,
    ) -> models.CreatedWebhook:
        body = models.CreateWebhook(
            url=url,
            events=[models.SubscribableEvent(e) for e in events],
            tenant_id=tenant_id if tenant_id else UNSET,
            secret=secret if secret is not None else UNSET,
            description=description if description is not None else UNSET,
        )
        return check(create_webhook.sync_detailed(client=self.raw, body=body))

    def put_config(self, tenant_id: uuid.UUID, key: str, value: Any, *, sensitive: bool | None = None) -> Any:
        body = models.PutConfig(value=value, sensitive=sensitive if sensitive is not None else UNSET)
        return check(put_config.sync_detailed(tenant_id, key, client=self.raw, body=body))

    def deliveries(
        self, webhook_id: uuid.UUID, *, status: str | None = None, page_size: int | None = None
    ) -> Iterator[models.Delivery]:
        """Every delivery of a webhook (optionally of one status), newest first, each once."""
        return self._follow_header(
            lambda cursor: list_webhook_deliveries.sync_detailed(
                webhook_id,
                client=self.raw,
                status=models.DeliveryStatus(status) if status else UNSET,
                limit=page_size or UNSET,
                cursor=cursor,
            )
        )

    # --- audit -------------------------------------------------------------------------------

    def audit_logs(self, *, page_size: int | None = None, **filters: Any) -> Iterator[models.AuditEntry]:
        """Every audit entry matching ``filters`` (``tenant_id``, ``action``, ``resource_type``,
        ``actor_id``, ``from_``, ``to``), newest first, each exactly once."""
        return self._follow_header(
            lambda cursor: list_audit_logs.sync_detailed(
                client=self.raw, limit=page_size or UNSET, cursor=cursor, **filters
            )
        )

    @staticmethod
    def _follow_header(fetch: Callable[[Any], Response[Any]]) -> Iterator[Any]:
        cursor: Any = UNSET
        while True:
            r = fetch(cursor)
            page = check(r)
            yield from page
            nxt = r.headers.get("x-next-cursor")
            if not page or not nxt:
                return
            cursor = uuid.UUID(nxt)
