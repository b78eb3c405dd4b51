/**
 * Client for the Stratum API.
 *
 * `Stratum.raw` is an openapi-fetch client typed by the schema that openapi-typescript
 * generates from the OpenAPI document the server serves. Every request it sends, and every
 * helper of `Stratum`, goes through a fetch layer that retries connection errors, 429
 * (honouring `Retry-After`) and 503 with exponential backoff, giving each POST one
 * `Idempotency-Key` for the whole call so a retried POST creates at most once.
 */
import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./generated/schema.js";

export type { components, paths } from "./generated/schema.js";
/** Webhook verification for receivers: the Standard Webhooks library. */
export { Webhook, WebhookVerificationError } from "standardwebhooks";

type Schemas = components["schemas"];
export type Tenant = Schemas["Tenant"];
export type CreateTenant = Schemas["CreateTenant"];
export type PatchTenant = Schemas["PatchTenant"];
export type CreateWebhook = Schemas["CreateWebhook"];
export type CreatedWebhook = Schemas["CreatedWebhook"];
export type PutConfig = Schemas["PutConfig"];
export type ConfigEntry = Schemas["ConfigEntry"];
export type AuditEntry = Schemas["AuditEntry"];
export type Delivery = Schemas["Delivery"];
export type DeliveryStatus = Schemas["DeliveryStatus"];
export type FieldError = Schemas["FieldError"];

/** An error answer of the API: `{"error": {code, message, details}}` and the request id. */
export class StratumError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: FieldError[];
  readonly requestId: string | undefined;
  /** `Retry-After` of a 429 or 503, in seconds, when given. */
  readonly retryAfter: number | undefined;

  constructor(status: number, body: unknown, headers: Headers) {
    const err = (body as { error?: Schemas["ErrorObject"] } | undefined)?.error;
    const code = err?.code ?? "UNEXPECTED_RESPONSE";
    super(`${status} ${code}: ${err?.message ?? "unexpected answer"}`);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.details = err?.details ?? [];
    this.requestId = headers.get("x-request-id") ?? err?.request_id ?? undefined;
    const after = Number.parseInt(headers.get("retry-after") ?? "", 10);
    this.retryAfter = Number.isFinite(after) ? after : undefined;
  }

  /** The typed error for an answer: `PreconditionFailedError` for 412. */
  static from(status: number, body: unknown, headers: Headers): StratumError {
    return status === 412
      ? new PreconditionFailedError(status, body, headers)
      : new StratumError(status, body, headers);
  }
}

/** `412 PRECONDITION_FAILED`: the `If-Match` version is no longer current; nothing changed. */
export class PreconditionFailedError extends StratumError {}

/** The server could not be reached, or the connection broke (after the retries). */
export class ConnectionError extends Error {
  constructor(cause: unknown) {
    super(`connection error: ${String((cause as Error)?.cause ?? cause)}`, { cause });
    this.name = "ConnectionError";
  }
}

export interface RetryPolicy {
  /** Retries after the first attempt (0 = never retry). Default 4. */
  maxRetries: number;
  /** First backoff in ms; doubles with each retry (±20 % jitter). Default 200. */
  baseDelayMs: number;
  /** Cap on one backoff and on a server's `Retry-After`, in ms. Default 30 000. */
  maxDelayMs: number;
}

export interface StratumOptions {
  /** Server base URL, e.g. `http://127.0.0.1:3001`. */
  baseUrl: string;
  apiKey: string;
  retry?: Partial<RetryPolicy>;
  /** The fetch to send with (default: the global one). */
  fetch?: typeof fetch;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * POSTs that refuse an `Idempotency-Key` (their answer carries a secret, or they cannot wait
 * for a request-wide commit): retried only on 429 and 503, which changed nothing.
 */
function refusesKey(path: string, body: string): boolean {
  if (path.endsWith("/api/v1/api-keys") || path.endsWith("/maintenance/rotate-encryption-key")) {
    return true;
  }
  if (path.endsWith("/api/v1/webhooks")) {
    try {
      return (JSON.parse(body) as { secret?: unknown }).secret == null;
    } catch {
      return true;
    }
  }
  return false;
}

/** A fetch that retries, with one `Idempotency-Key` per POST call. */
function retryingFetch(policy: RetryPolicy, inner: typeof fetch): (req: Request) => Promise<Response> {
  return async (request: Request) => {
    const body = request.body === null ? undefined : await request.arrayBuffer();
    const headers = new Headers(request.headers);
    const url = new URL(request.url);
    let replaySafe = true;
    if (request.method === "POST") {
      if (refusesKey(url.pathname, body ? new TextDecoder().decode(body) : "")) {
        replaySafe = false;
      } else if (!headers.has("idempotency-key")) {
        headers.set("idempotency-key", crypto.randomUUID());
      }
    }
    for (let retry = 0; ; retry++) {
      let wait: number;
      try {
        const response = await inner(
          new Request(request.url, { method: request.method, headers, body, signal: request.signal }),
        );
        if ((response.status !== 429 && response.status !== 503) || retry >= policy.maxRetries) {
          return response;
        }
        const after = Number.parseInt(response.headers.get("retry-after") ?? "", 10);
        wait = Number.isFinite(after) ? after * 1000 : backoff(policy, retry);
        await response.body?.cancel();
      } catch (e) {
        const aborted = (e as Error)?.name === "AbortError";
        if (aborted || !replaySafe || retry >= policy.maxRetries) {
          throw aborted ? e : new ConnectionError(e);
        }
        wait = backoff(policy, retry);
      }
      await sleep(Math.min(wait, policy.maxDelayMs));
    }
  };
}

function backoff(policy: RetryPolicy, retry: number): number {
  const exp = Math.min(policy.baseDelayMs * 2 ** retry, policy.maxDelayMs);
  return exp * (0.8 + Math.random() * 0.4);
}

/** The answer of an openapi-fetch call, checked: its data, or a thrown `StratumError`. */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.response.ok) {
    return result.data as T;
  }
  throw StratumError.from(result.response.status, result.error, result.response.headers);
}

export interface AuditLogQuery {
  tenant_id?: string;
  action?: string;
  resource_type?: string;
  actor_id?: string;
  from?: string;
  to?: string;
  /** Entries per request (1–100). */
  pageSize?: number;
}

export class Stratum {
  /** The generated client (requests still go through the retrying fetch). */
  readonly raw: Client<paths>;

  constructor(options: StratumOptions) {
    const policy: RetryPolicy = { maxRetries: 4, baseDelayMs: 200, maxDelayMs: 30_000, ...options.retry };
    this.raw = createClient<paths>({
      baseUrl: options.baseUrl.replace(/\/+$/, ""),
      headers: { "X-API-Key": options.apiKey },
      fetch: retryingFetch(policy, options.fetch ?? globalThis.fetch),
    });
  }

  async createTenant(body: CreateTenant): Promise<Tenant> {
    return unwrap(await this.raw.POST("/api/v1/tenants", { body }));
  }

  /** The tenant and its version (the `ETag` to pass as `ifMatch`). */
  async getTenant(id: string): Promise<{ tenant: Tenant; etag: string | undefined }> {
    const r = await this.raw.GET("/api/v1/tenants/{id}", { params: { path: { id } } });
    return { tenant: unwrap(r), etag: r.response.headers.get("etag") ?? undefined };
  }

  /**
   * Updates a tenant; with `ifMatch`, only while it is at that version (else
   * `PreconditionFailedError`). Returns the tenant and its new version.
   */
  async updateTenant(
    id: string,
    patch: PatchTenant,
    options: { ifMatch?: string } = {},
  ): Promise<{ tenant: Tenant; etag: string | undefined }> {
    const r = await this.raw.PATCH("/api/v1/tenants/{id}", {
      params: { path: { id }, header: options.ifMatch ? { "If-Match": options.ifMatch } : {} },
      body: patch,
    });
    return { tenant: unwrap(r), etag: r.response.headers.get("etag") ?? undefined };
  }

  async createWebhook(body: CreateWebhook): Promise<CreatedWebhook> {
    return unwrap(await this.raw.POST("/api/v1/webhooks", { body }));
  }

  async putConfig(tenantId: string, key: string, body: PutConfig): Promise<ConfigEntry> {
    return unwrap(
      await this.raw.PUT("/api/v1/tenants/{id}/config/{key}", { params: { path: { id: tenantId, key } }, body }),
    );
  }

  /** Every audit entry matching `query`, newest first, each exactly once. */
  async *auditLogs(query: AuditLogQuery = {}): AsyncGenerator<AuditEntry> {
    const { pageSize, ...filters } = query;
    let cursor: string | undefined;
    do {
      const r = await this.raw.GET("/api/v1/audit-logs", {
        params: { query: { ...filters, limit: pageSize, cursor } },
      });
      const page = unwrap(r);
      yield* page;
      cursor = page.length > 0 ? (r.response.headers.get("x-next-cursor") ?? undefined) : undefined;
    } while (cursor);
  }

  /** Every delivery of a webhook (optionally of one status), newest first, each exactly once. */
  async *deliveries(
    webhookId: string,
    options: { status?: DeliveryStatus; pageSize?: number } = {},
  ): AsyncGenerator<Delivery> {
    let cursor: string | undefined;
    do {
      const r = await this.raw.GET("/api/v1/webhooks/{id}/deliveries", {
        params: { path: { id: webhookId }, query: { status: options.status, limit: options.pageSize, cursor } },
      });
      const page = unwrap(r);
      yield* page;
      cursor = page.length > 0 ? (r.response.headers.get("x-next-cursor") ?? undefined) : undefined;
    } while (cursor);
  }

  /** Every tenant the key can see, each exactly once. */
  async *tenants(options: { pageSize?: number } = {}): AsyncGenerator<Tenant> {
    let cursor: string | undefined;
    do {
      const page = unwrap(
        await this.raw.GET("/api/v1/tenants", { params: { query: { limit: options.pageSize, cursor } } }),
      );
      yield* page.data;
      cursor = page.has_more ? (page.next_cursor ?? undefined) : undefined;
    } while (cursor);
  }
}
