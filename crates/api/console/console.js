// Stratum console. Plain DOM, no framework, no build step. Every text that comes from the
// API is inserted with textContent (never as markup); the key lives in sessionStorage only.
"use strict";

(function () {
  const KEY = "stratum.apiKey";
  const $ = (id) => document.getElementById(id);
  const pages = ["webhooks", "deliveries", "dlq", "replay", "audit", "consent"];

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
    for (const id of ["replay-status", "audit-before", "audit-after", "dlq-stats", "deliveries-webhook", "tenant-options", "replay-webhook"]) $(id).replaceChildren();
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
    const [name, arg] = location.hash.replace(/^#/, "").split("/");
    const page = pages.includes(name) ? name : "webhooks";
    for (const p of pages) $("page-" + p).hidden = p !== page;
    // A generated secret is shown once: leaving the webhooks page drops it.
    if (page !== "webhooks") hideSecret();
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.page === page || (page === "deliveries" && a.dataset.page === "webhooks")) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    status("");
    const loaders = { webhooks: loadWebhooks, deliveries: () => loadDeliveries(arg, false), dlq: loadDlq, replay: loadReplay, audit: () => loadAudit(null), consent: () => {} };
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

  // ---- webhooks --------------------------------------------------------------------------

  let webhookCache = [];
  const WEBHOOK_COLUMNS = 11;
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
    if (!current()) return;
    webhookCache = body || [];
    tbody.replaceChildren();
    $("webhooks-empty").hidden = webhookCache.length > 0;
    for (const w of webhookCache) {
      const breakerCell = td("…");
      const healthCells = [td("…"), td("…"), td("…"), td("…")];
      const toggle = el("button", {
        type: "button", dataset: { test: "toggle-active" },
        onclick: () => setActive(w, !w.active),
      }, w.active ? "Disable" : w.disabled_reason ? "Re-enable" : "Enable");
      const panel = el("tr", { class: "controls", hidden: true, dataset: { test: "controls-row", id: w.id } });
      const controls = el("button", { type: "button", dataset: { test: "controls" }, "aria-expanded": "false",
        onclick: () => toggleControls(w, panel, controls) }, "Controls");
      const row = el("tr", { dataset: { test: "webhook-row", id: w.id } },
        td(w.url, "mono"), td(w.tenant_id || "global", "mono"), td(w.events.join(", ")),
        activeCell(w), breakerCell, controlsCell(w), ...healthCells,
        el("td", {}, toggle, " ", controls, " ", el("a", { href: "#deliveries/" + w.id, dataset: { test: "deliveries-link" } }, "Deliveries")));
      tbody.append(row, panel);
      api("GET", "/webhooks/" + w.id + "/health").then(({ body: h }) => {
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

  // ---- deliveries of one webhook ---------------------------------------------------------

  let deliveriesCursor = null;

  async function loadDeliveries(webhookId, more) {
    if (!webhookId) { location.hash = "#webhooks"; return; }
    const tbody = $("deliveries-table").tBodies[0];
    const current = ticket("deliveries");
    $("deliveries-table").setAttribute("aria-busy", "true");
    if (!more) {
      deliveriesCursor = null;
      $("deliveries-webhook").textContent = webhookId;
      api("GET", "/webhooks/" + webhookId).then(({ body: w }) => { $("deliveries-webhook").textContent = w.url; }).catch(() => {});
    }
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
        td(d.id, "mono"), td(d.event_type), td(d.status, "status-" + d.status), td(d.attempts),
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

  // ---- dead-letter queue -----------------------------------------------------------------

  async function loadDlq() {
    const tbody = $("dlq-table").tBodies[0];
    const current = ticket("dlq");
    const [{ body: rows }, { body: stats }] = await Promise.all([
      api("GET", "/webhooks/deliveries/failed?limit=500"),
      api("GET", "/webhooks/deliveries/stats"),
    ]);
    if (!current()) return;
    $("dlq-stats").textContent = "Deliveries: " + stats.total + " total, " + stats.pending + " pending, " +
      stats.success + " delivered, " + stats.failed + " failed.";
    tbody.replaceChildren();
    $("dlq-empty").hidden = (rows || []).length > 0;
    for (const d of rows || []) {
      const retry = el("button", { type: "button", dataset: { test: "retry" }, onclick: () => retryOne(d.id) }, "Retry");
      tbody.append(el("tr", { dataset: { test: "dlq-row", id: d.id } },
        td(d.id, "mono"), el("td", { class: "mono" }, el("a", { href: "#deliveries/" + d.webhook.id }, d.webhook.url)),
        td(d.event.type), td(d.attempts), td(d.response_code), td(d.last_error), td(when(d.completed_at)), el("td", {}, retry)));
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
    const chosen = sel.value;
    sel.replaceChildren(...(body || []).map((w) => el("option", { value: w.id }, w.url + (w.tenant_id ? " (tenant " + w.tenant_id + ")" : " (global)"))));
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
        td(when(a.created_at)), td(a.action), td(a.resource_type + (a.resource_id ? " " + a.resource_id : ""), "mono"),
        td(a.tenant_id, "mono"), td(a.actor_type + (a.actor_id ? " " + a.actor_id : ""), "mono"), el("td", {}, show)));
    }
    if (!body || body.length === 0) tbody.append(el("tr", {}, el("td", { colspan: 6 }, "No matching entries.")));
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
