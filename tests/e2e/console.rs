//! The console in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against the real binary. Signs in with the admin key, sees a webhook and its failed
//! delivery, retries it and sees it succeed; then a tenant-scoped key sees only its
//! tenant's webhooks. A second test covers the delivery controls: a breaker the engine
//! opened, a webhook a 410 disabled and the page re-enables, rate limit and ordering set
//! from the page, and a secret rotated from the page. Saves a screenshot of every page
//! under `target/console-screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `make test` installs them when missing). Only loopback is used.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use stratum_e2e::{
    default_env, eventually, free_port, Behaviour, Receiver, Stratum, TestDb, ADMIN,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one thing may take to show up on the page.
const WAIT: Duration = Duration::from_secs(30);

/// chromedriver and the browser profile it uses; both go away on drop.
struct Driver {
    child: Child,
    profile: PathBuf,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver (make test does)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile =
            std::env::temp_dir().join(format!("stratum-console-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&profile).unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let http = stratum_e2e::client();
        let up = eventually(WAIT, || {
            let http = http.clone();
            let status = format!("{url}/status");
            async move {
                match http.get(status).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .map(|v| v["value"]["ready"] == json!(true))
                        .unwrap_or(false),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(up, "chromedriver did not come up on port {port}");
        Self {
            child,
            profile,
            url,
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("open a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console-screenshots")
}

async fn screenshot(c: &Client, page: &str) {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{page}: not a PNG");
    std::fs::write(dir.join(format!("{page}.png")), png).unwrap();
}

/// Waits until the element is on the page, and returns it.
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} within {WAIT:?}: {e}"))
}

/// Polls a JavaScript expression until it is true.
async fn until(c: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap();
        if v == json!(true) {
            return;
        }
        if Instant::now() > deadline {
            let status = c
                .execute(
                    "return document.getElementById('status').textContent;",
                    vec![],
                )
                .await
                .unwrap_or(Value::Null);
            panic!("{what}: not true within {WAIT:?} (status line: {status})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.unwrap()
}

async fn sign_in(c: &Client, key: &str) {
    let input = find(c, "#api-key").await;
    input.send_keys(key).await.unwrap();
    find(c, "#login-submit").await.click().await.unwrap();
    until(c, "signed in", "!document.getElementById('nav').hidden").await;
}

async fn go(c: &Client, hash: &str) {
    c.execute(&format!("location.hash = '{hash}';"), vec![])
        .await
        .unwrap();
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.unwrap();
}

/// Calls the API with the admin key, checks the status and returns the body.
async fn call(s: &Stratum, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
    let (st, v) = s.api(method, path, body).await.unwrap();
    assert_eq!(st, want, "{method} {path}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_retries_and_scopes_in_a_real_browser() {
    // The server, a receiver that fails on `a`, two tenants with a webhook each.
    let db = TestDb::new().await;
    let receiver = Receiver::start();
    receiver.set("a", Behaviour::Status(500));
    let s = Stratum::start(&["serve"], &default_env(&db)).await.unwrap();
    let mut tenants = Vec::new();
    for slug in ["acme", "bravo"] {
        let (st, t) = s
            .api(
                "POST",
                "/tenants",
                Some(json!({"name": slug, "slug": slug})),
            )
            .await
            .unwrap();
        assert_eq!(st, 201, "{t}");
        tenants.push(t["id"].as_str().unwrap().to_owned());
    }
    let (ta, tb) = (tenants[0].clone(), tenants[1].clone());
    let mut hooks = Vec::new();
    for (t, path) in [(&ta, "a"), (&tb, "b")] {
        let (st, w) = s
            .api(
                "POST",
                "/webhooks",
                Some(
                    json!({"url": format!("{}/{path}", receiver.base), "tenant_id": t,
                            "events": ["tenant.updated"], "description": format!("hook {path}")}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(st, 201, "{w}");
        hooks.push(w["id"].as_str().unwrap().to_owned());
    }
    let (wa, wb) = (hooks[0].clone(), hooks[1].clone());
    // One event for tenant A; its delivery uses its 3 fast attempts and is dead-lettered.
    let (st, _) = s
        .api(
            "PATCH",
            &format!("/tenants/{ta}"),
            Some(json!({"name": "Acme Inc"})),
        )
        .await
        .unwrap();
    assert_eq!(st, 200);
    let dead = eventually(WAIT, || async {
        s.api("GET", "/webhooks/deliveries/failed", None)
            .await
            .map(|(_, v)| v.as_array().is_some_and(|a| a.len() == 1))
            .unwrap_or(false)
    })
    .await;
    assert!(dead, "the delivery was not dead-lettered");
    let (_, failed) = s
        .api("GET", "/webhooks/deliveries/failed", None)
        .await
        .unwrap();
    let delivery = failed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(failed[0]["webhook_id"], json!(wa));
    // A read+write key of tenant B.
    let (st, key) = s
        .api(
            "POST",
            "/api-keys",
            Some(json!({"tenant_id": tb, "scopes": ["read", "write"], "name": "bravo console"})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{key}");
    let scoped = key["plaintext_key"].as_str().unwrap().to_owned();

    let driver = Driver::start().await;
    let c = driver.browser().await;

    // `/` leads to the console, which asks for a key.
    c.goto(&format!("{}/", s.base)).await.unwrap();
    find(&c, "#api-key").await;
    assert_eq!(
        c.current_url().await.unwrap().as_str(),
        format!("{}/console/", s.base)
    );
    screenshot(&c, "login").await;

    // Admin: both webhooks, with their health figures.
    sign_in(&c, ADMIN).await;
    let row_a = format!("tr[data-test=webhook-row][data-id='{wa}']");
    find(&c, &format!("{row_a}[data-health-loaded=true]")).await;
    find(&c, &format!("tr[data-test=webhook-row][data-id='{wb}']")).await;
    let row = text(&c, &row_a).await;
    assert!(row.contains(&format!("{}/a", receiver.base)), "{row}");
    assert!(
        row.contains("0.0 % (0/3)"),
        "3 failed attempts in the last hour: {row}"
    );
    let (_, health) = s
        .api("GET", &format!("/webhooks/{wa}/health"), None)
        .await
        .unwrap();
    let last_error = health["last_error"].as_str().unwrap();
    assert!(
        row.contains(last_error),
        "the last error {last_error:?}: {row}"
    );
    let stored = c
        .execute("return sessionStorage.getItem('stratum.apiKey');", vec![])
        .await
        .unwrap();
    assert_eq!(stored, json!(ADMIN), "the key lives in session storage");
    let local = c
        .execute(
            "return localStorage.length + document.cookie.length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(local, json!(0), "and nowhere else");
    screenshot(&c, "webhooks").await;

    // Disable and enable again, through PATCH.
    let row_b = format!("tr[data-test=webhook-row][data-id='{wb}']");
    click(&c, &format!("{row_b} button[data-test=toggle-active]")).await;
    until(
        &c,
        "webhook B disabled",
        &format!("document.querySelector(\"{row_b} button[data-test=toggle-active]\")?.textContent === 'Enable'"),
    )
    .await;
    let (_, w) = s
        .api("GET", &format!("/webhooks/{wb}"), None)
        .await
        .unwrap();
    assert_eq!(w["active"], json!(false));
    click(&c, &format!("{row_b} button[data-test=toggle-active]")).await;
    until(
        &c,
        "webhook B enabled",
        &format!("document.querySelector(\"{row_b} button[data-test=toggle-active]\")?.textContent === 'Disable'"),
    )
    .await;

    // The dead-letter queue has the delivery; retry it once the receiver recovers.
    click(&c, "a[href='#dlq']").await;
    let dlq_row = format!("tr[data-test=dlq-row][data-id='{delivery}']");
    let row = text(&c, &dlq_row).await;
    assert!(row.contains("tenant.updated"), "{row}");
    screenshot(&c, "dlq").await;
    receiver.set("a", Behaviour::Ok);
    click(&c, &format!("{dlq_row} button[data-test=retry]")).await;
    until(
        &c,
        "the retried delivery leaves the dead-letter queue",
        &format!("!document.querySelector(\"{dlq_row}\") && document.getElementById('status').textContent.includes('queued again')"),
    )
    .await;

    // Its deliveries page shows it succeed, with every attempt.
    go(&c, &format!("#deliveries/{wa}")).await;
    let drow = format!("tr[data-test=delivery-row][data-id='{delivery}']");
    find(&c, &drow).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let ok = c
            .execute(
                &format!(
                    "return document.querySelector(\"{drow}[data-status=success]\") !== null;"
                ),
                vec![],
            )
            .await
            .unwrap();
        if ok == json!(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delivery did not succeed after the retry"
        );
        // The page shows what it loaded; ask it to load again, as a user would, and wait
        // for that load to finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        click(&c, "#deliveries-refresh").await;
        until(
            &c,
            "the deliveries loaded",
            "!document.getElementById('deliveries-table').hasAttribute('aria-busy')",
        )
        .await;
    }
    click(&c, &format!("{drow} button[data-test=show-attempts]")).await;
    let attempts = format!("tr[data-test=attempts-row][data-id='{delivery}']");
    find(
        &c,
        &format!("{attempts} tr[data-test=attempt][data-status='200']"),
    )
    .await;
    let n500 = c
        .find_all(Locator::Css(&format!(
            "{attempts} tr[data-test=attempt][data-status='500']"
        )))
        .await
        .unwrap()
        .len();
    assert_eq!(n500, 3, "the three failed attempts before the retry");
    screenshot(&c, "deliveries").await;

    // Filter by status: none of this webhook's deliveries is failed any more.
    for (status, shown) in [("failed", false), ("success", true)] {
        find(&c, "#delivery-status")
            .await
            .select_by_value(status)
            .await
            .unwrap();
        click(&c, "#deliveries-refresh").await;
        until(
            &c,
            "the filtered deliveries",
            &format!(
                "!document.getElementById('deliveries-table').hasAttribute('aria-busy') && \
                 (document.querySelector(\"{drow}\") !== null) === {shown} && \
                 (document.querySelector('#deliveries-table tbody').textContent.includes('No deliveries.')) === {}",
                !shown
            ),
        )
        .await;
    }

    // The audit log has the retry; its before/after sit side by side.
    go(&c, "#audit").await;
    find(&c, "#audit-action")
        .await
        .send_keys("delivery.retried")
        .await
        .unwrap();
    click(&c, "#audit-search").await;
    until(
        &c,
        "one delivery.retried entry",
        "document.querySelectorAll('tr[data-test=audit-row]').length === 1",
    )
    .await;
    click(&c, "tr[data-test=audit-row] button[data-test=audit-show]").await;
    until(
        &c,
        "the entry's detail",
        "!document.getElementById('audit-detail').hidden",
    )
    .await;
    assert!(text(&c, "#audit-before").await.contains(&delivery));
    screenshot(&c, "audit").await;

    // Keyset paging: one entry a page over the three tenant entries.
    find(&c, "#audit-action").await.clear().await.unwrap();
    find(&c, "#audit-resource")
        .await
        .send_keys("tenant")
        .await
        .unwrap();
    let limit = find(&c, "#audit-limit").await;
    limit.clear().await.unwrap();
    limit.send_keys("1").await.unwrap();
    click(&c, "#audit-search").await;
    let mut seen = Vec::new();
    for page in 0..3 {
        until(
            &c,
            "a page of one",
            &format!(
                "document.querySelectorAll('tr[data-test=audit-row]').length === 1 && \
                 document.querySelector('tr[data-test=audit-row]').textContent.includes('tenant.') && \
                 !{:?}.includes(document.querySelector('tr[data-test=audit-row]').dataset.id)",
                serde_json::to_string(&seen).unwrap()
            ),
        )
        .await;
        let id = c
            .execute(
                "return document.querySelector('tr[data-test=audit-row]').dataset.id;",
                vec![],
            )
            .await
            .unwrap();
        seen.push(id.as_str().unwrap().to_owned());
        let more = c
            .execute(
                "return !document.getElementById('audit-next').hidden;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(more, json!(page < 2), "a next page after page {page}");
        if page < 2 {
            click(&c, "#audit-next").await;
        }
    }

    // Consent: look a subject up, grant, revoke.
    go(&c, "#consent").await;
    find(&c, "#consent-tenant")
        .await
        .send_keys(&ta)
        .await
        .unwrap();
    find(&c, "#consent-subject")
        .await
        .send_keys("user-42")
        .await
        .unwrap();
    click(&c, "#consent-search").await;
    until(
        &c,
        "an empty lookup",
        "document.querySelector('#consent-table tbody').textContent.includes('No consent records')",
    )
    .await;
    find(&c, "#grant-purpose")
        .await
        .send_keys("marketing.email")
        .await
        .unwrap();
    click(&c, "#grant-submit").await;
    find(
        &c,
        "tr[data-test=consent-row][data-purpose='marketing.email'][data-granted=true]",
    )
    .await;
    screenshot(&c, "consent").await;
    click(&c, "tr[data-test=consent-row] button[data-test=revoke]").await;
    find(
        &c,
        "tr[data-test=consent-row][data-purpose='marketing.email'][data-granted=false]",
    )
    .await;

    // Replay: started, or a clear message where the server does not offer it.
    go(&c, "#replay").await;
    find(&c, &format!("#replay-webhook option[value='{wa}']")).await;
    click(&c, "#replay-start").await;
    until(
        &c,
        "replay progress or a clear message",
        "document.querySelector('[data-test=replay-progress], [data-test=replay-unavailable]')",
    )
    .await;
    screenshot(&c, "replay").await;

    // Log out: the key is gone from the tab.
    click(&c, "#logout").await;
    until(
        &c,
        "the sign-in form",
        "!document.getElementById('login').hidden",
    )
    .await;
    let stored = c
        .execute("return sessionStorage.getItem('stratum.apiKey');", vec![])
        .await
        .unwrap();
    assert_eq!(stored, Value::Null);

    // Tenant B's key sees tenant B's webhook only, and an empty dead-letter queue.
    sign_in(&c, &scoped).await;
    go(&c, "#webhooks").await;
    find(
        &c,
        &format!("tr[data-test=webhook-row][data-id='{wb}'][data-health-loaded=true]"),
    )
    .await;
    let rows = c
        .find_all(Locator::Css("tr[data-test=webhook-row]"))
        .await
        .unwrap()
        .len();
    assert_eq!(rows, 1, "only tenant B's webhook");
    let none = c
        .find_all(Locator::Css(&format!("tr[data-id='{wa}']")))
        .await
        .unwrap();
    assert!(none.is_empty(), "nothing of tenant A is on the page");
    screenshot(&c, "webhooks-scoped").await;
    go(&c, "#dlq").await;
    until(
        &c,
        "an empty queue, and none of tenant A's deliveries counted",
        "!document.getElementById('dlq-empty').hidden && \
         document.getElementById('dlq-stats').textContent.includes('Deliveries: 0 total')",
    )
    .await;
    // Retry all asks first; accepted, it re-queues what this key can see: nothing.
    click(&c, "#retry-all").await;
    c.accept_alert().await.unwrap();
    until(
        &c,
        "retry all answered",
        "document.getElementById('status').textContent.includes('0 deliveries are queued again')",
    )
    .await;

    c.close().await.unwrap();
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch of an RFC 3339 time, read in the browser (the test crate has no
/// date library of its own).
async fn unix_of(c: &Client, rfc3339: &str) -> i64 {
    let v = c
        .execute(
            "return Math.floor(Date.parse(arguments[0]) / 1000);",
            vec![json!(rfc3339)],
        )
        .await
        .unwrap();
    v.as_i64()
        .unwrap_or_else(|| panic!("{rfc3339:?} is not a time"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_and_sets_delivery_controls() {
    // Breakers open after two failed attempts and stay open for ten minutes, longer than the
    // test: the open state the page shows is the engine's own, not a moment in a flapping
    // cycle.
    let db = TestDb::new().await;
    let receiver = Receiver::start();
    receiver.set("down", Behaviour::Status(500));
    receiver.set("gone", Behaviour::Status(410));
    let mut env = default_env(&db);
    for (k, v) in [
        ("STRATUM_WEBHOOK_BREAKER_THRESHOLD", "2"),
        ("STRATUM_WEBHOOK_BREAKER_COOLDOWN_MS", "600000"),
        ("STRATUM_WEBHOOK_BREAKER_COOLDOWN_MAX_MS", "600000"),
    ] {
        env.push((k.to_owned(), v.to_owned()));
    }
    let s = Stratum::start(&["serve"], &env).await.unwrap();
    let t = call(
        &s,
        "POST",
        "/tenants",
        Some(json!({"name": "Acme", "slug": "acme"})),
        201,
    )
    .await;
    let tenant = t["id"].as_str().unwrap().to_owned();
    let old_secret = "the-old-secret-of-the-ok-webhook";
    let mut hooks = Vec::new();
    for path in ["down", "gone", "ok"] {
        let w = call(
            &s,
            "POST",
            "/webhooks",
            Some(
                json!({"url": format!("{}/{path}", receiver.base), "tenant_id": tenant,
                            "events": ["tenant.updated"], "secret": old_secret,
                            "description": format!("hook {path}")}),
            ),
            201,
        )
        .await;
        assert_eq!(w["ordering"], json!("unordered"), "{w}");
        assert_eq!(w["rate_limit_per_second"], Value::Null, "{w}");
        hooks.push(w["id"].as_str().unwrap().to_owned());
    }
    let (down, gone, ok) = (hooks[0].clone(), hooks[1].clone(), hooks[2].clone());

    // One event: `down` fails twice and its breaker opens, `gone` answers 410 and is
    // disabled, `ok` gets it.
    call(
        &s,
        "PATCH",
        &format!("/tenants/{tenant}"),
        Some(json!({"name": "Acme Inc"})),
        200,
    )
    .await;
    let open = eventually(WAIT, || async {
        s.api("GET", &format!("/webhooks/{down}/health"), None)
            .await
            .map(|(_, h)| h["breaker"]["state"] == json!("open"))
            .unwrap_or(false)
    })
    .await;
    assert!(open, "the breaker of the failing webhook did not open");
    let health = call(&s, "GET", &format!("/webhooks/{down}/health"), None, 200).await;
    assert_eq!(
        health["breaker"]["consecutive_failures"],
        json!(2),
        "{health}"
    );
    let next_probe = health["breaker"]["next_probe_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let disabled = eventually(WAIT, || async {
        s.api("GET", &format!("/webhooks/{gone}"), None)
            .await
            .map(|(_, w)| w["disabled_reason"] == json!("gone") && w["active"] == json!(false))
            .unwrap_or(false)
    })
    .await;
    assert!(disabled, "the 410 did not disable the webhook");
    assert!(
        receiver
            .wait_for(WAIT, |r| r.iter().any(|x| x.path == "ok"))
            .await,
        "the healthy webhook got nothing"
    );

    let driver = Driver::start().await;
    let c = driver.browser().await;
    c.goto(&format!("{}/console/", s.base)).await.unwrap();
    sign_in(&c, ADMIN).await;

    // The open breaker: its state, its failures and when it probes next.
    let row_down = format!("tr[data-test=webhook-row][data-id='{down}']");
    find(
        &c,
        &format!("{row_down}[data-health-loaded=true][data-breaker=open]"),
    )
    .await;
    let row = text(&c, &row_down).await;
    assert!(row.contains("open"), "{row}");
    assert!(row.contains("2 consecutive failures"), "{row}");
    find(
        &c,
        &format!("{row_down} [data-test=next-probe] time[datetime='{next_probe}']"),
    )
    .await;
    assert!(row.contains("rate limit: none"), "{row}");
    assert!(row.contains("ordering: unordered"), "{row}");
    let row_ok = format!("tr[data-test=webhook-row][data-id='{ok}']");
    find(
        &c,
        &format!("{row_ok}[data-health-loaded=true][data-breaker=closed]"),
    )
    .await;

    // The webhook the 410 disabled says why, and is re-enabled from the page.
    let row_gone = format!("tr[data-test=webhook-row][data-id='{gone}']");
    let reason = text(
        &c,
        &format!("{row_gone} td[data-test=disabled][data-reason=gone]"),
    )
    .await;
    assert!(reason.contains("410"), "{reason}");
    let toggle = find(&c, &format!("{row_gone} button[data-test=toggle-active]")).await;
    assert_eq!(toggle.text().await.unwrap(), "Re-enable");
    screenshot(&c, "webhooks-controls").await;
    toggle.click().await.unwrap();
    until(
        &c,
        "the gone webhook re-enabled",
        &format!(
            "document.querySelector(\"{row_gone} button[data-test=toggle-active]\")?.textContent === 'Disable' && \
             !document.querySelector(\"{row_gone} td[data-test=disabled]\")"
        ),
    )
    .await;
    let w = call(&s, "GET", &format!("/webhooks/{gone}"), None, 200).await;
    assert_eq!(w["active"], json!(true), "{w}");
    assert_eq!(w["disabled_reason"], Value::Null, "{w}");

    // Rate limit and ordering, set from the page.
    let panel_ok = format!("tr[data-test=controls-row][data-id='{ok}']");
    click(&c, &format!("{row_ok} button[data-test=controls]")).await;
    find(&c, &format!("#wh-rate-{ok}"))
        .await
        .send_keys("50")
        .await
        .unwrap();
    find(&c, &format!("#wh-ordering-{ok}"))
        .await
        .select_by_value("fifo")
        .await
        .unwrap();
    click(&c, &format!("{panel_ok} button[data-test=save-limits]")).await;
    until(
        &c,
        "the new rate limit and ordering on the page",
        &format!(
            "document.querySelector(\"{row_ok} [data-test=rate-limit]\")?.textContent === 'rate limit: 50/s' && \
             document.querySelector(\"{row_ok} [data-test=ordering]\")?.textContent === 'ordering: fifo'"
        ),
    )
    .await;
    let w = call(&s, "GET", &format!("/webhooks/{ok}"), None, 200).await;
    assert_eq!(w["rate_limit_per_second"], json!(50), "{w}");
    assert_eq!(w["ordering"], json!("fifo"), "{w}");
    // Emptied, the limit is removed (null), and the ordering stays.
    click(&c, &format!("{row_ok} button[data-test=controls]")).await;
    find(&c, &format!("#wh-rate-{ok}"))
        .await
        .clear()
        .await
        .unwrap();
    click(&c, &format!("{panel_ok} button[data-test=save-limits]")).await;
    until(
        &c,
        "no rate limit on the page",
        &format!(
            "document.querySelector(\"{row_ok} [data-test=rate-limit]\")?.textContent === 'rate limit: none'"
        ),
    )
    .await;
    let w = call(&s, "GET", &format!("/webhooks/{ok}"), None, 200).await;
    assert_eq!(w["rate_limit_per_second"], Value::Null, "{w}");
    assert_eq!(w["ordering"], json!("fifo"), "{w}");

    // Rotate the secret from the page with a one-hour grace period: the generated secret is
    // shown once, the previous one's expiry is on the row.
    assert!(
        c.find_all(Locator::Css(&format!(
            "{row_ok} [data-test=previous-secret]"
        )))
        .await
        .unwrap()
        .is_empty(),
        "no previous secret before the rotation"
    );
    click(&c, &format!("{row_ok} button[data-test=controls]")).await;
    let grace = find(&c, &format!("#wh-grace-{ok}")).await;
    grace.clear().await.unwrap();
    grace.send_keys("3600").await.unwrap();
    screenshot(&c, "webhook-controls-panel").await;
    let asked = unix_now();
    click(&c, &format!("{panel_ok} button[data-test=rotate]")).await;
    until(
        &c,
        "the generated secret",
        "!document.getElementById('webhook-secret').hidden && \
         document.getElementById('status').textContent.startsWith('Rotated')",
    )
    .await;
    let new_secret = text(&c, "#webhook-secret-value").await;
    assert!(new_secret.starts_with("whsec_"), "{new_secret}");
    assert_ne!(new_secret, old_secret);
    let w = call(&s, "GET", &format!("/webhooks/{ok}"), None, 200).await;
    let expires = w["previous_secret_expires_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no previous_secret_expires_at after the rotation: {w}"))
        .to_owned();
    let left = unix_of(&c, &expires).await - asked;
    assert!(
        (3590..=3610).contains(&left),
        "expires in {left} s, not one hour"
    );
    find(
        &c,
        &format!("{row_ok} [data-test=previous-secret] time[datetime='{expires}']"),
    )
    .await;
    assert!(
        !w.to_string().contains(&new_secret),
        "the webhook object never carries the secret"
    );
    screenshot(&c, "webhooks-rotated").await;

    // The rotation took: the next delivery verifies with the shown secret and still with
    // the old one.
    let before = receiver.received_on("ok").len();
    call(
        &s,
        "PATCH",
        &format!("/tenants/{tenant}"),
        Some(json!({"name": "Acme Corp"})),
        200,
    )
    .await;
    assert!(
        receiver
            .wait_for(WAIT, |r| r.iter().filter(|x| x.path == "ok").count()
                > before)
            .await,
        "no delivery after the rotation"
    );
    let r = receiver.received_on("ok").pop().unwrap();
    let h = &r.headers;
    for secret in [new_secret.as_str(), old_secret] {
        stratum_crypto::verify_standard(
            secret,
            &h["webhook-id"],
            &h["webhook-timestamp"],
            &h["webhook-signature"],
            &r.body,
            unix_now(),
            300,
        )
        .unwrap_or_else(|e| panic!("{secret:?} does not verify: {e}"));
    }

    // The secret is shown once: leaving the page drops it.
    go(&c, "#dlq").await;
    until(
        &c,
        "the secret gone from the page",
        "document.getElementById('webhook-secret').hidden && \
         document.getElementById('webhook-secret-value').textContent === ''",
    )
    .await;

    c.close().await.unwrap();
}

/// Waits until the page has finished what `script` waits for, and returns `script`'s value.
async fn value(c: &Client, script: &str) -> Value {
    c.execute(&format!("return {script};"), vec![])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_names_a_tenant_tree_health_over_time_and_a_delivery() {
    // A three-level tree (Acme > Acme EU > Acme EU Berlin), a healthy webhook on Acme EU and
    // a failing one on Acme. One change to Berlin reaches both: the healthy one gets it, the
    // failing one uses its three attempts (which also open its breaker) and dead-letters it.
    let db = TestDb::new().await;
    let receiver = Receiver::start();
    receiver.set("down", Behaviour::Status(500));
    let mut env = default_env(&db);
    for (k, v) in [
        // The breaker stays open until a delivery comes to probe it, after the cool-down:
        // the retry below.
        ("STRATUM_WEBHOOK_BREAKER_THRESHOLD", "3"),
        ("STRATUM_WEBHOOK_BREAKER_COOLDOWN_MS", "2000"),
        ("STRATUM_WEBHOOK_BREAKER_COOLDOWN_MAX_MS", "2000"),
    ] {
        env.push((k.to_owned(), v.to_owned()));
    }
    let s = Stratum::start(&["serve"], &env).await.unwrap();
    let mut parent: Option<String> = None;
    let mut tree = Vec::new();
    for (name, slug) in [
        ("Acme", "acme"),
        ("Acme EU", "acme_eu"),
        ("Acme EU Berlin", "acme_eu_berlin"),
    ] {
        let t = call(
            &s,
            "POST",
            "/tenants",
            Some(json!({"name": name, "slug": slug, "parent_id": parent})),
            201,
        )
        .await;
        let id = t["id"].as_str().unwrap().to_owned();
        parent = Some(id.clone());
        tree.push(id);
    }
    let (acme, eu, berlin) = (tree[0].clone(), tree[1].clone(), tree[2].clone());
    let mut hooks = Vec::new();
    for (tenant, path, description) in [(&acme, "down", "Acme audit sink"), (&eu, "ok", "EU CRM")] {
        let w = call(
            &s,
            "POST",
            "/webhooks",
            Some(
                json!({"url": format!("{}/{path}", receiver.base), "tenant_id": tenant,
                        "events": ["tenant.updated"], "description": description}),
            ),
            201,
        )
        .await;
        hooks.push(w["id"].as_str().unwrap().to_owned());
    }
    let (failing, healthy) = (hooks[0].clone(), hooks[1].clone());
    call(
        &s,
        "PATCH",
        &format!("/tenants/{berlin}"),
        Some(json!({"name": "Acme EU Berlin GmbH"})),
        200,
    )
    .await;
    let dead = eventually(WAIT, || async {
        s.api("GET", "/webhooks/deliveries/failed", None)
            .await
            .map(|(_, v)| v.as_array().is_some_and(|a| a.len() == 1))
            .unwrap_or(false)
    })
    .await;
    assert!(dead, "the failing webhook's delivery was not dead-lettered");
    let failed = call(&s, "GET", "/webhooks/deliveries/failed", None, 200).await;
    let delivery = failed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(failed[0]["webhook_id"], json!(failing));
    assert!(
        receiver
            .wait_for(WAIT, |r| r.iter().any(|x| x.path == "ok"))
            .await,
        "the healthy webhook got nothing"
    );
    // The preconditions of the marks and counts below, from the API.
    let health = call(&s, "GET", &format!("/webhooks/{failing}/health"), None, 200).await;
    assert_eq!(health["breaker"]["state"], json!("open"), "{health}");
    assert_eq!(health["attempts"], json!(3), "{health}");

    let driver = Driver::start().await;
    let c = driver.browser().await;
    c.goto(&format!("{}/console/", s.base)).await.unwrap();
    sign_in(&c, ADMIN).await;

    // Webhooks: tenant names where the ids were (the id on hover), and a 24-bucket chart
    // per webhook whose buckets hold its attempts.
    for (w, tenant, name, attempts) in [(&failing, &acme, "Acme", 3), (&healthy, &eu, "Acme EU", 1)]
    {
        let row = format!("tr[data-test=webhook-row][data-id='{w}']");
        find(&c, &format!("{row}[data-chart-loaded=true]")).await;
        let cell = format!("{row} td[data-test=tenant-cell] [data-test=tenant-name]");
        let shown = text(&c, &cell).await;
        assert!(shown.starts_with(name), "{shown}");
        assert_eq!(
            find(&c, &cell).await.attr("title").await.unwrap(),
            Some(tenant.clone())
        );
        let row_text = text(&c, &row).await;
        assert!(
            !row_text.contains(tenant.as_str()),
            "no bare tenant id: {row_text}"
        );
        let buckets = value(
            &c,
            &format!("document.querySelectorAll(\"{row} svg[data-test=chart-small] g[data-test=bucket]\").length"),
        )
        .await;
        assert_eq!(buckets, json!(24), "a day in hours");
        let sum = value(
            &c,
            &format!("[...document.querySelectorAll(\"{row} g[data-test=bucket]\")].reduce((n, g) => n + Number(g.dataset.attempts), 0)"),
        )
        .await;
        assert_eq!(sum, json!(attempts), "{w}");
    }
    screenshot(&c, "views-webhooks").await;

    // The failing webhook's page: a day in 15-minute buckets, the breaker's opening marked.
    click(
        &c,
        &format!("tr[data-test=webhook-row][data-id='{failing}'] a[data-test=webhook-link]"),
    )
    .await;
    find(&c, "#webhook-chart svg[data-test=chart-large]").await;
    assert_eq!(
        value(
            &c,
            "document.querySelectorAll('#webhook-chart g[data-test=bucket]').length"
        )
        .await,
        json!(96)
    );
    find(
        &c,
        "#webhook-chart line[data-test=mark][data-kind=breaker-opened]",
    )
    .await;
    assert!(text(&c, "#webhook-summary").await.contains("Acme"));
    assert_eq!(
        value(
            &c,
            "document.querySelector('nav a[aria-current=page]').dataset.page"
        )
        .await,
        json!("webhooks")
    );
    // An hour in minutes: 60 buckets.
    find(&c, "#series-range")
        .await
        .select_by_value("3600/60")
        .await
        .unwrap();
    until(
        &c,
        "an hour in minutes",
        "document.querySelectorAll('#webhook-chart g[data-test=bucket]').length === 60",
    )
    .await;
    find(
        &c,
        &format!("tr[data-test=delivery-row][data-id='{delivery}']"),
    )
    .await;
    screenshot(&c, "views-webhook").await;

    // The dead letter's page: the body as sent, three failed attempts on the timeline, and
    // a retry that delivers it once the receiver recovers.
    click(
        &c,
        &format!("a[data-test=delivery-link][href='#delivery/{failing}/{delivery}']"),
    )
    .await;
    find(&c, "#delivery-attempts li[data-test=timeline-attempt]").await;
    let body: Value = serde_json::from_str(&text(&c, "#delivery-body").await).unwrap();
    assert_eq!(body["event"], json!("tenant.updated"));
    assert_eq!(body["tenant_id"], json!(berlin));
    assert_eq!(body["data"]["name"], json!("Acme EU Berlin GmbH"));
    assert_eq!(body["id"], failed[0]["event"]["id"]);
    let summary = text(&c, "#delivery-summary").await;
    assert!(summary.contains("Acme audit sink"), "{summary}");
    assert!(summary.contains("Acme EU Berlin GmbH"), "{summary}");
    assert_eq!(
        value(&c, "document.querySelectorAll('#delivery-attempts li[data-test=timeline-attempt][data-status=\"500\"]').length").await,
        json!(3)
    );
    assert_eq!(
        value(&c, "document.getElementById('delivery-retry').hidden").await,
        json!(false),
        "a dead letter can be retried"
    );
    screenshot(&c, "views-delivery").await;
    receiver.set("down", Behaviour::Ok);
    click(&c, "#delivery-retry").await;
    until(
        &c,
        "the retry is queued",
        "document.getElementById('status').textContent.includes('queued again')",
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        if value(
            &c,
            "document.querySelector('[data-test=delivery-status]')?.textContent",
        )
        .await
            == json!("success")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retried delivery did not succeed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        click(&c, "#delivery-refresh").await;
    }
    until(
        &c,
        "a fourth attempt, answered 200",
        "document.querySelectorAll('#delivery-attempts li[data-test=timeline-attempt][data-status=\"200\"]').length === 1 && \
         document.getElementById('delivery-retry').hidden",
    )
    .await;

    // The tenant tree: three levels, each tenant's own webhooks and those it gets through
    // an ancestor.
    click(&c, "a[href='#tree']").await;
    find(&c, "ul[data-test=tree]").await;
    let li = |id: &str| format!("li[data-test=tree-tenant][data-id='{id}']");
    find(
        &c,
        &format!("{} > ul > {} > ul > {}", li(&acme), li(&eu), li(&berlin)),
    )
    .await;
    let own =
        |t: &str, w: &str| format!("{} > .hooks a[data-test=own-webhook][data-id='{w}']", li(t));
    let through = |t: &str, w: &str| {
        format!(
            "{} > .hooks a[data-test=inherited-webhook][data-id='{w}']",
            li(t)
        )
    };
    find(&c, &own(&acme, &failing)).await;
    find(&c, &own(&eu, &healthy)).await;
    assert!(text(&c, &through(&eu, &failing))
        .await
        .contains("from Acme"));
    find(&c, &through(&berlin, &failing)).await;
    assert!(text(&c, &through(&berlin, &healthy))
        .await
        .contains("from Acme EU"));
    assert_eq!(
        value(
            &c,
            &format!(
                "document.querySelectorAll(\"{} > .hooks a\").length",
                li(&acme)
            )
        )
        .await,
        json!(1),
        "the root gets nothing through an ancestor"
    );
    assert_eq!(
        value(
            &c,
            "document.querySelector('nav a[aria-current=page]').dataset.page"
        )
        .await,
        json!("tree")
    );
    screenshot(&c, "views-tree").await;

    // The audit log: tenant names in the Tenant and Resource columns.
    go(&c, "#audit").await;
    find(&c, "#audit-resource")
        .await
        .send_keys("tenant")
        .await
        .unwrap();
    click(&c, "#audit-search").await;
    until(
        &c,
        "four tenant entries",
        "document.querySelectorAll('tr[data-test=audit-row]').length === 4",
    )
    .await;
    let cells = value(
        &c,
        "[...document.querySelectorAll('td[data-test=audit-tenant], td[data-test=audit-resource]')].map((td) => td.textContent).join(' | ')",
    )
    .await;
    let cells = cells.as_str().unwrap();
    for id in [&acme, &eu, &berlin] {
        assert!(!cells.contains(id.as_str()), "no bare tenant id: {cells}");
    }
    assert!(cells.contains("Acme EU Berlin GmbH"), "{cells}");
    screenshot(&c, "views-audit").await;

    // The other pages, for their screenshots.
    for page in ["dlq", "replay", "consent"] {
        go(&c, &format!("#{page}")).await;
        until(
            &c,
            page,
            &format!("!document.getElementById('page-{page}').hidden"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        screenshot(&c, &format!("views-{page}")).await;
    }

    // Nothing the page loaded came from another origin (the document, its files, the
    // favicon and every API call).
    let origin = s.base.trim_end_matches('/').to_owned();
    let urls = value(
        &c,
        "performance.getEntries().map((e) => e.name).filter((n) => /^[a-z]+:/.test(n))",
    )
    .await;
    let urls: Vec<String> = serde_json::from_value(urls).unwrap();
    assert!(urls.len() > 10, "{urls:?}");
    for u in &urls {
        assert!(
            u.starts_with(&format!("{origin}/")),
            "{u} is not from {origin}"
        );
    }
    c.close().await.unwrap();
}
