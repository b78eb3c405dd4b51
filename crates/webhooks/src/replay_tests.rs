//! Unit tests of [`ReplayService`] against mocked ports: the window and filter rules,
//! visibility, and the journal handed to the store.

use std::sync::{Arc, Mutex};

use stratum_core::testing;
use stratum_core::{Caller, Journal, RequestMeta, Scope, TenantPath};
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::{MockWebhookStore, Webhook};

const NOW: OffsetDateTime = datetime!(2026-02-01 12:00:00 UTC);

fn webhook(tenant: Option<Uuid>) -> Webhook {
    Webhook {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        url: crate::WebhookUrl::parse("https://hooks.example.com/x", false).unwrap(),
        events: ["tenant.created", "config.updated"]
            .map(|e| stratum_core::EventType::parse(e).unwrap())
            .to_vec(),
        active: true,
        description: None,
        created_at: NOW,
        updated_at: NOW,
        rate_limit_per_second: None,
        ordering: crate::DeliveryOrdering::Unordered,
        disabled_reason: None,
        previous_secret_expires_at: None,
        version: 1,
    }
}

fn global() -> Caller {
    testing::global_caller(Scope::Write, RequestMeta::default()).0
}

fn scoped(id: Uuid) -> Caller {
    testing::scoped_caller(&TenantPath::root(id), Scope::Write, RequestMeta::default())
}

type Seen = Arc<Mutex<Option<(Replay, Vec<String>, Journal)>>>;

fn service(w: Webhook, path: Option<TenantPath>, seen: Seen) -> ReplayService {
    let mut store = MockWebhookStore::new();
    store
        .expect_get()
        .returning(move |_| Ok(Some((w.clone(), path.clone()))));
    let mut replays = MockReplayStore::new();
    replays.expect_create().returning(move |r, types, j| {
        *seen.lock().unwrap() = Some((r.clone(), types, j));
        Ok(r)
    });
    ReplayService::new(
        Arc::new(store),
        Arc::new(replays),
        testing::fixed_clock(NOW),
    )
}

fn input(
    since: OffsetDateTime,
    until: Option<OffsetDateTime>,
    events: Option<&[&str]>,
) -> NewReplay {
    NewReplay {
        since,
        until,
        events: events.map(|e| e.iter().map(|s| (*s).to_owned()).collect()),
    }
}

#[tokio::test]
async fn starts_a_running_job_with_the_subscription_and_journals_it() {
    let seen: Seen = Arc::default();
    let w = webhook(None);
    let svc = service(w.clone(), None, seen.clone());
    let r = svc
        .start(
            &global(),
            w.id,
            input(datetime!(2026-01-20 00:00 UTC), None, None),
        )
        .await
        .unwrap();
    assert_eq!(r.until, NOW, "until defaults to now");
    assert_eq!(r.status, ReplayStatus::Running);
    let (stored, types, journal) = seen.lock().unwrap().take().unwrap();
    assert_eq!(stored, r);
    assert_eq!(w.events, types);
    assert_eq!(journal.action, "webhook.replayed");
    assert_eq!(journal.resource_id, Some(w.id.to_string()));
    assert!(journal.event.is_none(), "a replay emits no event");
    assert_eq!(journal.after.unwrap()["id"], r.id.to_string());
}

#[tokio::test]
async fn events_narrow_the_subscription() {
    let seen: Seen = Arc::default();
    let w = webhook(None);
    let svc = service(w.clone(), None, seen.clone());
    svc.start(
        &global(),
        w.id,
        input(
            datetime!(2026-01-20 00:00 UTC),
            None,
            Some(&["config.updated"]),
        ),
    )
    .await
    .unwrap();
    let (stored, types, _) = seen.lock().unwrap().take().unwrap();
    assert_eq!(types, vec!["config.updated".to_owned()]);
    assert_eq!(stored.events, Some(vec!["config.updated".to_owned()]));
}

#[tokio::test]
async fn invalid_windows_and_filters_are_rejected() {
    let w = webhook(None);
    let svc = service(w.clone(), None, Arc::default());
    let cases: Vec<(NewReplay, &str)> = vec![
        (input(NOW, Some(NOW), None), "since"),
        (
            input(NOW, Some(datetime!(2026-01-01 00:00 UTC)), None),
            "since",
        ),
        (input(NOW, None, None), "since"),
        (
            input(
                datetime!(2025-10-01 00:00 UTC),
                Some(datetime!(2026-01-01 00:00 UTC)),
                None,
            ),
            "until",
        ),
        (
            input(datetime!(2026-01-20 00:00 UTC), None, Some(&[])),
            "events",
        ),
        (
            input(datetime!(2026-01-20 00:00 UTC), None, Some(&["nope"])),
            "events",
        ),
        (
            input(
                datetime!(2026-01-20 00:00 UTC),
                None,
                Some(&["tenant.deleted"]),
            ),
            "events",
        ),
        (
            input(
                datetime!(2026-01-20 00:00 UTC),
                None,
                Some(&["tenant.created", "tenant.created"]),
            ),
            "events",
        ),
    ];
    for (i, want) in cases {
        match svc.start(&global(), w.id, i.clone()).await {
            Err(WebhookError::Validation { field, .. }) => assert_eq!(field, want, "{i:?}"),
            other => panic!("{i:?}: {other:?}"),
        }
    }
    // Exactly 90 days is allowed.
    svc.start(
        &global(),
        w.id,
        input(
            datetime!(2025-10-01 00:00 UTC),
            Some(datetime!(2025-12-30 00:00 UTC)),
            None,
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_webhook_outside_the_keys_subtree_is_not_found() {
    let owner = Uuid::now_v7();
    let w = webhook(Some(owner));
    let svc = service(w.clone(), Some(TenantPath::root(owner)), Arc::default());
    let other = scoped(Uuid::now_v7());
    let r = svc
        .start(
            &other,
            w.id,
            input(datetime!(2026-01-20 00:00 UTC), None, None),
        )
        .await;
    assert!(matches!(r, Err(WebhookError::NotFound)), "{r:?}");
    assert!(matches!(
        svc.get(&other, w.id, Uuid::now_v7()).await,
        Err(WebhookError::NotFound)
    ));
    // A global webhook is invisible to a scoped key too.
    let g = webhook(None);
    let svc = service(g.clone(), None, Arc::default());
    assert!(matches!(
        svc.start(
            &scoped(owner),
            g.id,
            input(datetime!(2026-01-20 00:00 UTC), None, None)
        )
        .await,
        Err(WebhookError::NotFound)
    ));
    // The owner's key may.
    let svc = service(w.clone(), Some(TenantPath::root(owner)), Arc::default());
    svc.start(
        &scoped(owner),
        w.id,
        input(datetime!(2026-01-20 00:00 UTC), None, None),
    )
    .await
    .unwrap();
}
