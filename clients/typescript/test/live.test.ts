// The client against a live `stratum serve` (`make test-clients` starts one and sets
// STRATUM_URL and STRATUM_ADMIN_KEY).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import http from "node:http";
import net from "node:net";
import { test } from "node:test";

import { ConnectionError, PreconditionFailedError, Stratum, StratumError, Webhook, unwrap } from "../src/index.js";

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run \`make test-clients\``);
  return v;
}

const client = () => new Stratum({ baseUrl: env("STRATUM_URL"), apiKey: env("STRATUM_ADMIN_KEY") });
const unique = (prefix: string) => `${prefix}_${randomUUID().replaceAll("-", "").slice(0, 16)}`;

async function tenant(s: Stratum, slug: string, parent?: string) {
  return s.createTenant({ name: slug, slug, parent_id: parent });
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

interface Received {
  headers: Record<string, string>;
  body: string;
}

/** A webhook receiver on loopback that answers 200 and hands each request over. */
async function receiver(): Promise<{ url: string; next: () => Promise<Received>; close: () => void }> {
  const queue: Received[] = [];
  const waiters: ((r: Received) => void)[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      res.writeHead(200, { connection: "close" }).end();
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) headers[k] = String(v);
      const got = { headers, body: Buffer.concat(chunks).toString("utf8") };
      const w = waiters.shift();
      if (w) w(got);
      else queue.push(got);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    next: () => {
      const got = queue.shift();
      if (got) return Promise.resolve(got);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no delivery within a minute")), 60_000);
        waiters.push((r) => {
          clearTimeout(timer);
          resolve(r);
        });
      });
    },
    close: () => server.close(),
  };
}

/**
 * A loopback proxy to the server that lets the server answer the first `resets` connections
 * and then resets them instead of passing the answer on. `count()` is the number of
 * connections reset after the server had answered.
 */
async function resettingProxy(resets: number): Promise<{ base: string; count: () => number; close: () => void }> {
  const upstream = new URL(env("STRATUM_URL"));
  let accepted = 0;
  let done = 0;
  const server = net.createServer((conn) => {
    accepted += 1;
    const reset = accepted <= resets;
    const up = net.connect(Number(upstream.port), upstream.hostname);
    conn.on("error", () => up.destroy());
    up.on("error", () => conn.destroy());
    conn.pipe(up);
    if (reset) {
      up.once("data", () => {
        conn.resetAndDestroy();
        up.destroy();
        done += 1;
      });
    } else {
      up.pipe(conn);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return { base: `http://127.0.0.1:${port}`, count: () => done, close: () => server.close() };
}

/**
 * A loopback proxy to the server that answers the first requests itself with the statuses of
 * `answers` (429 with `Retry-After: 1`, others without) and forwards the rest. `keys` are the
 * `Idempotency-Key`s of the requests it answered.
 */
async function throttlingProxy(answers: number[]): Promise<{ base: string; keys: (string | undefined)[]; close: () => void }> {
  const upstream = new URL(env("STRATUM_URL"));
  const keys: (string | undefined)[] = [];
  let seen = 0;
  const proxy = http.createServer((req, res) => {
    const status = answers[seen++];
    if (status === undefined) {
      const up = http.request(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      req.pipe(up);
      return;
    }
    req.resume();
    req.on("end", () => {
      keys.push(req.headers["idempotency-key"] as string | undefined);
      const headers: Record<string, string> = { "content-type": "application/json", connection: "close" };
      if (status === 429) headers["retry-after"] = "1";
      res.writeHead(status, headers).end(JSON.stringify({ error: { code: "RATE_LIMITED", message: "slow down" } }));
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const { port } = proxy.address() as net.AddressInfo;
  return { base: `http://127.0.0.1:${port}`, keys, close: () => proxy.close() };
}

test("a tenant tree, a webhook, and a verified delivery", async () => {
  const s = client();
  const root = await tenant(s, unique("ts_root"));
  const child = await tenant(s, unique("ts_child"), root.id);
  const grand = await tenant(s, unique("ts_grand"), child.id);
  assert.equal(grand.depth, 2);
  assert.equal(grand.parent_id, child.id);

  const rx = await receiver();
  try {
    const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const hook = await s.createWebhook({ url: rx.url, events: ["tenant.created"], tenant_id: root.id, secret });
    assert.equal(hook.secret ?? null, null, "a secret the caller chose is not echoed");

    const leaf = await tenant(s, unique("ts_leaf"), grand.id);
    const got = await rx.next();
    new Webhook(secret).verify(got.body, got.headers); // throws when it does not verify
    assert.throws(() => new Webhook("whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGwh").verify(got.body, got.headers));
    const event = JSON.parse(got.body);
    assert.equal(event.event, "tenant.created");
    assert.equal(event.data.id, leaf.id);

    const deliveries = await collect(s.deliveries(hook.id, { pageSize: 1 }));
    assert.equal(deliveries.length, 1);
    assert.equal(got.headers["webhook-id"], deliveries[0]!.id);

    const ours = new Set([root.id, child.id, grand.id, leaf.id]);
    const seen = (await collect(s.tenants({ pageSize: 2 }))).filter((t) => ours.has(t.id)).map((t) => t.id);
    assert.deepEqual(seen.sort(), [...ours].sort());
  } finally {
    rx.close();
  }
});

test("pages through 250 audit entries, each once", async () => {
  const s = client();
  const t = await tenant(s, unique("ts_audit"));
  for (let i = 0; i < 250; i++) {
    await s.putConfig(t.id, `key_${String(i).padStart(3, "0")}`, { value: i });
  }
  const entries = await collect(s.auditLogs({ tenant_id: t.id, action: "config.updated", pageSize: 100 }));
  assert.equal(entries.length, 250);
  assert.equal(new Set(entries.map((e) => e.id)).size, 250, "no entry twice");
  assert.equal(new Set(entries.map((e) => e.resource_id)).size, 250, "every key once");
});

test("a conditional update loses the race", async () => {
  const s = client();
  const t = await tenant(s, unique("ts_race"));
  const { etag } = await s.getTenant(t.id);
  assert.ok(etag, "GET returns an ETag");
  const won = await s.updateTenant(t.id, { name: "first" }, { ifMatch: etag });
  assert.equal(won.tenant.name, "first");
  assert.notEqual(won.etag, etag);
  await assert.rejects(s.updateTenant(t.id, { name: "second" }, { ifMatch: etag }), (e: unknown) => {
    assert.ok(e instanceof PreconditionFailedError);
    assert.equal(e.status, 412);
    assert.equal(e.code, "PRECONDITION_FAILED");
    assert.ok(e.requestId);
    return true;
  });
  assert.equal((await s.getTenant(t.id)).tenant.name, "first", "the loser changed nothing");
});

test("errors are typed", async () => {
  const s = client();
  await assert.rejects(s.getTenant(randomUUID()), (e: unknown) => {
    assert.ok(e instanceof StratumError && !(e instanceof PreconditionFailedError));
    assert.equal(e.status, 404);
    assert.equal(e.code, "TENANT_NOT_FOUND");
    assert.ok(e.message.length > 0);
    assert.ok(e.requestId);
    return true;
  });
  const slug = unique("ts_dup");
  await tenant(s, slug);
  await assert.rejects(tenant(s, slug), (e: unknown) => {
    assert.ok(e instanceof StratumError);
    assert.equal(e.status, 409);
    assert.equal(e.code, "CONFLICT");
    return true;
  });
  await assert.rejects(s.createTenant({ name: "x", slug: "Not A Slug" }), (e: unknown) => {
    assert.ok(e instanceof StratumError);
    assert.equal(e.code, "VALIDATION_ERROR");
    assert.ok(e.details.length > 0 && e.details.some((d) => d.field === "slug"));
    return true;
  });
});

test("a POST retried through connection resets creates once", async () => {
  const proxy = await resettingProxy(2);
  try {
    const viaProxy = new Stratum({
      baseUrl: proxy.base,
      apiKey: env("STRATUM_ADMIN_KEY"),
      retry: { maxRetries: 4, baseDelayMs: 50, maxDelayMs: 2000 },
    });
    const slug = unique("ts_retry");
    const created = await tenant(viaProxy, slug);
    // Precondition: the server answered twice and the client saw two broken connections.
    assert.equal(proxy.count(), 2);

    const s = client();
    const creations = (await collect(s.auditLogs({ action: "tenant.created", pageSize: 100 }))).filter(
      (e) => e.resource_id === created.id,
    );
    assert.equal(creations.length, 1, "created exactly once");
    const sameSlug = (await collect(s.tenants({ pageSize: 100 }))).filter((t) => t.slug === slug);
    assert.deepEqual(
      sameSlug.map((t) => t.id),
      [created.id],
    );
  } finally {
    proxy.close();
  }

  // Without retries, the same fault is an error: the test can fail.
  const once = await resettingProxy(1);
  try {
    const noRetry = new Stratum({ baseUrl: once.base, apiKey: env("STRATUM_ADMIN_KEY"), retry: { maxRetries: 0 } });
    await assert.rejects(tenant(noRetry, unique("ts_noretry")), ConnectionError);
  } finally {
    once.close();
  }
});

test("a POST answered 429 then 503 is retried with one Idempotency-Key", async () => {
  const proxy = await throttlingProxy([429, 503]);
  try {
    const viaProxy = new Stratum({
      baseUrl: proxy.base,
      apiKey: env("STRATUM_ADMIN_KEY"),
      retry: { maxRetries: 4, baseDelayMs: 50, maxDelayMs: 2000 },
    });
    const slug = unique("ts_throttled");
    const created = await tenant(viaProxy, slug);
    assert.equal(proxy.keys.length, 2, "both refusals were seen");
    assert.ok(proxy.keys[0], "the POST carries an Idempotency-Key");
    assert.equal(proxy.keys[0], proxy.keys[1], "one key for every attempt of the call");
    assert.equal((await client().getTenant(created.id)).tenant.slug, slug);
  } finally {
    proxy.close();
  }
});

test("a POST that refuses a key is not repeated after a reset", async () => {
  const s = client();
  const root = await tenant(s, unique("ts_unsafe"));
  const proxy = await resettingProxy(1);
  try {
    const viaProxy = new Stratum({ baseUrl: proxy.base, apiKey: env("STRATUM_ADMIN_KEY") });
    // Without a secret the server generates one and refuses an Idempotency-Key: a repeat
    // could create a second webhook, so the client must not repeat it.
    await assert.rejects(
      viaProxy.createWebhook({ url: "http://127.0.0.1:9/hook", events: ["tenant.updated"], tenant_id: root.id }),
      ConnectionError,
    );
    assert.equal(proxy.count(), 1, "the server answered once");
  } finally {
    proxy.close();
  }
  const hooks = unwrap(await s.raw.GET("/api/v1/webhooks", { params: { query: { tenant_id: root.id } } }));
  assert.equal(hooks.length, 1, "created once, not repeated");
});
