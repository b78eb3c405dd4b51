//! A service of its own that embeds Stratum's webhooks domain: in-memory adapters for the
//! ports (no PostgreSQL), `stratum-http-delivery` to send, its own event catalogue. It
//! registers a webhook through `WebhookService`, emits one `order.shipped` event and lets
//! the `Dispatcher` deliver it, signed, to a receiver (see the `verify-receiver` example).
//!
//! Settings, from the environment: `RECEIVER_URL` (default `http://127.0.0.1:8099/hook`),
//! `WEBHOOK_SECRET` (the webhook's signing secret; generated when unset). Exits 0 once the
//! receiver answered 2xx.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use stratum_core::{
    Caller, Clock, EventCatalogue, EventType, Journal, Limit, PageError, StoreError, SystemClock,
    TenantDirectory, TenantEntry, TenantPath,
};
use stratum_crypto::{generate_whsec, Keyring, SharedKeyring};
use stratum_http_delivery::{ClientConfig, ReqwestDeliveryClient, SsrfGuard};
use stratum_webhooks::{
    BucketFigures, ClaimedDelivery, Completion, Delivery, DeliveryAttempt, DeliveryQueue,
    DeliveryStats, DeliveryStatus, DeliveryStore, Dispatcher, DispatcherConfig, FailedDelivery,
    HealthFigures, NewWebhook, PreviousSecret, RegistryConfig, RetryPolicy, Verdict, Webhook,
    WebhookError, WebhookService, WebhookStore,
};
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

/// The one event this service emits.
const ORDER_SHIPPED: EventType = EventType::from_static("order.shipped");

/// What the service keeps: webhooks with their encrypted secrets, the delivery queue and
/// the completed attempts. It keeps no delivery history, so the registry's delivery views
/// (stats, dead-letter queue, attempts) are empty.
#[derive(Default)]
struct Memory {
    webhooks: Vec<(Webhook, String)>,
    /// Per webhook, the secrets that still sign beside the current one, newest first.
    previous: Vec<(Uuid, PreviousSecret)>,
    queue: Vec<ClaimedDelivery>,
    completions: Vec<Completion>,
}

/// The previous secrets of `webhook` that still sign at `now`.
fn previous_of(
    all: &[(Uuid, PreviousSecret)],
    webhook: Uuid,
    now: OffsetDateTime,
) -> Vec<PreviousSecret> {
    all.iter()
        .filter(|(w, p)| *w == webhook && p.expires_at > now)
        .map(|(_, p)| p.clone())
        .collect()
}

/// The in-memory adapter of every port the webhooks domain needs.
#[derive(Clone, Default)]
struct InMemory {
    memory: Arc<Mutex<Memory>>,
    completed: Arc<Notify>,
}

impl InMemory {
    fn lock(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Emits an event: one due delivery for each active webhook subscribed to it.
    fn publish(&self, event: &EventType, payload: Value) {
        let mut m = self.lock();
        let now = OffsetDateTime::now_utc();
        let event_id = Uuid::now_v7();
        let deliveries: Vec<ClaimedDelivery> = m
            .webhooks
            .iter()
            .filter(|(w, _)| w.active && w.events.contains(event))
            .map(|(w, secret)| (w, secret, previous_of(&m.previous, w.id, now)))
            .map(|(w, secret, previous_secrets)| ClaimedDelivery {
                id: Uuid::now_v7(),
                lease_id: Uuid::nil(),
                attempts: 0,
                webhook_id: w.id,
                url: w.url.to_string(),
                secret_encrypted: secret.clone(),
                previous_secrets,
                fifo: false,
                not_before: None,
                event_id,
                event_type: event.to_string(),
                tenant_id: None,
                payload: payload.clone(),
                event_created_at: now,
                trace_context: None,
            })
            .collect();
        m.queue.extend(deliveries);
    }
}

/// This service has no tenants: its webhooks are all global.
#[async_trait]
impl TenantDirectory for InMemory {
    async fn find(&self, _id: Uuid) -> Result<Option<TenantEntry>, StoreError> {
        Ok(None)
    }
}

#[async_trait]
impl WebhookStore for InMemory {
    async fn create(&self, w: Webhook, secret: String, _: Journal) -> Result<(), WebhookError> {
        self.lock().webhooks.push((w, secret));
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<(Webhook, Option<TenantPath>)>, StoreError> {
        let m = self.lock();
        Ok(m.webhooks
            .iter()
            .find(|(w, _)| w.id == id)
            .map(|(w, _)| (w.clone(), None)))
    }

    async fn secret(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let m = self.lock();
        Ok(m.webhooks
            .iter()
            .find(|(w, _)| w.id == id)
            .map(|(_, s)| s.clone()))
    }

    async fn list(
        &self,
        _subtree: Option<TenantPath>,
        tenant_id: Option<Uuid>,
    ) -> Result<Vec<Webhook>, StoreError> {
        let m = self.lock();
        let all = m.webhooks.iter().map(|(w, _)| w.clone());
        Ok(all
            .filter(|w| tenant_id.is_none() || w.tenant_id == tenant_id)
            .collect())
    }

    async fn update(
        &self,
        w: Webhook,
        expected: i64,
        secret: Option<String>,
        _: Journal,
    ) -> Result<i64, WebhookError> {
        let mut m = self.lock();
        let (stored, stored_secret) = m
            .webhooks
            .iter_mut()
            .find(|(s, _)| s.id == w.id)
            .ok_or(WebhookError::NotFound)?;
        if stored.version != expected {
            return Err(WebhookError::Stale);
        }
        *stored = Webhook {
            version: expected + 1,
            ..w
        };
        if let Some(s) = secret {
            *stored_secret = s;
        }
        Ok(expected + 1)
    }

    async fn rotate_secret(
        &self,
        id: Uuid,
        expected: i64,
        secret: String,
        previous_expires_at: OffsetDateTime,
        now: OffsetDateTime,
        _: Journal,
    ) -> Result<Webhook, WebhookError> {
        let mut m = self.lock();
        let (stored, stored_secret) = m
            .webhooks
            .iter_mut()
            .find(|(s, _)| s.id == id)
            .ok_or(WebhookError::NotFound)?;
        if stored.version != expected {
            return Err(WebhookError::Stale);
        }
        let replaced = std::mem::replace(stored_secret, secret);
        stored.version += 1;
        stored.updated_at = now;
        let after = stored.clone();
        m.previous.insert(
            0,
            (
                id,
                PreviousSecret {
                    secret_encrypted: replaced,
                    expires_at: previous_expires_at,
                },
            ),
        );
        let mut kept = 0;
        m.previous.retain(|(w, p)| {
            if *w != id {
                return true;
            }
            kept += 1;
            p.expires_at > now && kept <= stratum_webhooks::MAX_PREVIOUS_SECRETS
        });
        let previous_secret_expires_at = previous_of(&m.previous, id, now)
            .iter()
            .map(|p| p.expires_at)
            .max();
        Ok(Webhook {
            previous_secret_expires_at,
            ..after
        })
    }

    async fn delete(&self, id: Uuid, expected: i64, _: Journal) -> Result<(), WebhookError> {
        let mut m = self.lock();
        match m.webhooks.iter().position(|(w, _)| w.id == id) {
            Some(i) if m.webhooks[i].0.version == expected => {
                m.webhooks.remove(i);
                Ok(())
            }
            Some(_) => Err(WebhookError::Stale),
            None => Err(WebhookError::NotFound),
        }
    }

    async fn journal(&self, _: Journal) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl DeliveryStore for InMemory {
    async fn list_for_webhook(
        &self,
        _: Uuid,
        _: Option<DeliveryStatus>,
        _: Option<Uuid>,
        _: Limit,
    ) -> Result<Vec<Delivery>, PageError> {
        Ok(Vec::new())
    }

    async fn stats(&self, _: Option<TenantPath>) -> Result<DeliveryStats, StoreError> {
        Ok(DeliveryStats::default())
    }

    async fn failed(
        &self,
        _: Option<TenantPath>,
        _: Limit,
    ) -> Result<Vec<FailedDelivery>, StoreError> {
        Ok(Vec::new())
    }

    async fn get(&self, _: Uuid) -> Result<Option<(Delivery, Option<TenantPath>)>, StoreError> {
        Ok(None)
    }

    async fn health(&self, _: Uuid, _: OffsetDateTime) -> Result<HealthFigures, StoreError> {
        Ok(HealthFigures::default())
    }

    async fn detail(&self, _: Uuid, _: Uuid) -> Result<Option<FailedDelivery>, StoreError> {
        Ok(None)
    }

    /// This store keeps no attempts: every bucket of the series is empty.
    async fn health_series(
        &self,
        _: Uuid,
        from: OffsetDateTime,
        bucket_seconds: i64,
        buckets: i64,
    ) -> Result<Vec<BucketFigures>, StoreError> {
        Ok((0..buckets)
            .map(|i| BucketFigures {
                start: from + time::Duration::seconds(i * bucket_seconds),
                attempts: 0,
                successes: 0,
                p50_latency_ms: None,
                p99_latency_ms: None,
            })
            .collect())
    }

    async fn attempts(&self, _: Uuid, _: Uuid) -> Result<Option<Vec<DeliveryAttempt>>, StoreError> {
        Ok(None)
    }

    async fn retry(&self, _: Uuid, _: Journal) -> Result<(), WebhookError> {
        Err(WebhookError::DeliveryNotFound)
    }

    async fn retry_all(&self, _: Option<TenantPath>, _: Journal) -> Result<u64, WebhookError> {
        Ok(0)
    }
}

#[async_trait]
impl DeliveryQueue for InMemory {
    async fn claim(
        &self,
        limit: usize,
        per_webhook: usize,
        rooms: Vec<(Uuid, usize)>,
        _lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // Oldest first, each webhook within its room (the dispatcher's adaptive limit).
        let room = |id: &Uuid| {
            rooms
                .iter()
                .find(|(w, _)| w == id)
                .map_or(per_webhook, |(_, r)| *r)
        };
        let mut m = self.lock();
        let mut taken: std::collections::HashMap<Uuid, usize> = Default::default();
        let mut claimed = Vec::new();
        let mut rest = Vec::new();
        for d in std::mem::take(&mut m.queue) {
            let n = taken.entry(d.webhook_id).or_default();
            if claimed.len() < limit && *n < room(&d.webhook_id) {
                *n += 1;
                claimed.push(d);
            } else {
                rest.push(d);
            }
        }
        m.queue = rest;
        for d in &mut claimed {
            d.lease_id = Uuid::now_v7();
        }
        Ok(claimed)
    }

    async fn complete(&self, completions: Vec<Completion>) -> Result<usize, StoreError> {
        let n = completions.len();
        self.lock().completions.extend(completions);
        self.completed.notify_one();
        Ok(n)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("RECEIVER_URL").unwrap_or_else(|_| "http://127.0.0.1:8099/hook".to_owned());
    let secret = std::env::var("WEBHOOK_SECRET").unwrap_or_else(|_| generate_whsec());
    // Secrets are kept encrypted; a real service reads its master key from its settings.
    let keyring = SharedKeyring::new(Keyring::from_env_values(&generate_whsec(), None)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = InMemory::default();
    // Local receivers are private addresses: allowed here, refused by default.
    let client = Arc::new(ReqwestDeliveryClient::new(ClientConfig {
        allow_private: true,
        ..ClientConfig::default()
    })?);
    let webhooks = WebhookService::new(
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Arc::new(SsrfGuard::new(true)),
        client.clone(),
        keyring.clone(),
        clock.clone(),
        RegistryConfig {
            allow_http: true,
            events: EventCatalogue::new().with(ORDER_SHIPPED, "An order left the warehouse."),
        },
    );
    let input = NewWebhook {
        url,
        events: vec![ORDER_SHIPPED.to_string()],
        secret: Some(secret),
        ..NewWebhook::default()
    };
    let (webhook, _) = webhooks.create(&Caller::system(), input).await?;
    println!("registered webhook {} for {}", webhook.id, webhook.url);

    store.publish(
        &ORDER_SHIPPED,
        json!({"order_id": "o-1001", "carrier": "DHL"}),
    );
    let dispatcher = Dispatcher::new(
        Arc::new(store.clone()),
        client,
        keyring,
        clock,
        RetryPolicy::default(),
        DispatcherConfig::default(),
    );
    let (stop, stopped) = watch::channel(false);
    let worker =
        tokio::spawn(async move { dispatcher.run(stopped, Arc::new(Notify::new())).await });
    store.completed.notified().await;
    stop.send(true)?;
    worker.await?;

    let completions = std::mem::take(&mut store.lock().completions);
    match completions.first() {
        Some(c) if c.verdict == Verdict::Success => {
            println!("delivered: the receiver answered {:?}", c.outcome.status);
            Ok(())
        }
        other => Err(format!("not delivered: {other:?}").into()),
    }
}
