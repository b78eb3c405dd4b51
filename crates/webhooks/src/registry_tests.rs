//! Unit tests of [`WebhookService`] against mocked ports: validation, visibility, the
//! secret's life (generated, encrypted, never journaled), the test delivery's signing and
//! the [`Journal`] each mutation hands to its port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mockall::predicate::eq;
use serde_json::{json, Value};
use stratum_core::directory::MockTenantDirectory;
use stratum_core::testing::{self, fixed_clock, put_in, slot, taken, Slot};
use stratum_core::TenantEntry;
use stratum_core::{
    Caller, Clock, EventCatalogue, EventType, Journal, Limit, Precondition, RequestMeta, Scope,
    StoreError, TenantPath, REDACTED,
};
use stratum_crypto::{signing_key_bytes, verify_standard, verify_stratum, Keyring, SharedKeyring};
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::*;

const NOW: OffsetDateTime = datetime!(2026-02-01 12:00:00 UTC);
const EARLIER: OffsetDateTime = datetime!(2026-01-01 08:00:00 UTC);
const MASTER: &str = "registry-test-master-key-0123456789abcdef";
const URL: &str = "https://hooks.example.com/stratum";
const OTHER_URL: &str = "https://other.example.net/in?x=1";
const GIVEN_SECRET: &str = "a-given-secret-of-32-characters!";
const TOLERANCE: i64 = 300;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

fn clock() -> Arc<dyn Clock> {
    fixed_clock(NOW)
}

fn keyring() -> Keyring {
    Keyring::from_env_values(MASTER, None).unwrap()
}

fn meta() -> RequestMeta {
    testing::meta("req-wh-42", "198.51.100.7", "webhook-tests/1.0")
}

/// A global API key with write scope (what webhook management asks for); also returns the
/// key id the journal must name.
fn global_caller() -> (Caller, Uuid) {
    testing::global_caller(Scope::Write, meta())
}

/// A global API key with admin scope.
fn admin() -> Caller {
    testing::global_caller(Scope::Admin, meta()).0
}

/// A write key bound to `t`'s subtree.
fn scoped_caller(t: &Tenant) -> Caller {
    testing::scoped_caller(&t.ancestry_path, Scope::Write, meta())
}

/// The events the embedding application registers in these tests.
const SUBSCRIBABLE: [&str; 9] = [
    "tenant.created",
    "tenant.updated",
    "tenant.deleted",
    "tenant.moved",
    "config.updated",
    "config.deleted",
    "permission.created",
    "permission.updated",
    "permission.deleted",
];

fn catalogue() -> EventCatalogue {
    let mut c = EventCatalogue::new();
    for name in SUBSCRIBABLE {
        c.register(EventType::parse(name).unwrap(), "an event of the tests");
    }
    c
}

fn webhook_url(raw: &str) -> WebhookUrl {
    WebhookUrl::parse(raw, true).unwrap()
}

fn event_types(names: &[&str]) -> Vec<EventType> {
    names.iter().map(|n| EventType::parse(n).unwrap()).collect()
}

/// A tenant as the directory knows it.
#[derive(Debug, Clone)]
struct Tenant {
    id: Uuid,
    ancestry_path: TenantPath,
    active: bool,
}

fn tenant_at(path: TenantPath, _parent_id: Option<Uuid>) -> Tenant {
    Tenant {
        id: path.leaf().unwrap(),
        ancestry_path: path,
        active: true,
    }
}

fn root() -> Tenant {
    tenant_at(TenantPath::root(Uuid::now_v7()), None)
}

fn child(parent: &Tenant) -> Tenant {
    tenant_at(parent.ancestry_path.child(Uuid::now_v7()), Some(parent.id))
}

/// A tenant directory that knows exactly these tenants.
fn tenant_store(known: &[&Tenant]) -> MockTenantDirectory {
    let map: HashMap<Uuid, TenantEntry> = known
        .iter()
        .map(|t| {
            let entry = TenantEntry {
                id: t.id,
                path: t.ancestry_path.clone(),
                active: t.active,
            };
            (t.id, entry)
        })
        .collect();
    let mut dir = MockTenantDirectory::new();
    dir.expect_find()
        .returning(move |id| Ok(map.get(&id).cloned()));
    dir
}

fn webhook_of(tenant_id: Option<Uuid>) -> Webhook {
    Webhook {
        id: Uuid::now_v7(),
        tenant_id,
        url: webhook_url(URL),
        events: event_types(&["tenant.created", "config.updated"]),
        active: true,
        description: Some("orders sync".to_owned()),
        created_at: EARLIER,
        updated_at: EARLIER,
        rate_limit_per_second: None,
        ordering: crate::DeliveryOrdering::Unordered,
        disabled_reason: None,
        previous_secret_expires_at: None,
        version: 1,
    }
}

/// A webhook of `t` as the store returns it, with `t`'s path.
fn owned_by(t: &Tenant) -> (Webhook, Option<TenantPath>) {
    (webhook_of(Some(t.id)), Some(t.ancestry_path.clone()))
}

fn delivery_of(webhook: &Webhook, status: DeliveryStatus) -> Delivery {
    Delivery {
        id: Uuid::now_v7(),
        webhook_id: webhook.id,
        event_id: Uuid::now_v7(),
        event_type: "tenant.created".to_owned(),
        tenant_id: webhook.tenant_id,
        status,
        attempts: 8,
        next_retry_at: None,
        last_error: Some("receiver answered 503".to_owned()),
        response_code: Some(503),
        created_at: EARLIER,
        completed_at: Some(EARLIER),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn new_webhook(tenant_id: Option<Uuid>) -> NewWebhook {
    NewWebhook {
        url: URL.to_owned(),
        tenant_id,
        events: strings(&["tenant.created", "config.updated"]),
        secret: None,
        description: Some("orders sync".to_owned()),
        ..NewWebhook::default()
    }
}

/// A guard that allows every host and counts nothing.
fn guard_allows() -> MockUrlGuard {
    let mut guard = MockUrlGuard::new();
    guard.expect_check().returning(|_| Ok(()));
    guard
}

/// The service's ports, each a mock that fails the test on any call not expected.
struct Ports {
    tenants: MockTenantDirectory,
    webhooks: MockWebhookStore,
    deliveries: MockDeliveryStore,
    guard: MockUrlGuard,
    client: MockDeliveryClient,
    config: RegistryConfig,
}

impl Ports {
    fn new(known: &[&Tenant]) -> Self {
        Self {
            tenants: tenant_store(known),
            webhooks: MockWebhookStore::new(),
            deliveries: MockDeliveryStore::new(),
            guard: MockUrlGuard::new(),
            client: MockDeliveryClient::new(),
            config: RegistryConfig {
                allow_http: false,
                events: catalogue(),
            },
        }
    }

    /// Also answers `webhooks.get(w.id)` with `w` and `path`.
    fn with_webhook(mut self, w: &Webhook, path: Option<TenantPath>) -> Self {
        let found = (w.clone(), path);
        self.webhooks
            .expect_get()
            .with(eq(w.id))
            .returning(move |_| Ok(Some(found.clone())));
        self
    }

    /// Rejects every mutation of the webhooks table.
    fn no_webhook_writes(mut self) -> Self {
        self.webhooks.expect_create().never();
        self.webhooks.expect_update().never();
        self.webhooks.expect_delete().never();
        self.webhooks.expect_journal().never();
        self
    }

    fn service(self) -> WebhookService {
        WebhookService::new(
            Arc::new(self.tenants),
            Arc::new(self.webhooks),
            Arc::new(self.deliveries),
            Arc::new(self.guard),
            Arc::new(self.client),
            SharedKeyring::new(keyring()),
            clock(),
            self.config,
        )
    }
}

/// Everything in a journal that could leak a value, as one string.
fn journal_text(j: &Journal) -> String {
    let mut s = format!("{j:?}");
    for v in [&j.before, &j.after].into_iter().flatten() {
        s.push_str(&v.to_string());
    }
    if let Some(e) = &j.event {
        s.push_str(&e.payload.to_string());
    }
    s
}

/// The webhook as the journal must show it: its JSON with the secret redacted.
fn redacted_state(w: &Webhook) -> Value {
    let mut v = serde_json::to_value(w).unwrap();
    v["secret"] = json!(REDACTED);
    v
}

fn assert_validation(result: Result<impl std::fmt::Debug, WebhookError>, expected_field: &str) {
    match result {
        Err(WebhookError::Validation { field, .. }) => assert_eq!(field, expected_field),
        other => panic!("expected a validation error on {expected_field}, got {other:?}"),
    }
}

fn header<'a>(request: &'a OutgoingRequest, name: &str) -> &'a str {
    let found: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {name} header in {:?}",
        request.headers
    );
    found[0]
}

// ---------------------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_without_secret_generates_one_and_stores_only_its_encryption() {
    let r = root();
    let t = child(&r);
    let caller = scoped_caller(&r);
    let seen: Slot<(Webhook, String, Journal)> = slot();
    let asked: Slot<String> = slot();
    let mut ports = Ports::new(&[&r, &t]);
    let sink = Arc::clone(&asked);
    ports.guard.expect_check().times(1).returning(move |u| {
        put_in(&sink, u.as_str().to_owned());
        Ok(())
    });
    let sink = Arc::clone(&seen);
    ports
        .webhooks
        .expect_create()
        .times(1)
        .returning(move |w, s, j| {
            put_in(&sink, (w, s, j));
            Ok(())
        });

    let (created, secret) = ports
        .service()
        .create(&caller, new_webhook(Some(t.id)))
        .await
        .unwrap();

    assert_eq!(taken(&asked), URL);
    let secret = secret.expect("a generated secret is returned once");
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(signing_key_bytes(&secret).unwrap().len(), 32);

    let (stored, envelope, journal) = taken(&seen);
    assert_eq!(stored, created);
    assert_eq!(stored.tenant_id, Some(t.id));
    assert_eq!(stored.url, URL);
    assert_eq!(
        stored.events,
        strings(&["tenant.created", "config.updated"])
    );
    assert!(stored.active);
    assert_eq!(stored.description.as_deref(), Some("orders sync"));
    assert_eq!((stored.created_at, stored.updated_at), (NOW, NOW));

    assert!(!envelope.contains(&secret));
    assert!(!envelope.contains(&secret["whsec_".len()..]));
    assert_eq!(keyring().decrypt_str(&envelope).unwrap(), secret);

    assert_eq!(journal.action, "webhook.created");
    assert_eq!(journal.resource_type, "webhook");
    assert_eq!(journal.resource_id, Some(stored.id.to_string()));
    assert_eq!(journal.tenant_id, Some(t.id));
    assert_eq!(journal.actor_id, caller.actor.id());
    assert_eq!(journal.actor_type, "api_key");
    assert_eq!(journal.meta, meta());
    assert_eq!(journal.before, None);
    let after = journal.after.clone().expect("an after-state");
    assert_eq!(after["secret"], json!(REDACTED));
    assert_eq!(after, redacted_state(&stored));
    assert_eq!(after["id"], json!(stored.id.to_string()));
    assert_eq!(after["url"], json!(URL));
    assert!(journal.event.is_none(), "webhooks are not events");
    let text = journal_text(&journal);
    assert!(!text.contains(&secret), "the journal leaks the secret");
    assert!(!text.contains(&secret["whsec_".len()..]));
    let shown = serde_json::to_string(&created).unwrap();
    // The only field that names a secret is the previous secret's expiry, never a value.
    let fields = serde_json::to_value(&created).unwrap();
    assert!(
        !shown.contains(&secret)
            && fields
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.contains("secret") || k == "previous_secret_expires_at"),
        "{shown}"
    );
}

#[tokio::test]
async fn each_generated_secret_is_new() {
    let mut ports = Ports::new(&[]);
    ports.guard = guard_allows();
    ports.webhooks.expect_create().returning(|_, _, _| Ok(()));
    let svc = ports.service();
    let (_, a) = svc.create(&admin(), new_webhook(None)).await.unwrap();
    let (_, b) = svc.create(&admin(), new_webhook(None)).await.unwrap();
    assert_ne!(a.unwrap(), b.unwrap());
}

#[tokio::test]
async fn create_with_a_given_secret_returns_none_and_stores_its_encryption() {
    let (caller, key_id) = global_caller();
    let seen: Slot<(Webhook, String, Journal)> = slot();
    let mut ports = Ports::new(&[]);
    ports.guard = guard_allows();
    let sink = Arc::clone(&seen);
    ports
        .webhooks
        .expect_create()
        .times(1)
        .returning(move |w, s, j| {
            put_in(&sink, (w, s, j));
            Ok(())
        });
    let input = NewWebhook {
        secret: Some(GIVEN_SECRET.to_owned()),
        description: None,
        ..new_webhook(None)
    };

    let (created, secret) = ports.service().create(&caller, input).await.unwrap();

    assert_eq!(secret, None, "a secret the client chose is not echoed back");
    let (stored, envelope, journal) = taken(&seen);
    assert_eq!(stored, created);
    assert_eq!(stored.tenant_id, None);
    assert_eq!(stored.description, None);
    assert_ne!(envelope, GIVEN_SECRET);
    assert_eq!(keyring().decrypt_str(&envelope).unwrap(), GIVEN_SECRET);
    assert_eq!(journal.action, "webhook.created");
    assert_eq!(journal.actor_id, key_id.to_string());
    assert_eq!(journal.tenant_id, None);
    assert_eq!(journal.after, Some(redacted_state(&stored)));
    assert!(journal.event.is_none());
    assert!(!journal_text(&journal).contains(GIVEN_SECRET));
}

#[tokio::test]
async fn create_rejects_a_url_the_guard_blocks_without_storing() {
    let mut ports = Ports::new(&[]).no_webhook_writes();
    ports
        .guard
        .expect_check()
        .times(1)
        .returning(|_| Err("resolves to 10.0.0.8, a private address".to_owned()));

    let err = ports
        .service()
        .create(&admin(), new_webhook(None))
        .await
        .unwrap_err();

    match err {
        WebhookError::UrlInvalid(reason) => assert!(reason.contains("10.0.0.8"), "{reason}"),
        other => panic!("expected UrlInvalid, got {other:?}"),
    }
}

#[tokio::test]
async fn create_rejects_malformed_urls_without_asking_the_guard() {
    for url in [
        "http://hooks.example.com/stratum",
        "ftp://hooks.example.com/",
        "hooks.example.com/stratum",
        "https://user:pw@hooks.example.com/",
        "https://hooks.example.com/#frag",
        "",
    ] {
        let mut ports = Ports::new(&[]).no_webhook_writes();
        ports.guard.expect_check().never();
        let input = NewWebhook {
            url: url.to_owned(),
            ..new_webhook(None)
        };
        let result = ports.service().create(&admin(), input).await;
        assert!(
            matches!(result, Err(WebhookError::UrlInvalid(_))),
            "{url}: {result:?}"
        );
    }
}

#[tokio::test]
async fn http_is_accepted_only_with_allow_http_and_still_goes_through_the_guard() {
    let mut ports = Ports::new(&[]);
    ports.config = RegistryConfig {
        allow_http: true,
        events: catalogue(),
    };
    ports
        .guard
        .expect_check()
        .withf(|u| u.as_str() == "http://127.0.0.1:9000/hook")
        .times(1)
        .returning(|_| Ok(()));
    ports
        .webhooks
        .expect_create()
        .times(1)
        .returning(|_, _, _| Ok(()));
    let input = NewWebhook {
        url: "http://127.0.0.1:9000/hook".to_owned(),
        ..new_webhook(None)
    };

    let (created, _) = ports.service().create(&admin(), input).await.unwrap();

    assert_eq!(created.url, "http://127.0.0.1:9000/hook");
}

#[tokio::test]
async fn create_rejects_invalid_event_lists() {
    let cases: [&[&str]; 5] = [
        &[],
        &["tenant.created", "tenant.created"],
        &["tenant.created", "tenant.exploded"],
        &["webhook.test"],
        &["Tenant.Created"],
    ];
    for events in cases {
        let mut ports = Ports::new(&[]).no_webhook_writes();
        ports.guard = guard_allows();
        let input = NewWebhook {
            events: strings(events),
            ..new_webhook(None)
        };
        let result = ports.service().create(&admin(), input).await;
        assert_validation(result, "events");
    }
}

#[tokio::test]
async fn all_nine_events_can_be_subscribed_in_the_given_order() {
    let seen: Slot<Webhook> = slot();
    let mut ports = Ports::new(&[]);
    ports.guard = guard_allows();
    let sink = Arc::clone(&seen);
    ports
        .webhooks
        .expect_create()
        .times(1)
        .returning(move |w, _, _| {
            put_in(&sink, w);
            Ok(())
        });
    let mut names: Vec<String> = SUBSCRIBABLE.iter().map(|e| (*e).to_owned()).collect();
    names.reverse();
    let input = NewWebhook {
        events: names.clone(),
        ..new_webhook(None)
    };

    ports.service().create(&admin(), input).await.unwrap();

    assert_eq!(taken(&seen).events, names);
}

#[tokio::test]
async fn create_checks_the_secret() {
    let rejected = [
        "x".repeat(15),
        "x".repeat(256),
        "é".repeat(256),
        // whsec_ must be followed by base64.
        "whsec_not*base64*at*all!!".to_owned(),
        "whsec_@@@@@@@@@@@@@@@@".to_owned(),
    ];
    for secret in rejected {
        let mut ports = Ports::new(&[]).no_webhook_writes();
        ports.guard = guard_allows();
        let input = NewWebhook {
            secret: Some(secret.clone()),
            ..new_webhook(None)
        };
        let result = ports.service().create(&admin(), input).await;
        assert_validation(result, "secret");
    }
}

#[tokio::test]
async fn secrets_of_16_to_255_characters_are_accepted() {
    let accepted = [
        "x".repeat(16),
        "x".repeat(255),
        // Characters, not bytes: 255 two-byte characters are 510 bytes.
        "é".repeat(255),
        format!("whsec_{}", "QUJD".repeat(8)),
    ];
    for secret in accepted {
        let seen: Slot<String> = slot();
        let mut ports = Ports::new(&[]);
        ports.guard = guard_allows();
        let sink = Arc::clone(&seen);
        ports
            .webhooks
            .expect_create()
            .times(1)
            .returning(move |_, s, _| {
                put_in(&sink, s);
                Ok(())
            });
        let input = NewWebhook {
            secret: Some(secret.clone()),
            ..new_webhook(None)
        };
        ports.service().create(&admin(), input).await.unwrap();
        assert_eq!(keyring().decrypt_str(&taken(&seen)).unwrap(), secret);
    }
}

#[tokio::test]
async fn create_checks_the_description_length() {
    let mut ports = Ports::new(&[]).no_webhook_writes();
    ports.guard = guard_allows();
    let input = NewWebhook {
        description: Some("d".repeat(256)),
        ..new_webhook(None)
    };
    assert_validation(ports.service().create(&admin(), input).await, "description");

    let mut ports = Ports::new(&[]);
    ports.guard = guard_allows();
    ports
        .webhooks
        .expect_create()
        .times(1)
        .returning(|_, _, _| Ok(()));
    let input = NewWebhook {
        description: Some("é".repeat(255)),
        ..new_webhook(None)
    };
    let (created, _) = ports.service().create(&admin(), input).await.unwrap();
    assert_eq!(created.description.map(|d| d.chars().count()), Some(255));
}

#[tokio::test]
async fn create_refuses_nul_in_the_description() {
    for d in ["\u{0}", "orders\u{0}sync"] {
        let mut ports = Ports::new(&[]).no_webhook_writes();
        ports.guard = guard_allows();
        let input = NewWebhook {
            description: Some(d.to_owned()),
            ..new_webhook(None)
        };
        assert_validation(ports.service().create(&admin(), input).await, "description");
    }
}

#[tokio::test]
async fn a_scoped_caller_cannot_create_a_global_webhook() {
    let r = root();
    let mut ports = Ports::new(&[&r]).no_webhook_writes();
    ports.guard = guard_allows();

    let err = ports
        .service()
        .create(&scoped_caller(&r), new_webhook(None))
        .await
        .unwrap_err();

    assert!(matches!(err, WebhookError::Forbidden(_)), "{err:?}");
}

#[tokio::test]
async fn create_for_a_tenant_the_caller_cannot_use_is_tenant_not_found() {
    let r = root();
    let outsider = root();
    let mut archived = child(&r);
    archived.active = false;
    let cases = [
        (scoped_caller(&r), outsider.id, "another subtree"),
        (scoped_caller(&r), Uuid::now_v7(), "unknown"),
        (admin(), Uuid::now_v7(), "unknown to a global key"),
        (scoped_caller(&r), archived.id, "archived"),
        (admin(), archived.id, "archived, global key"),
    ];
    for (caller, tenant_id, case) in cases {
        let mut ports = Ports::new(&[&r, &outsider, &archived]).no_webhook_writes();
        ports.guard = guard_allows();
        let result = ports
            .service()
            .create(&caller, new_webhook(Some(tenant_id)))
            .await;
        assert!(
            matches!(result, Err(WebhookError::TenantNotFound)),
            "{case}: {result:?}"
        );
    }
}

#[tokio::test]
async fn a_storage_failure_looking_up_the_tenant_is_not_tenant_not_found() {
    let mut ports = Ports::new(&[]).no_webhook_writes();
    let mut tenants = MockTenantDirectory::new();
    tenants
        .expect_find()
        .returning(|_| Err(StoreError::Unavailable));
    ports.tenants = tenants;
    ports.guard = guard_allows();

    let svc = ports.service();

    let created = svc
        .create(&admin(), new_webhook(Some(Uuid::now_v7())))
        .await;
    assert!(
        matches!(created, Err(WebhookError::Store(StoreError::Unavailable))),
        "create: {created:?}"
    );
    let listed = svc.list(&admin(), Some(Uuid::now_v7())).await;
    assert!(
        matches!(listed, Err(WebhookError::Store(StoreError::Unavailable))),
        "list: {listed:?}"
    );
}

#[tokio::test]
async fn a_store_error_on_create_is_passed_on() {
    let mut ports = Ports::new(&[]);
    ports.guard = guard_allows();
    ports
        .webhooks
        .expect_create()
        .returning(|_, _, _| Err(WebhookError::TenantNotFound));
    let r = root();
    ports.tenants = tenant_store(&[&r]);

    let result = ports
        .service()
        .create(&admin(), new_webhook(Some(r.id)))
        .await;

    assert!(matches!(result, Err(WebhookError::TenantNotFound)));
}

// ---------------------------------------------------------------------------------------
// get / list / visibility
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn get_shows_a_webhook_only_to_callers_who_can_see_its_tenant() {
    let r = root();
    let below = child(&r);
    let outsider = root();
    let global = webhook_of(None);
    let (own, own_path) = owned_by(&below);
    let (foreign, foreign_path) = owned_by(&outsider);
    let scoped = scoped_caller(&r);
    let cases = [
        (&scoped, &global, None, false),
        (&scoped, &foreign, foreign_path.clone(), false),
        (&scoped, &own, own_path.clone(), true),
        (&scoped_caller(&below), &own, own_path.clone(), true),
        // A key of a descendant does not see its ancestor's webhooks.
        (
            &scoped_caller(&below),
            &webhook_of(Some(r.id)),
            Some(r.ancestry_path.clone()),
            false,
        ),
        (&admin(), &global, None, true),
        (&admin(), &foreign, foreign_path.clone(), true),
    ];
    for (i, (caller, w, path, visible)) in cases.into_iter().enumerate() {
        let svc = Ports::new(&[]).with_webhook(w, path).service();
        let result = svc.get(caller, w.id).await;
        if visible {
            assert_eq!(result.unwrap(), *w, "case {i}");
        } else {
            assert!(
                matches!(result, Err(WebhookError::NotFound)),
                "case {i}: {result:?}"
            );
        }
    }
}

#[tokio::test]
async fn get_of_an_unknown_webhook_is_not_found() {
    let mut ports = Ports::new(&[]);
    ports.webhooks.expect_get().returning(|_| Ok(None));
    let result = ports.service().get(&admin(), Uuid::now_v7()).await;
    assert!(matches!(result, Err(WebhookError::NotFound)), "{result:?}");
}

#[tokio::test]
async fn list_passes_the_callers_subtree_and_checks_the_tenant() {
    let r = root();
    let below = child(&r);
    let outsider = root();

    let mut ports = Ports::new(&[&r, &below, &outsider]);
    let listed = vec![webhook_of(Some(below.id))];
    let answer = listed.clone();
    ports
        .webhooks
        .expect_list()
        .with(eq(Some(r.ancestry_path.clone())), eq(Some(below.id)))
        .times(1)
        .returning(move |_, _| Ok(answer.clone()));
    let svc = ports.service();
    assert_eq!(
        svc.list(&scoped_caller(&r), Some(below.id)).await.unwrap(),
        listed
    );
    let result = svc.list(&scoped_caller(&r), Some(outsider.id)).await;
    assert!(
        matches!(result, Err(WebhookError::TenantNotFound)),
        "{result:?}"
    );

    let mut ports = Ports::new(&[]);
    ports
        .webhooks
        .expect_list()
        .with(eq(None), eq(None))
        .times(1)
        .returning(|_, _| Ok(Vec::new()));
    assert!(ports
        .service()
        .list(&admin(), None)
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------
// update
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn update_and_delete_of_an_invisible_webhook_are_not_found() {
    let r = root();
    let outsider = root();
    let global = webhook_of(None);
    let (foreign, foreign_path) = owned_by(&outsider);
    for (w, path) in [(&global, None), (&foreign, foreign_path)] {
        let mut ports = Ports::new(&[]).with_webhook(w, path).no_webhook_writes();
        ports.guard.expect_check().never();
        let svc = ports.service();
        let caller = scoped_caller(&r);
        let patch = WebhookPatch {
            active: Some(false),
            secret: Some(GIVEN_SECRET.to_owned()),
            ..WebhookPatch::default()
        };
        let updated = svc.update(&caller, w.id, patch, Precondition::Any).await;
        assert!(
            matches!(updated, Err(WebhookError::NotFound)),
            "{updated:?}"
        );
        let deleted = svc.delete(&caller, w.id, Precondition::Any).await;
        assert!(
            matches!(deleted, Err(WebhookError::NotFound)),
            "{deleted:?}"
        );
    }
}

#[tokio::test]
async fn update_with_a_new_secret_stores_its_encryption_and_journals_only_that_it_changed() {
    let r = root();
    let (before, path) = owned_by(&r);
    let caller = scoped_caller(&r);
    let seen: Slot<(Webhook, i64, Option<String>, Journal)> = slot();
    let mut ports = Ports::new(&[]).with_webhook(&before, path);
    let sink = Arc::clone(&seen);
    ports
        .webhooks
        .expect_update()
        .times(1)
        .returning(move |w, e, s, j| {
            put_in(&sink, (w, e, s, j));
            Ok(e + 1)
        });
    let new_secret = format!("whsec_{}", "c2VjcmV0".repeat(4));
    let patch = WebhookPatch {
        secret: Some(new_secret.clone()),
        ..WebhookPatch::default()
    };

    let updated = ports
        .service()
        .update(&caller, before.id, patch, Precondition::Any)
        .await
        .unwrap();

    let (stored, expected, envelope, journal) = taken(&seen);
    assert_eq!(
        expected, before.version,
        "the write expects the version it read"
    );
    assert_eq!(updated.version, before.version + 1);
    assert_eq!(
        Webhook {
            version: updated.version,
            ..stored.clone()
        },
        updated
    );
    assert_eq!(
        Webhook {
            updated_at: before.updated_at,
            ..stored.clone()
        },
        before,
        "only updated_at changes"
    );
    assert_eq!(stored.updated_at, NOW);
    let envelope = envelope.expect("the new secret, encrypted");
    assert!(!envelope.contains(&new_secret));
    assert_eq!(keyring().decrypt_str(&envelope).unwrap(), new_secret);

    assert_eq!(journal.action, "webhook.updated");
    assert_eq!(journal.resource_type, "webhook");
    assert_eq!(journal.resource_id, Some(before.id.to_string()));
    assert_eq!(journal.tenant_id, Some(r.id));
    assert_eq!(journal.actor_id, caller.actor.id());
    assert_eq!(journal.before, Some(redacted_state(&before)));
    let after = journal.after.clone().expect("an after-state");
    assert_eq!(after["secret_changed"], json!(true));
    assert_eq!(after["secret"], json!(REDACTED));
    assert_eq!(after["updated_at"], redacted_state(&stored)["updated_at"]);
    assert!(journal.event.is_none());
    let text = journal_text(&journal);
    assert!(!text.contains(&new_secret), "the journal leaks the secret");
    assert!(!text.contains("c2VjcmV0"));
}

#[tokio::test]
async fn update_of_fields_goes_through_the_guard_and_keeps_the_secret() {
    let (before, _) = owned_by(&root());
    let seen: Slot<(Webhook, i64, Option<String>, Journal)> = slot();
    let mut ports = Ports::new(&[]).with_webhook(&before, None);
    ports
        .guard
        .expect_check()
        .withf(|u| u.as_str() == OTHER_URL)
        .times(1)
        .returning(|_| Ok(()));
    let sink = Arc::clone(&seen);
    ports
        .webhooks
        .expect_update()
        .times(1)
        .returning(move |w, e, s, j| {
            put_in(&sink, (w, e, s, j));
            Ok(e + 1)
        });
    let patch = WebhookPatch {
        url: Some(OTHER_URL.to_owned()),
        events: Some(strings(&["permission.deleted"])),
        active: Some(false),
        description: Some(None),
        secret: None,
        ..WebhookPatch::default()
    };

    let updated = ports
        .service()
        .update(&admin(), before.id, patch, Precondition::Any)
        .await
        .unwrap();

    let (stored, expected, envelope, journal) = taken(&seen);
    assert_eq!(expected, before.version);
    assert_eq!(updated.version, before.version + 1);
    assert_eq!(
        Webhook {
            version: updated.version,
            ..stored.clone()
        },
        updated
    );
    assert_eq!(stored.id, before.id);
    assert_eq!(stored.tenant_id, before.tenant_id);
    assert_eq!(stored.url, OTHER_URL);
    assert_eq!(stored.events, strings(&["permission.deleted"]));
    assert!(!stored.active);
    assert_eq!(stored.description, None);
    assert_eq!((stored.created_at, stored.updated_at), (EARLIER, NOW));
    assert_eq!(envelope, None, "the stored secret is kept");
    let mut expected_after = redacted_state(&stored);
    expected_after["secret_changed"] = json!(false);
    assert_eq!(journal.after, Some(expected_after));
    assert_eq!(journal.before, Some(redacted_state(&before)));
}

#[tokio::test]
async fn a_patch_that_changes_nothing_writes_nothing() {
    let (before, path) = owned_by(&root());
    let same = WebhookPatch {
        events: Some(before.events.iter().map(|e| e.to_string()).collect()),
        active: Some(before.active),
        description: Some(before.description.clone()),
        ..WebhookPatch::default()
    };
    for patch in [WebhookPatch::default(), same] {
        let mut ports = Ports::new(&[])
            .with_webhook(&before, path.clone())
            .no_webhook_writes();
        ports.guard.expect_check().never();
        let result = ports
            .service()
            .update(&admin(), before.id, patch, Precondition::Any)
            .await
            .unwrap();
        assert_eq!(result, before, "updated_at is not bumped");
    }
}

#[tokio::test]
async fn update_to_a_blocked_url_is_rejected_without_storing() {
    let (before, path) = owned_by(&root());
    let mut ports = Ports::new(&[])
        .with_webhook(&before, path)
        .no_webhook_writes();
    ports
        .guard
        .expect_check()
        .times(1)
        .returning(|_| Err("resolves to 169.254.169.254".to_owned()));
    let patch = WebhookPatch {
        url: Some(OTHER_URL.to_owned()),
        ..WebhookPatch::default()
    };

    let result = ports
        .service()
        .update(&admin(), before.id, patch, Precondition::Any)
        .await;

    assert!(
        matches!(&result, Err(WebhookError::UrlInvalid(r)) if r.contains("169.254.169.254")),
        "{result:?}"
    );
}

#[tokio::test]
async fn update_validates_what_it_changes() {
    let (before, path) = owned_by(&root());
    let cases = [
        (
            WebhookPatch {
                events: Some(Vec::new()),
                ..WebhookPatch::default()
            },
            "events",
        ),
        (
            WebhookPatch {
                events: Some(strings(&["webhook.test"])),
                ..WebhookPatch::default()
            },
            "events",
        ),
        (
            WebhookPatch {
                secret: Some("x".repeat(15)),
                ..WebhookPatch::default()
            },
            "secret",
        ),
        (
            WebhookPatch {
                secret: Some("whsec_!!!!!!!!!!!!!!!!".to_owned()),
                ..WebhookPatch::default()
            },
            "secret",
        ),
        (
            WebhookPatch {
                description: Some(Some("d".repeat(256))),
                ..WebhookPatch::default()
            },
            "description",
        ),
    ];
    for (patch, field) in cases {
        let ports = Ports::new(&[])
            .with_webhook(&before, path.clone())
            .no_webhook_writes();
        let result = ports
            .service()
            .update(&admin(), before.id, patch, Precondition::Any)
            .await;
        assert_validation(result, field);
    }
}

// ---------------------------------------------------------------------------------------
// delete
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_journals_the_redacted_state_before() {
    let r = root();
    let (before, path) = owned_by(&r);
    let seen: Slot<(Uuid, i64, Journal)> = slot();
    let mut ports = Ports::new(&[]).with_webhook(&before, path);
    let sink = Arc::clone(&seen);
    ports
        .webhooks
        .expect_delete()
        .times(1)
        .returning(move |id, e, j| {
            put_in(&sink, (id, e, j));
            Ok(())
        });

    ports
        .service()
        .delete(&scoped_caller(&r), before.id, Precondition::Any)
        .await
        .unwrap();

    let (id, expected, journal) = taken(&seen);
    assert_eq!((id, expected), (before.id, before.version));
    assert_eq!(journal.action, "webhook.deleted");
    assert_eq!(journal.resource_id, Some(before.id.to_string()));
    assert_eq!(journal.tenant_id, Some(r.id));
    assert_eq!(journal.before, Some(redacted_state(&before)));
    assert_eq!(journal.after, None);
    assert!(journal.event.is_none());
}

// ---------------------------------------------------------------------------------------
// Optimistic versions: If-Match and re-reads after a stale write
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stale_if_match_fails_update_and_delete_without_writing() {
    let r = root();
    let (mut before, path) = owned_by(&r);
    before.version = 4;
    for stale in [Precondition::Version(3), Precondition::Never] {
        let mut ports = Ports::new(&[])
            .with_webhook(&before, path.clone())
            .no_webhook_writes();
        ports.guard = guard_allows();
        let svc = ports.service();
        let patch = WebhookPatch {
            url: Some(OTHER_URL.to_owned()),
            active: Some(false),
            ..WebhookPatch::default()
        };
        let updated = svc.update(&admin(), before.id, patch, stale).await;
        assert!(
            matches!(updated, Err(WebhookError::PreconditionFailed(_))),
            "{updated:?}"
        );
        let deleted = svc.delete(&admin(), before.id, stale).await;
        assert!(
            matches!(deleted, Err(WebhookError::PreconditionFailed(_))),
            "{deleted:?}"
        );
    }
}

#[tokio::test]
async fn a_stale_write_under_a_current_if_match_fails_without_retrying() {
    let (before, path) = owned_by(&root());
    let mut ports = Ports::new(&[]).with_webhook(&before, path);
    ports
        .webhooks
        .expect_update()
        .withf(|_, expected, _, _| *expected == 1)
        .times(1)
        .returning(|_, _, _, _| Err(WebhookError::Stale));
    let patch = WebhookPatch {
        active: Some(false),
        ..WebhookPatch::default()
    };

    let result = ports
        .service()
        .update(&admin(), before.id, patch, Precondition::Version(1))
        .await;

    assert!(
        matches!(result, Err(WebhookError::PreconditionFailed(_))),
        "{result:?}"
    );
}

/// A webhook store whose `get` answers whatever `current` holds.
fn webhook_store_reading(
    current: &Arc<Mutex<Webhook>>,
    path: Option<TenantPath>,
) -> MockWebhookStore {
    let mut store = MockWebhookStore::new();
    let current = Arc::clone(current);
    store
        .expect_get()
        .returning(move |_| Ok(Some((current.lock().unwrap().clone(), path.clone()))));
    store
}

#[tokio::test]
async fn update_rereads_after_a_stale_write_and_journals_the_reread_state() {
    let r = root();
    let (v1, path) = owned_by(&r);
    // What a concurrent writer commits between our read and our write.
    let v2 = Webhook {
        description: Some("changed meanwhile".to_owned()),
        updated_at: EARLIER + time::Duration::hours(1),
        version: 2,
        ..v1.clone()
    };
    let current = Arc::new(Mutex::new(v1.clone()));
    let mut ports = Ports::new(&[]);
    ports.webhooks = webhook_store_reading(&current, path);
    let mut seq = mockall::Sequence::new();
    let (racer, committed) = (Arc::clone(&current), v2.clone());
    ports
        .webhooks
        .expect_update()
        .withf(|_, expected, _, _| *expected == 1)
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, _, _, _| {
            *racer.lock().unwrap() = committed.clone();
            Err(WebhookError::Stale)
        });
    let seen: Slot<(Webhook, i64, Option<String>, Journal)> = slot();
    let sink = Arc::clone(&seen);
    ports
        .webhooks
        .expect_update()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |w, e, s, j| {
            put_in(&sink, (w, e, s, j));
            Ok(e + 1)
        });
    let patch = WebhookPatch {
        active: Some(false),
        ..WebhookPatch::default()
    };

    let updated = ports
        .service()
        .update(&scoped_caller(&r), v1.id, patch, Precondition::Any)
        .await
        .unwrap();

    let (stored, expected, envelope, journal) = taken(&seen);
    assert_eq!(expected, 2, "the retry expects the re-read version");
    assert_eq!(envelope, None);
    assert!(!stored.active);
    assert_eq!(
        stored.description.as_deref(),
        Some("changed meanwhile"),
        "the concurrent change is kept"
    );
    assert_eq!(updated.version, 3);
    assert_eq!(journal.before, Some(redacted_state(&v2)));
    let mut expected_after = redacted_state(&stored);
    expected_after["secret_changed"] = json!(false);
    assert_eq!(journal.after, Some(expected_after));
}

#[tokio::test]
async fn delete_rereads_after_a_stale_write_and_journals_the_reread_state() {
    let r = root();
    let (v1, path) = owned_by(&r);
    let v2 = Webhook {
        url: webhook_url(OTHER_URL),
        version: 7,
        ..v1.clone()
    };
    let current = Arc::new(Mutex::new(v1.clone()));
    let mut ports = Ports::new(&[]);
    ports.webhooks = webhook_store_reading(&current, path);
    let mut seq = mockall::Sequence::new();
    let (racer, committed) = (Arc::clone(&current), v2.clone());
    ports
        .webhooks
        .expect_delete()
        .withf(|_, expected, _| *expected == 1)
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, _, _| {
            *racer.lock().unwrap() = committed.clone();
            Err(WebhookError::Stale)
        });
    let seen: Slot<(Uuid, i64, Journal)> = slot();
    let sink = Arc::clone(&seen);
    ports
        .webhooks
        .expect_delete()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |id, e, j| {
            put_in(&sink, (id, e, j));
            Ok(())
        });

    ports
        .service()
        .delete(&admin(), v1.id, Precondition::Any)
        .await
        .unwrap();

    let (id, expected, journal) = taken(&seen);
    assert_eq!((id, expected), (v1.id, 7));
    assert_eq!(journal.before, Some(redacted_state(&v2)));
}

// ---------------------------------------------------------------------------------------
// test
// ---------------------------------------------------------------------------------------

/// Ports for `test()` on `w`: its encrypted `secret`, a journal sink, and a guard decided by
/// `guard`.
fn test_ports(
    w: &Webhook,
    secret: &str,
    guard: Result<(), String>,
    journal: &Slot<Journal>,
) -> Ports {
    let mut ports = Ports::new(&[]).with_webhook(w, None);
    let envelope = keyring().encrypt_str(secret).unwrap();
    ports
        .webhooks
        .expect_secret()
        .with(eq(w.id))
        .returning(move |_| Ok(Some(envelope.clone())));
    let url = w.url.clone();
    ports
        .guard
        .expect_check()
        .withf(move |u| u.as_str() == url.as_str())
        .times(1)
        .return_const(guard);
    let sink = Arc::clone(journal);
    ports
        .webhooks
        .expect_journal()
        .times(1)
        .returning(move |j| {
            put_in(&sink, j);
            Ok(())
        });
    ports
}

fn answered(status: Option<u16>, error: Option<&str>) -> AttemptOutcome {
    AttemptOutcome {
        status,
        error: error.map(str::to_owned),
        duration_ms: 12,
        ..AttemptOutcome::default()
    }
}

fn assert_tested_journal(journal: &Journal, w: &Webhook, result: &TestResult) {
    assert_eq!(journal.action, "webhook.tested");
    assert_eq!(journal.resource_type, "webhook");
    assert_eq!(journal.resource_id, Some(w.id.to_string()));
    assert_eq!(journal.tenant_id, w.tenant_id);
    assert_eq!(journal.after, Some(serde_json::to_value(result).unwrap()));
    assert!(journal.event.is_none());
}

#[tokio::test]
async fn test_sends_a_signed_webhook_test_event_and_reports_success() {
    let w = webhook_of(Some(Uuid::now_v7()));
    let secret = format!("whsec_{}", "dGVzdC1rZXk=");
    let journal: Slot<Journal> = slot();
    let sent: Slot<OutgoingRequest> = slot();
    let mut ports = test_ports(&w, &secret, Ok(()), &journal);
    let sink = Arc::clone(&sent);
    ports.client.expect_send().times(1).returning(move |r| {
        put_in(&sink, r);
        answered(Some(200), None)
    });

    let result = ports.service().test(&admin(), w.id).await.unwrap();

    assert_eq!(
        result,
        TestResult {
            success: true,
            response_code: Some(200),
            error: None,
        }
    );
    let request = taken(&sent);
    assert_eq!(request.url, w.url.as_str());
    assert_eq!(header(&request, "X-Stratum-Event"), "webhook.test");
    let delivery_id = header(&request, "X-Stratum-Delivery");
    assert_eq!(header(&request, "webhook-id"), delivery_id);
    let ts = header(&request, "X-Stratum-Timestamp");
    assert_eq!(ts, NOW.unix_timestamp().to_string());
    assert_eq!(header(&request, "webhook-timestamp"), ts);
    let now = NOW.unix_timestamp();
    verify_stratum(
        secret.as_bytes(),
        ts,
        header(&request, "X-Stratum-Signature"),
        &request.body,
        now,
        TOLERANCE,
    )
    .expect("X-Stratum-Signature verifies with the webhook's secret");
    verify_standard(
        &secret,
        delivery_id,
        ts,
        header(&request, "webhook-signature"),
        &request.body,
        now,
        TOLERANCE,
    )
    .expect("webhook-signature verifies with the webhook's secret");
    // A different secret must not verify: the signature really depends on it.
    assert!(verify_stratum(
        b"some-other-secret",
        ts,
        header(&request, "X-Stratum-Signature"),
        &request.body,
        now,
        TOLERANCE,
    )
    .is_err());

    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["event"], json!("webhook.test"));
    assert_eq!(body["tenant_id"], json!(w.tenant_id));
    assert_eq!(body["data"]["webhook_id"], json!(w.id));
    assert!(!String::from_utf8_lossy(&request.body).contains(&secret));

    let journal = taken(&journal);
    assert_tested_journal(&journal, &w, &result);
    assert_eq!(
        journal.after,
        Some(json!({"success": true, "response_code": 200}))
    );
    assert!(!journal_text(&journal).contains(&secret));
}

#[tokio::test]
async fn test_with_a_plain_secret_signs_with_its_bytes() {
    let w = webhook_of(None);
    let journal: Slot<Journal> = slot();
    let sent: Slot<OutgoingRequest> = slot();
    let mut ports = test_ports(&w, GIVEN_SECRET, Ok(()), &journal);
    let sink = Arc::clone(&sent);
    ports.client.expect_send().times(1).returning(move |r| {
        put_in(&sink, r);
        answered(Some(204), None)
    });

    let result = ports.service().test(&admin(), w.id).await.unwrap();

    assert!(result.success);
    assert_eq!(result.response_code, Some(204));
    let request = taken(&sent);
    let ts = header(&request, "webhook-timestamp");
    let now = NOW.unix_timestamp();
    verify_standard(
        GIVEN_SECRET,
        header(&request, "webhook-id"),
        ts,
        header(&request, "webhook-signature"),
        &request.body,
        now,
        TOLERANCE,
    )
    .unwrap();
    verify_stratum(
        GIVEN_SECRET.as_bytes(),
        ts,
        header(&request, "X-Stratum-Signature"),
        &request.body,
        now,
        TOLERANCE,
    )
    .unwrap();
    assert_tested_journal(&taken(&journal), &w, &result);
}

#[tokio::test]
async fn test_reports_a_non_2xx_answer_as_a_failure() {
    for status in [500, 301, 410] {
        let w = webhook_of(None);
        let journal: Slot<Journal> = slot();
        let mut ports = test_ports(&w, GIVEN_SECRET, Ok(()), &journal);
        ports
            .client
            .expect_send()
            .times(1)
            .return_const(answered(Some(status), None));

        let result = ports.service().test(&admin(), w.id).await.unwrap();

        assert!(!result.success, "{status}");
        assert_eq!(result.response_code, Some(status));
        let error = result.error.clone().expect("an error");
        assert!(error.contains(&status.to_string()), "{error}");
        assert_tested_journal(&taken(&journal), &w, &result);
    }
}

#[tokio::test]
async fn test_reports_a_transport_error() {
    let w = webhook_of(None);
    let journal: Slot<Journal> = slot();
    let mut ports = test_ports(&w, GIVEN_SECRET, Ok(()), &journal);
    ports
        .client
        .expect_send()
        .times(1)
        .return_const(answered(None, Some("connection refused")));

    let result = ports.service().test(&admin(), w.id).await.unwrap();

    assert_eq!(
        result,
        TestResult {
            success: false,
            response_code: None,
            error: Some("connection refused".to_owned()),
        }
    );
    let journal = taken(&journal);
    assert_tested_journal(&journal, &w, &result);
    assert_eq!(
        journal.after,
        Some(json!({"success": false, "response_code": null, "error": "connection refused"}))
    );
}

#[tokio::test]
async fn test_to_a_blocked_target_never_sends() {
    let w = webhook_of(None);
    let journal: Slot<Journal> = slot();
    let mut ports = test_ports(
        &w,
        GIVEN_SECRET,
        Err("resolves to 127.0.0.1, a loopback address".to_owned()),
        &journal,
    );
    ports.client.expect_send().never();

    let result = ports.service().test(&admin(), w.id).await.unwrap();

    assert!(!result.success);
    assert_eq!(result.response_code, None);
    let error = result.error.clone().expect("an error");
    assert!(error.starts_with("blocked target"), "{error}");
    assert!(error.contains("127.0.0.1"), "{error}");
    assert_tested_journal(&taken(&journal), &w, &result);
}

#[tokio::test]
async fn test_with_a_secret_under_a_key_not_held_is_key_unavailable_without_sending() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    let foreign = Keyring::from_env_values("another-process-master-key-0123456789", None)
        .unwrap()
        .encrypt_str(GIVEN_SECRET)
        .unwrap();
    ports
        .webhooks
        .expect_secret()
        .returning(move |_| Ok(Some(foreign.clone())));
    ports.guard = guard_allows();
    ports.client.expect_send().never();
    // Another process rotated to a key this one does not hold: 503, nothing journaled.
    ports.webhooks.expect_journal().never();

    let e = ports.service().test(&admin(), w.id).await.unwrap_err();

    assert!(
        matches!(&e, WebhookError::Store(StoreError::KeyUnavailable { .. })),
        "{e:?}"
    );
}

#[tokio::test]
async fn test_of_an_invisible_webhook_is_not_found_and_sends_nothing() {
    let r = root();
    let (foreign, path) = owned_by(&root());
    let mut ports = Ports::new(&[])
        .with_webhook(&foreign, path)
        .no_webhook_writes();
    ports.webhooks.expect_secret().never();
    ports.guard.expect_check().never();
    ports.client.expect_send().never();

    let result = ports.service().test(&scoped_caller(&r), foreign.id).await;

    assert!(matches!(result, Err(WebhookError::NotFound)), "{result:?}");
}

// ---------------------------------------------------------------------------------------
// deliveries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn deliveries_ask_for_one_more_and_return_a_cursor_only_when_there_is_more() {
    let w = webhook_of(None);
    let cursor = Uuid::now_v7();
    let limit = Limit::new(Some(3), 50, 100).unwrap();
    let rows: Vec<Delivery> = (0..4)
        .map(|_| delivery_of(&w, DeliveryStatus::Failed))
        .collect();

    // Four rows for a limit of three: a page of three and a cursor at its last row.
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    let answer = rows.clone();
    ports
        .deliveries
        .expect_list_for_webhook()
        .with(
            eq(w.id),
            eq(Some(DeliveryStatus::Failed)),
            eq(Some(cursor)),
            eq(limit),
        )
        .times(1)
        .returning(move |_, _, _, _| Ok(answer.clone()));
    let (page, next) = ports
        .service()
        .deliveries(
            &admin(),
            w.id,
            Some(DeliveryStatus::Failed),
            Some(cursor),
            limit,
        )
        .await
        .unwrap();
    assert_eq!(page, rows[..3]);
    assert_eq!(next, Some(rows[2].id));

    // Exactly three rows: the last page.
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    let answer = rows[..3].to_vec();
    ports
        .deliveries
        .expect_list_for_webhook()
        .with(eq(w.id), eq(None), eq(None), eq(limit))
        .times(1)
        .returning(move |_, _, _, _| Ok(answer.clone()));
    let (page, next) = ports
        .service()
        .deliveries(&admin(), w.id, None, None, limit)
        .await
        .unwrap();
    assert_eq!(page, rows[..3]);
    assert_eq!(next, None);
}

#[tokio::test]
async fn a_cursor_the_store_does_not_know_is_a_validation_error() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    ports
        .deliveries
        .expect_list_for_webhook()
        .times(1)
        .returning(|_, _, _, _| Err(stratum_core::PageError::BadCursor));

    let result = ports
        .service()
        .deliveries(
            &admin(),
            w.id,
            None,
            Some(Uuid::now_v7()),
            Limit::new(None, 50, 100).unwrap(),
        )
        .await;

    assert_validation(result, "cursor");
}

#[tokio::test]
async fn deliveries_of_an_invisible_webhook_are_not_found() {
    let r = root();
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    ports.deliveries.expect_list_for_webhook().never();

    let result = ports
        .service()
        .deliveries(
            &scoped_caller(&r),
            w.id,
            None,
            None,
            Limit::new(None, 50, 100).unwrap(),
        )
        .await;

    assert!(matches!(result, Err(WebhookError::NotFound)), "{result:?}");
}

#[tokio::test]
async fn stats_and_failed_are_confined_to_the_callers_subtree() {
    let r = root();
    let stats = DeliveryStats {
        total: 9,
        pending: 3,
        success: 4,
        failed: 2,
    };
    let mut ports = Ports::new(&[]);
    ports
        .deliveries
        .expect_stats()
        .with(eq(Some(r.ancestry_path.clone())))
        .times(1)
        .returning(move |_| Ok(stats));
    ports
        .deliveries
        .expect_stats()
        .with(eq(None))
        .times(1)
        .returning(|_| Ok(DeliveryStats::default()));
    ports
        .deliveries
        .expect_failed()
        .with(
            eq(Some(r.ancestry_path.clone())),
            eq(Limit::new(Some(7), 100, 500).unwrap()),
        )
        .times(1)
        .returning(|_, _| Ok(Vec::new()));
    let svc = ports.service();

    assert_eq!(svc.stats(&scoped_caller(&r)).await.unwrap(), stats);
    assert_eq!(svc.stats(&admin()).await.unwrap(), DeliveryStats::default());
    let limit = Limit::new(Some(7), 100, 500).unwrap();
    assert!(svc
        .failed(&scoped_caller(&r), limit)
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------
// retry / retry_all
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn only_a_failed_delivery_can_be_retried() {
    let r = root();
    let (w, path) = owned_by(&r);
    for status in [DeliveryStatus::Pending, DeliveryStatus::Success] {
        let d = delivery_of(&w, status);
        let mut ports = Ports::new(&[]);
        let found = (d.clone(), path.clone());
        ports
            .deliveries
            .expect_get()
            .with(eq(d.id))
            .returning(move |_| Ok(Some(found.clone())));
        ports.deliveries.expect_retry().never();

        let result = ports.service().retry(&scoped_caller(&r), d.id).await;

        assert!(
            matches!(result, Err(WebhookError::DeliveryNotFailed)),
            "{status:?}: {result:?}"
        );
    }
}

#[tokio::test]
async fn an_unknown_or_invisible_delivery_is_not_found() {
    let r = root();
    let (foreign, foreign_path) = owned_by(&root());
    let global = webhook_of(None);
    let cases = [
        None,
        Some((delivery_of(&foreign, DeliveryStatus::Failed), foreign_path)),
        Some((delivery_of(&global, DeliveryStatus::Failed), None)),
    ];
    for found in cases {
        let mut ports = Ports::new(&[]);
        let id = found.as_ref().map_or_else(Uuid::now_v7, |(d, _)| d.id);
        ports
            .deliveries
            .expect_get()
            .returning(move |_| Ok(found.clone()));
        ports.deliveries.expect_retry().never();

        let result = ports.service().retry(&scoped_caller(&r), id).await;

        assert!(
            matches!(result, Err(WebhookError::DeliveryNotFound)),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn retrying_a_failed_delivery_journals_it() {
    let r = root();
    let below = child(&r);
    let (w, path) = owned_by(&below);
    let d = delivery_of(&w, DeliveryStatus::Failed);
    let seen: Slot<(Uuid, Journal)> = slot();
    let mut ports = Ports::new(&[]);
    let found = (d.clone(), path);
    ports
        .deliveries
        .expect_get()
        .with(eq(d.id))
        .returning(move |_| Ok(Some(found.clone())));
    let sink = Arc::clone(&seen);
    ports
        .deliveries
        .expect_retry()
        .times(1)
        .returning(move |id, j| {
            put_in(&sink, (id, j));
            Ok(())
        });
    let caller = scoped_caller(&r);

    ports.service().retry(&caller, d.id).await.unwrap();

    let (id, journal) = taken(&seen);
    assert_eq!(id, d.id);
    assert_eq!(journal.action, "delivery.retried");
    assert_eq!(journal.resource_type, "delivery");
    assert_eq!(journal.resource_id, Some(d.id.to_string()));
    assert_eq!(journal.tenant_id, Some(below.id));
    assert_eq!(journal.actor_id, caller.actor.id());
    assert_eq!(journal.before, Some(serde_json::to_value(&d).unwrap()));
    assert!(journal.event.is_none());
}

#[tokio::test]
async fn a_store_conflict_on_retry_is_passed_on() {
    let (w, _) = owned_by(&root());
    let d = delivery_of(&w, DeliveryStatus::Failed);
    let mut ports = Ports::new(&[]);
    let found = (d.clone(), None);
    ports
        .deliveries
        .expect_get()
        .returning(move |_| Ok(Some(found.clone())));
    // Someone else retried it between the read and the write.
    ports
        .deliveries
        .expect_retry()
        .times(1)
        .returning(|_, _| Err(WebhookError::DeliveryNotFailed));

    let result = ports.service().retry(&admin(), d.id).await;

    assert!(
        matches!(result, Err(WebhookError::DeliveryNotFailed)),
        "{result:?}"
    );
}

#[tokio::test]
async fn retry_all_is_confined_to_the_callers_subtree() {
    let r = root();
    let scoped = scoped_caller(&r);
    let seen: Slot<Journal> = slot();
    let mut ports = Ports::new(&[]);
    let sink = Arc::clone(&seen);
    ports
        .deliveries
        .expect_retry_all()
        .with(
            eq(Some(r.ancestry_path.clone())),
            mockall::predicate::always(),
        )
        .times(1)
        .returning(move |_, j| {
            put_in(&sink, j);
            Ok(5)
        });
    ports
        .deliveries
        .expect_retry_all()
        .with(eq(None), mockall::predicate::always())
        .times(1)
        .returning(|_, _| Ok(11));
    let svc = ports.service();

    assert_eq!(svc.retry_all(&scoped).await.unwrap(), 5);
    assert_eq!(svc.retry_all(&admin()).await.unwrap(), 11);

    let journal = taken(&seen);
    assert_eq!(journal.action, "delivery.retried_all");
    assert_eq!(journal.resource_type, "delivery");
    assert_eq!(journal.actor_id, scoped.actor.id());
    assert_eq!(journal.meta, meta());
    assert!(journal.event.is_none());
}

// ---------------------------------------------------------------------------------------
// Encryption keys: a rotation committed meanwhile, a key this process does not hold
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_seals_again_and_retries_when_a_rotation_committed_meanwhile() {
    let mut ports = Ports::new(&[]);
    ports.guard = guard_allows();
    let active = keyring().current().key_id().to_owned();
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&calls);
    ports
        .webhooks
        .expect_create()
        .times(2)
        .returning(move |_, s, _| {
            let mut seen = sink.lock().unwrap();
            seen.push(s);
            if seen.len() == 1 {
                Err(WebhookError::Store(StoreError::KeyNotActive {
                    active_key_id: active.clone(),
                }))
            } else {
                Ok(())
            }
        });
    let (_, secret) = ports
        .service()
        .create(&admin(), new_webhook(None))
        .await
        .unwrap();
    let calls = calls.lock().unwrap();
    assert_ne!(calls[0], calls[1], "sealed again, with a fresh nonce");
    assert_eq!(keyring().decrypt_str(&calls[1]).unwrap(), secret.unwrap());
}

#[tokio::test]
async fn create_and_secret_change_without_the_active_key_are_key_unavailable() {
    let mut ports = Ports::new(&[]);
    ports.guard = guard_allows();
    ports
        .webhooks
        .expect_create()
        .times(1)
        .returning(|_, _, _| {
            Err(WebhookError::Store(StoreError::KeyNotActive {
                active_key_id: "0badc0de".into(),
            }))
        });
    let e = ports
        .service()
        .create(&admin(), new_webhook(None))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, WebhookError::Store(StoreError::KeyUnavailable { key_id }) if key_id == "0badc0de"),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------
// health and attempts

#[tokio::test]
async fn health_asks_for_the_last_hour_and_derives_the_rate() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    ports
        .deliveries
        .expect_health()
        .with(eq(w.id), eq(NOW - time::Duration::hours(1)))
        .times(1)
        .returning(|_, _| {
            Ok(HealthFigures {
                attempts: 8,
                successes: 6,
                p50_latency_ms: Some(42.5),
                last_error: Some(("receiver answered 503".to_owned(), EARLIER)),
                queue_depth: 3,
                breaker: Breaker::default(),
            })
        });
    let h = ports.service().health(&admin(), w.id).await.unwrap();
    assert_eq!(
        h,
        WebhookHealth {
            webhook_id: w.id,
            window_seconds: 3600,
            attempts: 8,
            successes: 6,
            success_rate: Some(0.75),
            p50_latency_ms: Some(42.5),
            last_error: Some("receiver answered 503".to_owned()),
            last_error_at: Some(EARLIER),
            queue_depth: 3,
            breaker: Breaker::default(),
        }
    );
    let json = serde_json::to_value(&h).unwrap();
    assert_eq!(json["last_error_at"], "2026-01-01T08:00:00.000Z");
}

#[tokio::test]
async fn health_without_attempts_has_no_rate_rather_than_zero() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    ports
        .deliveries
        .expect_health()
        .returning(|_, _| Ok(HealthFigures::default()));
    let h = ports.service().health(&admin(), w.id).await.unwrap();
    assert_eq!(
        (h.attempts, h.success_rate, h.p50_latency_ms),
        (0, None, None)
    );
    assert_eq!((h.last_error, h.last_error_at), (None, None));
}

#[tokio::test]
async fn health_and_attempts_of_an_invisible_webhook_are_not_found_without_reading_them() {
    let (mine, other) = (root(), root());
    let (w, path) = owned_by(&other);
    let mut ports = Ports::new(&[&mine, &other]).with_webhook(&w, path);
    ports.deliveries.expect_health().never();
    ports.deliveries.expect_attempts().never();
    let service = ports.service();
    let caller = scoped_caller(&mine);
    assert!(matches!(
        service.health(&caller, w.id).await,
        Err(WebhookError::NotFound)
    ));
    assert!(matches!(
        service.attempts(&caller, w.id, Uuid::now_v7()).await,
        Err(WebhookError::NotFound)
    ));
}

#[tokio::test]
async fn attempts_of_a_delivery_the_webhook_does_not_have_are_delivery_not_found() {
    let w = webhook_of(None);
    let d = Uuid::now_v7();
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    ports
        .deliveries
        .expect_attempts()
        .with(eq(w.id), eq(d))
        .returning(|_, _| Ok(None));
    assert!(matches!(
        ports.service().attempts(&admin(), w.id, d).await,
        Err(WebhookError::DeliveryNotFound)
    ));
}

fn reader() -> Caller {
    let mut caller = admin();
    caller.actor.scope = Scope::Read;
    caller
}

fn is_missing_write(r: &std::result::Result<impl std::fmt::Debug, WebhookError>) -> bool {
    matches!(r, Err(WebhookError::Forbidden(m)) if m == "this key lacks the 'write' scope")
}

#[tokio::test]
async fn a_read_scoped_caller_reads_but_changes_nothing() {
    let w = webhook_of(None);
    // No expectations besides the read: any write, guard check or send panics the test.
    let svc = Ports::new(&[])
        .with_webhook(&w, None)
        .no_webhook_writes()
        .service();
    let caller = reader();

    assert_eq!(svc.get(&caller, w.id).await.unwrap(), w);
    let created = svc.create(&caller, new_webhook(None)).await;
    assert!(is_missing_write(&created), "{created:?}");
    let patch = WebhookPatch {
        active: Some(false),
        ..WebhookPatch::default()
    };
    let updated = svc.update(&caller, w.id, patch, Precondition::Any).await;
    assert!(is_missing_write(&updated), "{updated:?}");
    let deleted = svc.delete(&caller, w.id, Precondition::Any).await;
    assert!(is_missing_write(&deleted), "{deleted:?}");
    let tested = svc.test(&caller, w.id).await;
    assert!(is_missing_write(&tested), "{tested:?}");
    let retried = svc.retry(&caller, Uuid::now_v7()).await;
    assert!(is_missing_write(&retried), "{retried:?}");
    let all = svc.retry_all(&caller).await;
    assert!(is_missing_write(&all), "{all:?}");
}

// ---------------------------------------------------------------------------------------
// Delivery controls: rotation with overlap, rate limits, ordering, re-enabling
// ---------------------------------------------------------------------------------------

type Rotation = (Uuid, i64, String, OffsetDateTime, OffsetDateTime, Journal);

fn rotation_recorded(ports: &mut Ports, sink: &Slot<Rotation>, current: &Webhook) {
    let sink = sink.clone();
    let answer = current.clone();
    ports.webhooks.expect_rotate_secret().times(1).returning(
        move |id, expected, sealed, expires, now, journal| {
            put_in(&sink, (id, expected, sealed, expires, now, journal));
            Ok(Webhook {
                version: expected + 1,
                previous_secret_expires_at: Some(expires),
                ..answer.clone()
            })
        },
    );
}

#[tokio::test]
async fn rotate_secret_keeps_the_old_one_for_the_grace_period_and_journals_no_secret() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    let sink = slot();
    rotation_recorded(&mut ports, &sink, &w);
    let (after, generated) = ports
        .service()
        .rotate_secret(
            &admin(),
            w.id,
            SecretRotation {
                secret: None,
                grace_period_seconds: Some(3600),
            },
            Precondition::Any,
        )
        .await
        .unwrap();
    let secret = generated.expect("a generated secret is returned once");
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        after.previous_secret_expires_at,
        Some(NOW + time::Duration::hours(1))
    );
    let (id, expected, sealed, expires, now, journal) = taken(&sink);
    assert_eq!(
        (id, expected, expires, now),
        (w.id, w.version, NOW + time::Duration::hours(1), NOW)
    );
    assert_eq!(keyring().decrypt_str(&sealed).unwrap(), secret);
    assert_eq!(journal.action, "webhook.secret_rotated");
    assert_eq!(journal.resource_id, Some(w.id.to_string()));
    let after_state = journal.after.clone().unwrap();
    assert_eq!(after_state["secret"], json!(REDACTED));
    assert_eq!(after_state["grace_period_seconds"], json!(3600));
    assert_eq!(
        after_state["previous_secret_expires_at"],
        json!("2026-02-01T13:00:00.000Z")
    );
    assert!(!journal_text(&journal).contains(&secret));
    assert!(journal.event.is_none());
}

#[tokio::test]
async fn rotate_secret_defaults_to_a_day_and_returns_no_given_secret() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    let sink = slot();
    rotation_recorded(&mut ports, &sink, &w);
    let (_, generated) = ports
        .service()
        .rotate_secret(
            &admin(),
            w.id,
            SecretRotation {
                secret: Some(GIVEN_SECRET.to_owned()),
                grace_period_seconds: None,
            },
            Precondition::Any,
        )
        .await
        .unwrap();
    assert_eq!(generated, None);
    let (_, _, sealed, expires, _, _) = taken(&sink);
    assert_eq!(expires, NOW + time::Duration::days(1));
    assert_eq!(keyring().decrypt_str(&sealed).unwrap(), GIVEN_SECRET);
}

#[tokio::test]
async fn rotate_secret_validates_and_hides_webhooks_the_key_cannot_see() {
    let w = webhook_of(None);
    let rotate = |s: Option<&str>, grace: Option<u32>| SecretRotation {
        secret: s.map(str::to_owned),
        grace_period_seconds: grace,
    };
    for (input, field) in [
        (rotate(Some("short"), None), "secret"),
        (rotate(None, Some(604_801)), "grace_period_seconds"),
    ] {
        let ports = Ports::new(&[]).with_webhook(&w, None);
        assert_validation(
            ports
                .service()
                .rotate_secret(&admin(), w.id, input, Precondition::Any)
                .await,
            field,
        );
    }
    // A tenant-scoped key does not see a global webhook: 404, nothing written.
    let t = root();
    let ports = Ports::new(&[&t]).with_webhook(&w, None);
    assert!(matches!(
        ports
            .service()
            .rotate_secret(
                &scoped_caller(&t),
                w.id,
                rotate(None, Some(0)),
                Precondition::Any
            )
            .await,
        Err(WebhookError::NotFound)
    ));
}

#[tokio::test]
async fn rate_limits_outside_1_to_10000_are_refused() {
    for bad in [0, 10_001] {
        let mut ports = Ports::new(&[]);
        ports.guard = guard_allows();
        let input = NewWebhook {
            rate_limit_per_second: Some(bad),
            ..new_webhook(None)
        };
        assert_validation(
            ports.service().create(&admin(), input).await,
            "rate_limit_per_second",
        );
        let w = webhook_of(None);
        let ports = Ports::new(&[]).with_webhook(&w, None);
        let patch = WebhookPatch {
            rate_limit_per_second: Some(Some(bad)),
            ..WebhookPatch::default()
        };
        assert_validation(
            ports
                .service()
                .update(&admin(), w.id, patch, Precondition::Any)
                .await,
            "rate_limit_per_second",
        );
    }
}

#[tokio::test]
async fn turning_a_disabled_webhook_on_clears_its_reason_and_settings_apply() {
    let w = Webhook {
        active: false,
        disabled_reason: Some(DisabledReason::Failing),
        ..webhook_of(None)
    };
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    let sink = slot();
    let s2 = sink.clone();
    ports
        .webhooks
        .expect_update()
        .times(1)
        .returning(move |after, expected, _, _| {
            put_in(&s2, after);
            Ok(expected + 1)
        });
    let patch = WebhookPatch {
        active: Some(true),
        rate_limit_per_second: Some(Some(100)),
        ordering: Some(DeliveryOrdering::Fifo),
        ..WebhookPatch::default()
    };
    let updated = ports
        .service()
        .update(&admin(), w.id, patch, Precondition::Any)
        .await
        .unwrap();
    let stored: Webhook = taken(&sink);
    assert!(stored.active);
    assert_eq!(stored.disabled_reason, None);
    assert_eq!(stored.rate_limit_per_second, Some(100));
    assert_eq!(stored.ordering, DeliveryOrdering::Fifo);
    assert_eq!(updated.disabled_reason, None);
}

// ---------------------------------------------------------------------------------------
// health series

#[tokio::test]
async fn health_series_defaults_to_a_day_in_hours_aligned_to_the_hour() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    // NOW is 12:00:00, on an hour boundary: the last bucket starts then.
    let from = NOW - time::Duration::hours(23);
    ports
        .deliveries
        .expect_health_series()
        .with(eq(w.id), eq(from), eq(3600), eq(24))
        .times(1)
        .returning(|_, from, bucket, n| {
            Ok((0..n)
                .map(|i| BucketFigures {
                    start: from + time::Duration::seconds(i * bucket),
                    attempts: if i == 23 { 4 } else { 0 },
                    successes: if i == 23 { 3 } else { 0 },
                    p50_latency_ms: (i == 23).then_some(20.0),
                    p99_latency_ms: (i == 23).then_some(90.0),
                })
                .collect())
        });
    let s = ports
        .service()
        .health_series(&admin(), w.id, None, None)
        .await
        .unwrap();
    assert_eq!(
        (s.window_seconds, s.bucket_seconds, s.from, s.until),
        (86_400, 3600, from, NOW + time::Duration::hours(1))
    );
    assert_eq!(s.buckets.len(), 24);
    assert_eq!(s.buckets[0].success_rate, None);
    assert_eq!(s.buckets[0].attempts, 0);
    assert_eq!(s.buckets[23].success_rate, Some(0.75));
    assert_eq!(s.buckets[23].p99_latency_ms, Some(90.0));
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["from"], "2026-01-31T13:00:00.000Z");
    assert_eq!(json["buckets"][0]["p50_latency_ms"], Value::Null);
}

#[tokio::test]
async fn health_series_rounds_a_partial_bucket_up_and_aligns_to_the_bucket() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    // 7 minutes in 5-minute buckets: two buckets, the last one holding NOW.
    ports
        .deliveries
        .expect_health_series()
        .with(
            eq(w.id),
            eq(NOW - time::Duration::minutes(5)),
            eq(300),
            eq(2),
        )
        .times(1)
        .returning(|_, _, _, _| Ok(Vec::new()));
    let s = ports
        .service()
        .health_series(&admin(), w.id, Some(420), Some(300))
        .await
        .unwrap();
    assert_eq!(s.until, NOW + time::Duration::minutes(5));
}

#[tokio::test]
async fn health_series_refuses_bad_windows_and_buckets_without_reading() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    ports.deliveries.expect_health_series().never();
    let service = ports.service();
    for (window, bucket, field) in [
        (Some(59), None, "window"),
        (Some(0), None, "window"),
        (Some(-3600), None, "window"),
        (Some(7 * 86_400 + 1), None, "window"),
        (None, Some(59), "bucket"),
        (None, Some(0), "bucket"),
        (Some(3600), Some(3601), "bucket"),
        // 7 days in minutes: 10,080 buckets.
        (Some(7 * 86_400), Some(60), "bucket"),
    ] {
        match service.health_series(&admin(), w.id, window, bucket).await {
            Err(WebhookError::Validation { field: f, .. }) => {
                assert_eq!(f, field, "{window:?} {bucket:?}");
            }
            other => panic!("{window:?} {bucket:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn health_series_of_an_invisible_webhook_is_not_found_without_reading() {
    let (mine, other) = (root(), root());
    let (w, path) = owned_by(&other);
    let mut ports = Ports::new(&[&mine, &other]).with_webhook(&w, path);
    ports.deliveries.expect_health_series().never();
    assert!(matches!(
        ports
            .service()
            .health_series(&scoped_caller(&mine), w.id, None, None)
            .await,
        Err(WebhookError::NotFound)
    ));
}

#[tokio::test]
async fn a_delivery_of_an_invisible_webhook_is_not_found_without_reading_it() {
    let (mine, other) = (root(), root());
    let (w, path) = owned_by(&other);
    let mut ports = Ports::new(&[&mine, &other]).with_webhook(&w, path);
    ports.deliveries.expect_detail().never();
    assert!(matches!(
        ports
            .service()
            .delivery(&scoped_caller(&mine), w.id, Uuid::now_v7())
            .await,
        Err(WebhookError::NotFound)
    ));
}

#[tokio::test]
async fn a_delivery_the_webhook_does_not_have_is_delivery_not_found() {
    let w = webhook_of(None);
    let mut ports = Ports::new(&[]).with_webhook(&w, None);
    let missing = Uuid::now_v7();
    ports
        .deliveries
        .expect_detail()
        .with(eq(w.id), eq(missing))
        .times(1)
        .returning(|_, _| Ok(None));
    assert!(matches!(
        ports.service().delivery(&admin(), w.id, missing).await,
        Err(WebhookError::DeliveryNotFound)
    ));
}
