// Stratum console. Plain DOM, no framework, no build step. Every text that comes from the
// API is inserted with textContent (never as markup); the key lives in sessionStorage only.
"use strict";

(function () {
  const KEY = "stratum.apiKey";
  const $ = (id) => document.getElementById(id);
  const pages = ["webhooks", "deliveries", "delivery", "tree", "dlq", "replay", "audit", "consent"];
  /** The navigation item each page belongs to. */
  const NAV_OF = { deliveries: "webhooks", delivery: "webhooks" };
  const SVG = "http://www.w3.org/2000/svg";

  // ---- small helpers -------------------------------------------------------------------

  /** An element with attributes and children; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k === "onclick") e.addEventListener("click", v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  /** An SVG element with attributes and children. */
  function svgEl(tag, attrs, ...children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, String(v));
    }
    for (const c of children) if (c !== undefined && c !== null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  const td = (text, cls) => el("td", { class: cls }, text === null || text === undefined ? "—" : text);
  const when = (t) => (t ? new Date(t).toLocaleString() : "—");
  const pct = (x) => (x === null || x === undefined ? "—" : (x * 100).toFixed(1) + " %");
  const ms = (x) => (x === null || x === undefined ? "—" : Math.round(x) + " ms");
  /** A datetime-local value as RFC 3339 UTC, or undefined when empty. */
  const isoOf = (v) => (v ? new Date(v).toISOString() : undefined);

  function status(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", !!isError);
  }

  function key() { return sessionStorage.getItem(KEY); }

  class ApiError extends Error {
    constructor(httpStatus, body) {
      const err = (body && body.error) || {};
      super(err.message || "the server answered " + httpStatus);
      this.httpStatus = httpStatus;
      this.code = err.code || "";
    }
  }

  /** Calls the REST API with the key; resolves to {body, headers}, rejects with ApiError. */
  async function api(method, path, body) {
    const headers = { "X-API-Key": key() || "" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch("/api/v1" + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", credentials: "omit",
      });
    } catch (e) {
      throw new ApiError(0, { error: { message: "the server cannot be reached" } });
    }
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
    if (res.status === 401) {
      logout("The key was refused (401). Sign in again.");
      throw new ApiError(401, json);
    }
    if (!res.ok) throw new ApiError(res.status, json);
    return { body: json, headers: res.headers };
  }

  // Only the latest load of a list may render it: an older answer that arrives late is dropped.
  const latest = {};
  function ticket(name) {
    latest[name] = (latest[name] || 0) + 1;
    const mine = latest[name];
    return () => latest[name] === mine;
  }

  function fail(e) { status(e.message || String(e), true); }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? "?" + s : "";
  }

  // ---- sign in / out and routing ---------------------------------------------------------

  function showSignedIn(signedIn) {
    $("login").hidden = signedIn;
    $("nav").hidden = !signedIn;
    if (!signedIn) for (const p of pages) $("page-" + p).hidden = true;
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    showSignedIn(false);
    // Nothing the previous key could see stays on the page.
    for (const tbody of document.querySelectorAll("table tbody")) tbody.replaceChildren();
    for (const id of ["replay-status", "audit-before", "audit-after", "dlq-stats", "deliveries-webhook", "tenant-options", "replay-webhook",
      "webhook-summary", "webhook-chart", "webhook-marks", "delivery-id", "delivery-summary", "delivery-body", "delivery-attempts", "tree"]) $(id).replaceChildren();
    $("delivery-retry").hidden = true;
    names.tenants.clear();
    names.webhooks.clear();
    $("audit-detail").hidden = true;
    hideSecret();
    $("webhooks-empty").hidden = true;
    $("dlq-empty").hidden = true;
    clearTimeout(replayTimer);
    $("login-error").textContent = message || "";
    status("");
    $("api-key").value = "";
    $("api-key").focus();
  }

  async function login(ev) {
    ev.preventDefault();
    const k = $("api-key").value.trim();
    if (!k) return;
    sessionStorage.setItem(KEY, k);
    $("login-error").textContent = "";
    try {
      await api("GET", "/webhooks/deliveries/stats");
    } catch (e) {
      if (e.httpStatus !== 401) logout("Cannot sign in: " + e.message);
      return;
    }
    $("api-key").value = "";
    showSignedIn(true);
    loadTenantOptions();
    if (!location.hash || location.hash === "#") location.hash = "#webhooks";
    else route();
  }

  function route() {
    if (!key()) { showSignedIn(false); return; }
    showSignedIn(true);
    const [name, arg, arg2] = location.hash.replace(/^#/, "").split("/");
    const page = pages.includes(name) ? name : "webhooks";
    for (const p of pages) $("page-" + p).hidden = p !== page;
    // A generated secret is shown once: leaving the webhooks page drops it.
    if (page !== "webhooks") hideSecret();
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.page === (NAV_OF[page] || page)) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    status("");
    // One batched lookup of the names per page: every tenant and webhook the key can see.
    namesLoad = loadNames();
    const loaders = {
      webhooks: loadWebhooks, deliveries: () => loadWebhookPage(arg), delivery: () => loadDelivery(arg, arg2),
      tree: loadTree, dlq: loadDlq, replay: loadReplay, audit: () => loadAudit(null), consent: () => {},
    };
    Promise.resolve(loaders[page]()).catch(fail);
  }

  async function loadTenantOptions() {
    const list = $("tenant-options");
    list.replaceChildren();
    try {
      const { body } = await api("GET", "/tenants?limit=100");
      for (const t of (body && body.data) || []) list.append(el("option", { value: t.id }, t.name + " (" + t.slug + ")"));
    } catch (e) { /* optional: the lists still work with typed ids */ }
  }

  // ---- names for ids ---------------------------------------------------------------------

  // Every tenant and webhook the key can see, by id, fetched once per page shown.
  const names = { tenants: new Map(), webhooks: new Map() };
  let namesLoad = Promise.resolve();
  const MAX_TENANT_PAGES = 50;

  async function loadNames() {
    const tenants = new Map();
    let cursor = null;
    for (let i = 0; i < MAX_TENANT_PAGES; i++) {
      const { body } = await api("GET", "/tenants" + query({ limit: 100, cursor }));
      for (const t of (body && body.data) || []) tenants.set(t.id, t);
      if (!body || !body.has_more || !body.next_cursor) break;
      cursor = body.next_cursor;
    }
    const { body: hooks } = await api("GET", "/webhooks");
    names.tenants = tenants;
    names.webhooks = new Map((hooks || []).map((w) => [w.id, w]));
  }

  /** Waits for the page's names; a failed lookup leaves the ids showing. */
  async function namesReady() {
    try { await namesLoad; } catch (e) { /* ids are shown instead */ }
  }

  /** A tenant's name and slug, the id on hover; "global" for none; the bare id when unknown. */
  function tenantName(id) {
    if (!id) return el("span", { dataset: { test: "global" } }, "global");
    const t = names.tenants.get(id);
    if (!t) return el("span", { class: "mono", title: id }, id);
    return el("span", { class: "name", title: id, dataset: { test: "tenant-name", id } },
      t.name, " ", el("span", { class: "slug" }, t.slug));
  }

  /** A webhook's description (or URL), the id and URL on hover; the bare id when unknown. */
  function webhookName(id, fallback) {
    const w = names.webhooks.get(id) || fallback;
    if (!w) return el("span", { class: "mono", title: id }, id);
    return el("span", { class: "name", title: w.url + "\n" + id, dataset: { test: "webhook-name", id } }, w.description || w.url);
  }

  // ---- charts ----------------------------------------------------------------------------

  /** Times (ms since the epoch) of the breaker openings and disablings to mark on a chart. */
  function breakerMarks(health, disabled) {
    const marks = [];
    const b = health && health.breaker;
    if (b && b.state !== "closed" && b.opened_at) marks.push({ at: Date.parse(b.opened_at), label: "breaker opened (still " + b.state.replace("_", "-") + ")", kind: "breaker-opened" });
    for (const a of disabled || []) marks.push({ at: Date.parse(a.created_at), label: "webhook disabled" + (a.after_state && a.after_state.disabled_reason ? " (" + a.after_state.disabled_reason + ")" : ""), kind: "disabled" });
    return marks;
  }

  function bucketText(s, b) {
    const start = Date.parse(b.start);
    const end = new Date(start + s.bucket_seconds * 1000);
    return new Date(start).toLocaleString() + " – " + end.toLocaleTimeString() + ": " + b.attempts + " attempt" + (b.attempts === 1 ? "" : "s") +
      (b.attempts ? ", " + pct(b.success_rate) + " succeeded, p50 " + ms(b.p50_latency_ms) + ", p99 " + ms(b.p99_latency_ms) : "");
  }

  /** The series as an SVG chart: a bar per bucket (successes and failures stacked), for a
   *  large chart the p50 and p99 latency lines, and a dashed line per mark. */
  function chart(s, marks, large) {
    const n = s.buckets.length;
    const plotH = large ? 160 : 30;
    const top = large ? 16 : 2;
    const barW = large ? Math.max(4, Math.min(24, Math.floor(960 / n))) : Math.max(3, Math.floor(168 / n));
    const W = n * barW;
    const H = top + plotH + (large ? 20 : 2);
    const maxAttempts = Math.max(1, ...s.buckets.map((b) => b.attempts));
    const total = s.buckets.reduce((a, b) => a + b.attempts, 0);
    const ok = s.buckets.reduce((a, b) => a + b.successes, 0);
    const svg = svgEl("svg", {
      class: "chart", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": total + " attempts in " + n + " buckets, " + (total ? pct(ok / total) + " succeeded" : "none made"),
      dataset: { test: large ? "chart-large" : "chart-small", buckets: n },
    });
    const y = (v) => top + plotH - (v / maxAttempts) * plotH;
    if (large) {
      svg.append(svgEl("line", { class: "grid", x1: 0, x2: W, y1: top + plotH + 0.5, y2: top + plotH + 0.5 }),
        svgEl("text", { class: "axis", x: 2, y: 11 }, maxAttempts + " attempts"));
    }
    s.buckets.forEach((b, i) => {
      const x = i * barW;
      const g = svgEl("g", { dataset: { test: "bucket", start: b.start, attempts: b.attempts } }, svgEl("title", {}, bucketText(s, b)));
      const w = Math.max(1, barW - 1);
      if (b.attempts === 0) {
        g.append(svgEl("rect", { class: "none", x, y: top + plotH - 1, width: w, height: 1 }));
      } else {
        const failed = b.attempts - b.successes;
        g.append(svgEl("rect", { class: "ok", x, y: y(b.successes), width: w, height: top + plotH - y(b.successes) }));
        if (failed) g.append(svgEl("rect", { class: "bad", x, y: y(b.attempts), width: w, height: y(b.successes) - y(b.attempts) }));
      }
      // A transparent full-height target so the title shows anywhere over the bucket.
      g.append(svgEl("rect", { x, y: top, width: barW, height: plotH, fill: "transparent" }));
      svg.append(g);
    });
    if (large) {
      const maxMs = Math.max(1, ...s.buckets.map((b) => b.p99_latency_ms || 0));
      const ly = (v) => top + plotH - (v / maxMs) * plotH;
      for (const [key, cls] of [["p50_latency_ms", "p50"], ["p99_latency_ms", "p99"]]) {
        let pts = [];
        const flush = () => { if (pts.length) svg.append(svgEl("polyline", { class: cls, points: pts.join(" ") })); pts = []; };
        s.buckets.forEach((b, i) => {
          if (b[key] === null || b[key] === undefined) flush();
          else {
            const [px, py] = [i * barW + barW / 2, ly(b[key])];
            pts.push(px.toFixed(1) + "," + py.toFixed(1));
            svg.append(svgEl("circle", { class: cls + " dot", cx: px.toFixed(1), cy: py.toFixed(1), r: 2 }));
          }
        });
        flush();
      }
      svg.append(svgEl("text", { class: "axis", x: W - 2, y: 11, "text-anchor": "end" }, "p99 max " + ms(maxMs)),
        svgEl("text", { class: "axis", x: 0, y: H - 4 }, new Date(Date.parse(s.from)).toLocaleString()),
        svgEl("text", { class: "axis", x: W, y: H - 4, "text-anchor": "end" }, new Date(Date.parse(s.until)).toLocaleString()));
    }
    const from = Date.parse(s.from), until = Date.parse(s.until);
    for (const m of marks || []) {
      if (!(m.at >= from && m.at < until)) continue;
      const x = ((m.at - from) / (until - from)) * W;
      svg.append(svgEl("line", { class: "mark", x1: x, x2: x, y1: top, y2: top + plotH, dataset: { test: "mark", kind: m.kind } },
        svgEl("title", {}, m.label + " at " + new Date(m.at).toLocaleString())));
    }
    return svg;
  }

  // ---- webhooks --------------------------------------------------------------------------

  let webhookCache = [];
  const WEBHOOK_COLUMNS = 12;
  const DISABLED_REASONS = {
    gone: "gone: the receiver answered 410 Gone",
    failing: "failing: its breaker stayed open too long",
  };

  /** A time as a <time> element (machine-readable datetime, local text), or "—". */
  const timeEl = (t) => (t ? el("time", { datetime: t }, when(t)) : "—");

  function activeCell(w) {
    if (w.active) return td("yes");
    return el("td", { dataset: { test: "disabled", reason: w.disabled_reason || "" } },
      w.disabled_reason ? "no — " + (DISABLED_REASONS[w.disabled_reason] || w.disabled_reason) : "no");
  }

  function controlsCell(w) {
    const line = (test, label, ...value) => el("div", { dataset: { test } }, label + ": ", ...value);
    return el("td", {},
      line("rate-limit", "rate limit", w.rate_limit_per_second ? w.rate_limit_per_second + "/s" : "none"),
      line("ordering", "ordering", w.ordering),
      w.previous_secret_expires_at ? line("previous-secret", "previous secret signs until", timeEl(w.previous_secret_expires_at)) : null);
  }

  function showBreaker(cell, b) {
    const row = cell.parentElement;
    if (!b) { cell.textContent = "—"; return; }
    if (row) row.dataset.breaker = b.state;
    const failures = b.consecutive_failures + " consecutive failure" + (b.consecutive_failures === 1 ? "" : "s");
    const state = el("strong", { class: "breaker-" + b.state }, b.state.replace("_", "-"));
    if (b.state === "open") {
      cell.replaceChildren(state, el("div", {}, failures), el("div", {}, "opened ", timeEl(b.opened_at)),
        el("div", { dataset: { test: "next-probe" } }, "next probe ", timeEl(b.next_probe_at)));
    } else if (b.state === "half_open") {
      cell.replaceChildren(state, el("div", {}, failures), el("div", {}, "one probe in flight"));
    } else {
      cell.replaceChildren(state, b.consecutive_failures ? el("div", {}, failures) : "");
    }
  }

  async function loadWebhooks() {
    const tbody = $("webhooks-table").tBodies[0];
    const current = ticket("webhooks");
    const { body } = await api("GET", "/webhooks");
    await namesReady();
    if (!current()) return;
    webhookCache = body || [];
    tbody.replaceChildren();
    $("webhooks-empty").hidden = webhookCache.length > 0;
    for (const w of webhookCache) {
      const breakerCell = td("…");
      const chartCell = el("td", { dataset: { test: "chart-cell" } }, "…");
      const healthCells = [td("…"), td("…"), td("…"), td("…")];
      const toggle = el("button", {
        type: "button", dataset: { test: "toggle-active" },
        onclick: () => setActive(w, !w.active),
      }, w.active ? "Disable" : w.disabled_reason ? "Re-enable" : "Enable");
      const panel = el("tr", { class: "controls", hidden: true, dataset: { test: "controls-row", id: w.id } });
      const controls = el("button", { type: "button", dataset: { test: "controls" }, "aria-expanded": "false",
        onclick: () => toggleControls(w, panel, controls) }, "Controls");
      const row = el("tr", { dataset: { test: "webhook-row", id: w.id } },
        el("td", {}, el("a", { href: "#deliveries/" + w.id, dataset: { test: "webhook-link" } }, w.description || w.url),
          w.description ? el("div", { class: "mono sub" }, w.url) : null),
        el("td", { dataset: { test: "tenant-cell" } }, tenantName(w.tenant_id)), td(w.events.join(", ")),
        chartCell, activeCell(w), breakerCell, controlsCell(w), ...healthCells,
        el("td", {}, toggle, " ", controls, " ", el("a", { href: "#deliveries/" + w.id, dataset: { test: "deliveries-link" } }, "Deliveries")));
      tbody.append(row, panel);
      const health = api("GET", "/webhooks/" + w.id + "/health");
      const series = api("GET", "/webhooks/" + w.id + "/health/series?window=86400&bucket=3600");
      Promise.all([series, health.catch(() => null)]).then(([{ body: s }, h]) => {
        chartCell.replaceChildren(chart(s, breakerMarks(h && h.body, []), false));
        row.dataset.chartLoaded = "true";
      }).catch((e) => { chartCell.textContent = "unavailable: " + e.message; });
      health.then(({ body: h }) => {
        showBreaker(breakerCell, h.breaker);
        healthCells[0].textContent = pct(h.success_rate) + " (" + h.successes + "/" + h.attempts + ")";
        healthCells[1].textContent = ms(h.p50_latency_ms);
        healthCells[2].textContent = h.last_error ? h.last_error + " (" + when(h.last_error_at) + ")" : "—";
        healthCells[3].textContent = String(h.queue_depth);
        row.dataset.healthLoaded = "true";
      }).catch((e) => { healthCells[0].textContent = "unavailable: " + e.message; });
    }
  }

  async function setActive(w, active) {
    try {
      await api("PATCH", "/webhooks/" + w.id, { active });
      status((active ? "Enabled " : "Disabled ") + w.url);
      await loadWebhooks();
    } catch (e) { fail(e); }
  }

  /** A labelled input for the controls panel; ids are unique per webhook. */
  function field(w, name, label, attrs) {
    const id = "wh-" + name + "-" + w.id;
    return [el("label", { for: id }, label), el("input", { id, name, ...attrs })];
  }

  function toggleControls(w, panel, button) {
    if (!panel.hidden) { panel.hidden = true; button.setAttribute("aria-expanded", "false"); return; }
    const orderingId = "wh-ordering-" + w.id;
    const ordering = el("select", { id: orderingId, name: "ordering" },
      el("option", { value: "unordered" }, "unordered"), el("option", { value: "fifo" }, "FIFO (one in flight, in commit order)"));
    ordering.value = w.ordering;
    const limits = el("form", { dataset: { test: "limits-form" } },
      ...field(w, "rate", "Rate limit (attempts per second, 1–10,000; empty: none)",
        { type: "number", min: 1, max: 10000, step: 1, value: w.rate_limit_per_second || "" }),
      el("label", { for: orderingId }, "Ordering"), ordering,
      el("button", { type: "submit", dataset: { test: "save-limits" } }, "Save"));
    limits.addEventListener("submit", (ev) => { ev.preventDefault(); saveLimits(w, limits); });
    const rotate = el("form", { dataset: { test: "rotate-form" }, autocomplete: "off" },
      ...field(w, "secret", "New secret (16–255 characters; empty: generate one)",
        { type: "password", minlength: 16, maxlength: 255, spellcheck: "false", autocomplete: "new-password" }),
      ...field(w, "grace", "Grace period (seconds the current secret keeps signing, 0–604,800)",
        { type: "number", min: 0, max: 604800, step: 1, value: 86400, required: true }),
      el("button", { type: "submit", dataset: { test: "rotate" } }, "Rotate secret"));
    rotate.addEventListener("submit", (ev) => { ev.preventDefault(); rotateSecret(w, rotate); });
    panel.replaceChildren(el("td", { colspan: WEBHOOK_COLUMNS },
      el("h3", {}, "Delivery controls"), limits,
      el("h3", {}, "Rotate the signing secret"),
      el("p", { class: "hint" }, "During the grace period every delivery is signed with both the new secret and the one it replaces, " +
        "so receivers holding either one verify it. Editing the secret any other way replaces it at once."),
      rotate));
    panel.hidden = false;
    button.setAttribute("aria-expanded", "true");
  }

  async function saveLimits(w, form) {
    const rateText = form.elements.rate.value.trim();
    const change = {};
    const rate = rateText === "" ? null : Number(rateText);
    if (rate !== w.rate_limit_per_second) change.rate_limit_per_second = rate;
    if (form.elements.ordering.value !== w.ordering) change.ordering = form.elements.ordering.value;
    if (Object.keys(change).length === 0) { status("Nothing to change for " + w.url + "."); return; }
    try {
      await api("PATCH", "/webhooks/" + w.id, change);
      status("Saved the delivery controls of " + w.url + ".");
      await loadWebhooks();
    } catch (e) { fail(e); }
  }

  async function rotateSecret(w, form) {
    const body = { grace_period_seconds: Number(form.elements.grace.value) };
    const secret = form.elements.secret.value;
    if (secret) body.secret = secret;
    form.elements.secret.value = "";
    try {
      const { body: r } = await api("POST", "/webhooks/" + w.id + "/rotate-secret", body);
      hideSecret();
      if (r.secret) {
        $("webhook-secret-url").textContent = r.url;
        $("webhook-secret-value").textContent = r.secret;
        $("webhook-secret").hidden = false;
      }
      status("Rotated the signing secret of " + r.url + (r.previous_secret_expires_at
        ? "; the previous one signs until " + when(r.previous_secret_expires_at) + "." : "."));
      await loadWebhooks();
    } catch (e) { fail(e); }
  }

  function hideSecret() {
    $("webhook-secret").hidden = true;
    $("webhook-secret-value").replaceChildren();
    $("webhook-secret-url").replaceChildren();
  }

  // ---- one webhook: its health over time and its deliveries ------------------------------

  /** A <dl> of label/value pairs. */
  function summary(id, pairs) {
    $(id).replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "—" : v)]));
  }

  async function loadWebhookPage(webhookId) {
    if (!webhookId) { location.hash = "#webhooks"; return; }
    const current = ticket("webhook-page");
    $("webhook-summary").replaceChildren();
    $("webhook-chart").replaceChildren();
    $("webhook-marks").replaceChildren();
    const deliveries = loadDeliveries(webhookId, false);
    const { body: w } = await api("GET", "/webhooks/" + webhookId);
    await namesReady();
    if (!current()) return;
    $("deliveries-webhook").replaceChildren(w.description || w.url);
    summary("webhook-summary", [
      ["URL", el("span", { class: "mono" }, w.url)], ["Id", el("span", { class: "mono" }, w.id)],
      ["Tenant", tenantName(w.tenant_id)], ["Events", w.events.join(", ")],
      ["Active", w.active ? "yes" : "no" + (w.disabled_reason ? " — " + (DISABLED_REASONS[w.disabled_reason] || w.disabled_reason) : "")],
    ]);
    await Promise.all([loadWebhookChart(webhookId), deliveries]);
  }

  async function loadWebhookChart(webhookId) {
    const current = ticket("webhook-chart");
    const [windowS, bucketS] = $("series-range").value.split("/");
    const [{ body: s }, health] = await Promise.all([
      api("GET", "/webhooks/" + webhookId + "/health/series" + query({ window: windowS, bucket: bucketS })),
      api("GET", "/webhooks/" + webhookId + "/health").then((r) => r.body).catch(() => null),
    ]);
    // The breaker's transitions are not stored one by one: what is stored is when the
    // current opening began and every disabling (audited as webhook.disabled).
    let disabled = [];
    try {
      const { body } = await api("GET", "/audit-logs" + query({ action: "webhook.disabled", resource_type: "webhook", from: s.from, limit: 100 }));
      disabled = (body || []).filter((a) => a.resource_id === webhookId);
    } catch (e) { /* a key that cannot read the audit log sees the chart without those marks */ }
    if (!current()) return;
    const marks = breakerMarks(health, disabled);
    $("webhook-chart").replaceChildren(chart(s, marks, true));
    $("webhook-marks").replaceChildren(...marks.map((m) => el("li", { dataset: { test: "mark-item", kind: m.kind } }, m.label + " at " + new Date(m.at).toLocaleString())));
  }

  // ---- deliveries of one webhook ---------------------------------------------------------

  let deliveriesCursor = null;

  async function loadDeliveries(webhookId, more) {
    if (!webhookId) { location.hash = "#webhooks"; return; }
    const tbody = $("deliveries-table").tBodies[0];
    const current = ticket("deliveries");
    $("deliveries-table").setAttribute("aria-busy", "true");
    if (!more) deliveriesCursor = null;
    let body, headers;
    try {
      ({ body, headers } = await api("GET", "/webhooks/" + webhookId + "/deliveries" +
        query({ status: $("delivery-status").value, limit: 50, cursor: more ? deliveriesCursor : null })));
    } finally {
      if (current()) $("deliveries-table").removeAttribute("aria-busy");
    }
    if (!current()) return;
    if (!more) tbody.replaceChildren();
    deliveriesCursor = headers.get("X-Next-Cursor");
    $("deliveries-more").hidden = !deliveriesCursor;
    for (const d of body || []) {
      const attemptsRow = el("tr", { class: "attempts", hidden: true, dataset: { test: "attempts-row", id: d.id } });
      const show = el("button", { type: "button", dataset: { test: "show-attempts" },
        onclick: () => toggleAttempts(webhookId, d.id, attemptsRow) }, "Attempts");
      tbody.append(el("tr", { dataset: { test: "delivery-row", id: d.id, status: d.status } },
        el("td", { class: "mono" }, el("a", { href: "#delivery/" + webhookId + "/" + d.id, dataset: { test: "delivery-link" } }, d.id)), td(d.event_type), td(d.status, "status-" + d.status), td(d.attempts),
        td(d.response_code), td(d.last_error), td(when(d.created_at)), el("td", {}, show)), attemptsRow);
    }
    if (!more && (!body || body.length === 0)) tbody.append(el("tr", {}, el("td", { colspan: 8 }, "No deliveries.")));
  }

  async function toggleAttempts(webhookId, deliveryId, row) {
    if (!row.hidden) { row.hidden = true; return; }
    try {
      const { body } = await api("GET", "/webhooks/" + webhookId + "/deliveries/" + deliveryId + "/attempts");
      const table = el("table", { dataset: { test: "attempts-table" } },
        el("thead", {}, el("tr", {}, ...["#", "At", "Status code", "Duration", "Error", "Response excerpt"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...(body || []).map((a) => el("tr", { dataset: { test: "attempt", status: a.status_code === null ? "" : a.status_code } },
          td(a.attempt), td(when(a.created_at)), td(a.status_code), td(ms(a.duration_ms)), td(a.error), td(a.response_body, "mono")))));
      row.replaceChildren(el("td", { colspan: 8 }, body && body.length ? table : "No attempts yet."));
      row.hidden = false;
    } catch (e) { fail(e); }
  }

  // ---- one delivery ----------------------------------------------------------------------

  async function loadDelivery(webhookId, deliveryId) {
    if (!webhookId || !deliveryId) { location.hash = "#webhooks"; return; }
    const current = ticket("delivery");
    for (const id of ["delivery-summary", "delivery-body", "delivery-attempts"]) $(id).replaceChildren();
    $("delivery-retry").hidden = true;
    $("delivery-id").textContent = deliveryId;
    const [{ body: d }, { body: attempts }] = await Promise.all([
      api("GET", "/webhooks/" + webhookId + "/deliveries/" + deliveryId),
      api("GET", "/webhooks/" + webhookId + "/deliveries/" + deliveryId + "/attempts"),
    ]);
    await namesReady();
    if (!current()) return;
    summary("delivery-summary", [
      ["Status", el("span", { class: "status-" + d.status, dataset: { test: "delivery-status" } }, d.status)],
      ["Webhook", el("a", { href: "#deliveries/" + webhookId }, webhookName(webhookId, d.webhook))],
      ["Event", d.event.type + " (" + d.event.id + ")"], ["Tenant", tenantName(d.event.tenant_id)],
      ["Attempts", String(d.attempts)], ["Created", timeEl(d.created_at)],
      [d.status === "pending" ? "Next attempt" : "Completed", timeEl(d.status === "pending" ? d.next_retry_at : d.completed_at)],
      ["Last error", d.last_error],
    ]);
    $("delivery-retry").hidden = d.status !== "failed";
    $("delivery-retry").dataset.id = d.id;
    // The body the receiver gets (see "What a receiver gets"): the event as stored, which
    // never holds a secret (sensitive values are redacted before they are stored).
    const body = { id: d.event.id, event: d.event.type, timestamp: d.event.created_at, tenant_id: d.event.tenant_id, data: d.event.data };
    $("delivery-body").textContent = JSON.stringify(body, null, 2);
    const first = attempts.length ? Date.parse(attempts[0].created_at) : 0;
    const longest = Math.max(1, ...attempts.map((a) => a.duration_ms));
    $("delivery-attempts").replaceChildren(...attempts.map((a) => {
      const ok = a.status_code !== null && a.status_code >= 200 && a.status_code < 300;
      const bar = svgEl("svg", { class: "chart", width: 120, height: 10, role: "img", "aria-label": a.duration_ms + " ms" },
        svgEl("rect", { class: ok ? "ok" : "bad", x: 0, y: 1, height: 8, width: Math.max(1, (a.duration_ms / longest) * 120) }));
      const offset = Math.round((Date.parse(a.created_at) - first) / 1000);
      return el("li", { class: ok ? "ok" : "bad", dataset: { test: "timeline-attempt", status: a.status_code === null ? "" : a.status_code } },
        el("div", { class: "head" }, el("strong", {}, "#" + a.attempt), timeEl(a.created_at),
          a.attempt > 1 || offset ? el("span", { class: "sub" }, "+" + offset + " s") : null,
          el("span", { class: ok ? "status-success" : "status-failed" }, a.status_code === null ? "no answer" : "HTTP " + a.status_code),
          bar, ms(a.duration_ms)),
        a.error ? el("div", { class: "error" }, a.error) : null,
        a.response_body ? el("pre", { class: "mono" }, a.response_body) : null);
    }));
    if (!attempts.length) $("delivery-attempts").append(el("li", {}, "No attempts yet."));
  }

  async function retryDelivery() {
    const id = $("delivery-retry").dataset.id;
    try {
      await api("POST", "/webhooks/deliveries/" + id + "/retry");
      status("Delivery " + id + " is queued again.");
      await loadDelivery(...location.hash.split("/").slice(1, 3));
    } catch (e) { fail(e); }
  }

  // ---- the tenant tree -------------------------------------------------------------------

  async function loadTree() {
    const current = ticket("tree");
    await namesLoad;
    if (!current()) return;
    const tenants = [...names.tenants.values()];
    const hooks = [...names.webhooks.values()];
    const children = new Map();
    for (const t of tenants) {
      const parent = names.tenants.has(t.parent_id) ? t.parent_id : null;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(t);
    }
    for (const list of children.values()) list.sort((a, b) => a.name.localeCompare(b.name));
    const own = (id) => hooks.filter((w) => w.tenant_id === id);
    const hookLink = (w, test, via) => el("a", { href: "#deliveries/" + w.id, title: w.url + "\n" + w.id, dataset: { test, id: w.id } },
      (w.description || w.url) + (via ? " (" + via + ")" : ""));
    const node = (t, inherited) => {
      const mine = own(t.id);
      const li = el("li", { dataset: { test: "tree-tenant", id: t.id, depth: t.depth } },
        el("span", { class: "tenant name", title: t.id }, t.name), " ", el("span", { class: "mono sub" }, t.slug),
        t.status && t.status !== "active" ? el("span", { class: "sub" }, " (" + t.status + ")") : null,
        el("div", { class: "hooks" }, "Own webhooks: ", ...(mine.length ? mine.map((w) => hookLink(w, "own-webhook")) : ["none"])),
        el("div", { class: "hooks" }, "Through an ancestor: ",
          ...(inherited.length ? inherited.map(([w, via]) => hookLink(w, "inherited-webhook", via)) : ["none"])));
      const kids = children.get(t.id) || [];
      const passed = inherited.concat(mine.map((w) => [w, "from " + t.name]));
      if (kids.length) li.append(el("ul", {}, ...kids.map((k) => node(k, passed))));
      return li;
    };
    const global = hooks.filter((w) => !w.tenant_id).map((w) => [w, "global"]);
    const roots = children.get(null) || [];
    $("tree").replaceChildren(roots.length
      ? el("ul", { class: "tree", dataset: { test: "tree" } }, ...roots.map((t) => node(t, global)))
      : el("p", { class: "hint" }, "No tenants visible to this key."));
  }

  // ---- dead-letter queue -----------------------------------------------------------------

  async function loadDlq() {
    const tbody = $("dlq-table").tBodies[0];
    const current = ticket("dlq");
    const [{ body: rows }, { body: stats }] = await Promise.all([
      api("GET", "/webhooks/deliveries/failed?limit=500"),
      api("GET", "/webhooks/deliveries/stats"),
    ]);
    await namesReady();
    if (!current()) return;
    $("dlq-stats").textContent = "Deliveries: " + stats.total + " total, " + stats.pending + " pending, " +
      stats.success + " delivered, " + stats.failed + " failed.";
    tbody.replaceChildren();
    $("dlq-empty").hidden = (rows || []).length > 0;
    for (const d of rows || []) {
      const retry = el("button", { type: "button", dataset: { test: "retry" }, onclick: () => retryOne(d.id) }, "Retry");
      tbody.append(el("tr", { dataset: { test: "dlq-row", id: d.id } },
        el("td", { class: "mono" }, el("a", { href: "#delivery/" + d.webhook.id + "/" + d.id, dataset: { test: "delivery-link" } }, d.id)),
        el("td", {}, el("a", { href: "#deliveries/" + d.webhook.id }, webhookName(d.webhook.id, d.webhook))),
        el("td", {}, tenantName(d.webhook.tenant_id)), td(d.event.type), td(d.attempts), td(d.response_code), td(d.last_error), td(when(d.completed_at)), el("td", {}, retry)));
    }
  }

  async function retryOne(id) {
    try {
      await api("POST", "/webhooks/deliveries/" + id + "/retry");
      status("Delivery " + id + " is queued again.");
      await loadDlq();
    } catch (e) { fail(e); }
  }

  async function retryAll() {
    if (!window.confirm("Queue every failed delivery you can see again?")) return;
    try {
      const { body } = await api("POST", "/webhooks/deliveries/retry-all");
      status(body.retried + " deliveries are queued again.");
      await loadDlq();
    } catch (e) { fail(e); }
  }

  // ---- replay ----------------------------------------------------------------------------

  let replayTimer = null;

  async function loadReplay() {
    const sel = $("replay-webhook");
    const { body } = await api("GET", "/webhooks");
    await namesReady();
    const chosen = sel.value;
    const owner = (id) => { const t = names.tenants.get(id); return t ? t.name + " (" + t.slug + ")" : "tenant " + id; };
    sel.replaceChildren(...(body || []).map((w) => el("option", { value: w.id }, (w.description ? w.description + " — " : "") + w.url + (w.tenant_id ? " · " + owner(w.tenant_id) : " · global"))));
    if (chosen) sel.value = chosen;
    if (!$("replay-since").value) {
      const d = new Date(Date.now() - 3600 * 1000);
      d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
      $("replay-since").value = d.toISOString().slice(0, 19);
    }
  }

  function replayUnavailable(e) {
    return e.httpStatus === 405 || (e.httpStatus === 404 && e.code === "NOT_FOUND");
  }

  function showReplay(r) {
    const box = $("replay-status");
    box.replaceChildren(
      el("p", { dataset: { test: "replay-progress" } }, "Replay " + r.id + ": " + r.status + ", " + r.enqueued + " of " + r.total + " enqueued."),
      el("progress", { max: Math.max(r.total, 1), value: r.enqueued, "aria-label": "Replay progress" }),
      el("p", { class: "hint" }, "Window " + when(r.since) + " – " + when(r.until) + (r.events && r.events.length ? "; events " + r.events.join(", ") : "")));
  }

  async function startReplay(ev) {
    ev.preventDefault();
    clearTimeout(replayTimer);
    const webhookId = $("replay-webhook").value;
    const events = $("replay-events").value.split(",").map((s) => s.trim()).filter(Boolean);
    const body = { since: isoOf($("replay-since").value) };
    if ($("replay-until").value) body.until = isoOf($("replay-until").value);
    if (events.length) body.events = events;
    const box = $("replay-status");
    try {
      const { body: r } = await api("POST", "/webhooks/" + webhookId + "/replay", body);
      showReplay(r);
      pollReplay(webhookId, r.id);
    } catch (e) {
      if (replayUnavailable(e)) {
        box.replaceChildren(el("p", { class: "error", dataset: { test: "replay-unavailable" } },
          "Replay is not available on this server (it answered " + e.httpStatus + "). Upgrade Stratum to a version with replay."));
      } else {
        box.replaceChildren(el("p", { class: "error" }, "Replay failed: " + e.message));
      }
    }
  }

  function pollReplay(webhookId, replayId) {
    replayTimer = setTimeout(async () => {
      try {
        const { body: r } = await api("GET", "/webhooks/" + webhookId + "/replays/" + replayId);
        showReplay(r);
        if (r.status !== "completed" && !$("page-replay").hidden) pollReplay(webhookId, replayId);
      } catch (e) {
        if (replayUnavailable(e)) $("replay-status").append(el("p", { class: "error" }, "Replay progress is not available on this server (it answered " + e.httpStatus + ")."));
        else fail(e);
      }
    }, 1000);
  }

  // ---- audit log -------------------------------------------------------------------------

  let auditCursor = null;

  function auditFilters() {
    return {
      tenant_id: $("audit-tenant").value.trim(), action: $("audit-action").value.trim(),
      resource_type: $("audit-resource").value.trim(), actor_id: $("audit-actor").value.trim(),
      from: isoOf($("audit-from").value), to: isoOf($("audit-to").value), limit: $("audit-limit").value,
    };
  }

  async function loadAudit(cursor) {
    const current = ticket("audit");
    const { body, headers } = await api("GET", "/audit-logs" + query({ ...auditFilters(), cursor }));
    await namesReady();
    if (!current()) return;
    auditCursor = headers.get("X-Next-Cursor");
    $("audit-next").hidden = !auditCursor;
    $("audit-first").hidden = !cursor;
    $("audit-detail").hidden = true;
    const tbody = $("audit-table").tBodies[0];
    tbody.replaceChildren();
    for (const a of body || []) {
      const show = el("button", { type: "button", dataset: { test: "audit-show" }, onclick: () => showAudit(a) }, "Before / after");
      tbody.append(el("tr", { dataset: { test: "audit-row", id: a.id } },
        td(when(a.created_at)), td(a.action), el("td", { dataset: { test: "audit-resource" } }, a.resource_type, " ", resourceName(a)),
        el("td", { dataset: { test: "audit-tenant" } }, a.tenant_id ? tenantName(a.tenant_id) : "—"), td(a.actor_type + (a.actor_id ? " " + a.actor_id : ""), "mono"), el("td", {}, show)));
    }
    if (!body || body.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 6 }, "No matching entries.")));
  }

  /** The name of an audit entry's resource when it is a tenant or a webhook; else its id. */
  function resourceName(a) {
    if (!a.resource_id) return "";
    if (a.resource_type === "tenant" && names.tenants.has(a.resource_id)) return tenantName(a.resource_id);
    if (a.resource_type === "webhook" && names.webhooks.has(a.resource_id)) return webhookName(a.resource_id);
    if (a.resource_type === "delivery") return el("span", { class: "mono", title: a.resource_id }, a.resource_id);
    return el("span", { class: "mono" }, a.resource_id);
  }

  function showAudit(a) {
    $("audit-detail-title").textContent = a.action + " — " + when(a.created_at);
    $("audit-before").textContent = a.before_state === null ? "(none)" : JSON.stringify(a.before_state, null, 2);
    $("audit-after").textContent = a.after_state === null ? "(none)" : JSON.stringify(a.after_state, null, 2);
    $("audit-detail").hidden = false;
  }

  // ---- consent ---------------------------------------------------------------------------

  async function loadConsent() {
    const tenant = $("consent-tenant").value.trim();
    const subject = $("consent-subject").value.trim();
    const current = ticket("consent");
    const { body } = await api("GET", "/tenants/" + encodeURIComponent(tenant) + "/consent" + query({ subject_id: subject }));
    if (!current()) return;
    const tbody = $("consent-table").tBodies[0];
    tbody.replaceChildren();
    for (const c of body || []) {
      const active = c.granted && !c.revoked_at;
      const revoke = active ? el("button", { type: "button", dataset: { test: "revoke" }, onclick: () => revokeConsent(tenant, subject, c.purpose) }, "Revoke") : "";
      tbody.append(el("tr", { dataset: { test: "consent-row", purpose: c.purpose, granted: String(active) } },
        td(c.purpose, "mono"), td(active ? "yes" : "no"), td(when(c.granted_at)), td(when(c.revoked_at)), td(when(c.expires_at)), el("td", {}, revoke)));
    }
    if (!body || body.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 6 }, "No consent records for this subject.")));
  }

  async function grantConsent(ev) {
    ev.preventDefault();
    const tenant = $("consent-tenant").value.trim();
    const subject = $("consent-subject").value.trim();
    if (!tenant || !subject) { status("Enter a tenant and a data subject first.", true); return; }
    const body = { subject_id: subject, purpose: $("grant-purpose").value.trim() };
    if ($("grant-expires").value) body.expires_at = isoOf($("grant-expires").value);
    try {
      await api("POST", "/tenants/" + encodeURIComponent(tenant) + "/consent", body);
      status("Granted " + body.purpose + " for " + subject + ".");
      await loadConsent();
    } catch (e) { fail(e); }
  }

  async function revokeConsent(tenant, subject, purpose) {
    try {
      await api("DELETE", "/tenants/" + encodeURIComponent(tenant) + "/consent/" + encodeURIComponent(purpose) + query({ subject_id: subject }));
      status("Revoked " + purpose + " for " + subject + ".");
      await loadConsent();
    } catch (e) { fail(e); }
  }

  // ---- wiring ----------------------------------------------------------------------------

  function onSubmit(id, f) { $(id).addEventListener("submit", (ev) => { ev.preventDefault(); Promise.resolve(f(ev)).catch(fail); }); }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout("Signed out."));
    $("webhooks-refresh").addEventListener("click", () => loadWebhooks().catch(fail));
    $("webhook-secret-hide").addEventListener("click", hideSecret);
    onSubmit("deliveries-filter", () => loadDeliveries(location.hash.split("/")[1], false));
    $("deliveries-more").addEventListener("click", () => loadDeliveries(location.hash.split("/")[1], true).catch(fail));
    $("dlq-refresh").addEventListener("click", () => loadDlq().catch(fail));
    $("delivery-retry").addEventListener("click", retryDelivery);
    $("delivery-refresh").addEventListener("click", () => loadDelivery(...location.hash.split("/").slice(1, 3)).catch(fail));
    $("series-range").addEventListener("change", () => loadWebhookChart(location.hash.split("/")[1]).catch(fail));
    $("retry-all").addEventListener("click", retryAll);
    $("replay-form").addEventListener("submit", startReplay);
    onSubmit("audit-filter", () => loadAudit(null));
    $("audit-next").addEventListener("click", () => loadAudit(auditCursor).catch(fail));
    $("audit-first").addEventListener("click", () => loadAudit(null).catch(fail));
    onSubmit("consent-lookup", loadConsent);
    onSubmit("consent-grant", grantConsent);
    window.addEventListener("hashchange", route);
    if (key()) loadTenantOptions();
    route();
  });
})();
