//! The delivery worker: claims due deliveries from the [`DeliveryQueue`], signs and sends
//! them through the [`DeliveryClient`], and writes each result back in batches.
//!
//! Fairness comes from two limits: a global in-flight limit (`concurrency`) and a
//! per-webhook one (`per_webhook`), so a slow or dead receiver holds at most a few slots
//! while every other webhook keeps flowing.
//!
//! Verdicts the dispatcher hands to [`DeliveryQueue::complete`]:
//! - `Success`, `Retry`, `Failed`, `Gone` follow one real attempt; `Completion::attempt` is
//!   its 1-based number (`attempts + 1`) and the queue records it.
//! - `Release` means the delivery was **not** attempted (its secret is encrypted under a key
//!   this process does not hold): the queue must give it back, due at `at`, without
//!   counting an attempt. Its `Completion::attempt` is the unchanged count of attempts
//!   already made, and its outcome carries only an explanatory `error`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use stratum_core::Clock;
use stratum_crypto::{sign_delivery, CryptoError, Keyring, SharedKeyring};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::{Id as TaskId, JoinError, JoinSet};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::histogram::{AtomicHistogram, ATTEMPT_BUCKETS, LATENCY_BUCKETS};
use crate::policy::{add_saturating, RetryPolicy};
use crate::{
    AttemptOutcome, ClaimedDelivery, Completion, DeliveryClient, DeliveryQueue, OutgoingRequest,
    Verdict,
};

/// How long a delivery this process cannot sign is left for other processes.
pub const RELEASE_DELAY: Duration = Duration::from_secs(30);

/// The least time between two claims when the first came back short.
const SHORT_CLAIM_SPACING: Duration = Duration::from_millis(2);

const STORAGE_BACKOFF_MIN: Duration = Duration::from_millis(500);
const STORAGE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How the worker loop sizes its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// Deliveries in flight per process (`STRATUM_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Deliveries in flight to one webhook (`STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT`).
    pub per_webhook: usize,
    /// Most deliveries leased by one claim.
    pub batch_size: usize,
    /// How long a claimed delivery stays leased to this process.
    pub lease: Duration,
    /// How often to look for due deliveries when no wake-up arrives.
    pub poll_interval: Duration,
    /// Most completions written by one call to the queue.
    pub completion_batch: usize,
    /// How long the first completion of a batch waits for company before being written.
    pub completion_flush: Duration,
    /// The `User-Agent` the delivery client should send.
    pub user_agent: String,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            per_webhook: 8,
            batch_size: 256,
            lease: Duration::from_secs(120),
            poll_interval: Duration::from_secs(1),
            completion_batch: 256,
            completion_flush: Duration::from_millis(5),
            user_agent: format!("Stratum-Webhooks/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl DispatcherConfig {
    /// Limits of zero would stall the loop; each counts as one.
    fn normalized(mut self) -> Self {
        self.concurrency = self.concurrency.max(1);
        self.per_webhook = self.per_webhook.max(1);
        self.batch_size = self.batch_size.max(1);
        self.completion_batch = self.completion_batch.max(1);
        self
    }
}

/// Counters for metrics; every field only grows except `in_flight`.
#[derive(Debug)]
pub struct DispatcherStats {
    /// Deliveries claimed and not yet finished (sending or waiting for a per-webhook slot).
    pub in_flight: AtomicUsize,
    /// Attempts made (a release is not an attempt).
    pub attempts_total: AtomicU64,
    /// Attempts answered with a 2xx.
    pub successes: AtomicU64,
    /// Attempts that did not succeed (retried, dead-lettered or gone).
    pub failures: AtomicU64,
    /// Deliveries dead-lettered after their last attempt.
    pub dead_lettered: AtomicU64,
    /// Deliveries whose receiver answered 410 Gone.
    pub gone: AtomicU64,
    /// Deliveries released unattempted because their secret's key is not held here.
    pub released: AtomicU64,
    /// Event created → 2xx received, in seconds.
    pub delivery_latency: AtomicHistogram,
    /// Attempts a delivery took until it succeeded or was dead-lettered.
    pub attempts_per_delivery: AtomicHistogram,
    /// Duration of one attempt, in seconds.
    pub attempt_duration: AtomicHistogram,
}

impl Default for DispatcherStats {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            attempts_total: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            gone: AtomicU64::new(0),
            released: AtomicU64::new(0),
            delivery_latency: AtomicHistogram::new(LATENCY_BUCKETS),
            attempts_per_delivery: AtomicHistogram::new(ATTEMPT_BUCKETS),
            attempt_duration: AtomicHistogram::new(LATENCY_BUCKETS),
        }
    }
}

impl DispatcherStats {
    fn record(&self, verdict: &Verdict) {
        let counter = match verdict {
            Verdict::Release { .. } => {
                self.released.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Success => &self.successes,
            Verdict::Retry { .. } => &self.failures,
            Verdict::Failed => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                &self.dead_lettered
            }
            Verdict::Gone => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                &self.gone
            }
        };
        self.attempts_total.fetch_add(1, Ordering::Relaxed);
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a delivery's request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The secret is encrypted under a key this process's keyring does not hold.
    #[error("webhook secret is encrypted under key {key_id}, which this process does not hold")]
    KeyUnavailable {
        /// The key id the stored secret names.
        key_id: String,
    },
    /// The stored secret is corrupt, tampered with, or not a usable signing secret.
    #[error("webhook secret cannot be decrypted: {0}")]
    SecretUnreadable(String),
    /// The event could not be encoded as JSON.
    #[error("event body cannot be encoded: {0}")]
    Body(String),
}

/// The JSON body a receiver gets; field order is the wire order.
#[derive(Serialize)]
struct Body<'a> {
    id: Uuid,
    event: &'a str,
    timestamp: String,
    tenant_id: Option<Uuid>,
    data: &'a Value,
}

/// Claims, signs, sends and completes webhook deliveries.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<dyn DeliveryQueue>,
    client: Arc<dyn DeliveryClient>,
    keyring: SharedKeyring,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
    config: DispatcherConfig,
    stats: Arc<DispatcherStats>,
}

impl Dispatcher {
    /// Wires the dispatcher to its ports; zero limits in `config` count as one.
    pub fn new(
        queue: Arc<dyn DeliveryQueue>,
        client: Arc<dyn DeliveryClient>,
        keyring: SharedKeyring,
        clock: Arc<dyn Clock>,
        policy: RetryPolicy,
        config: DispatcherConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue,
                client,
                keyring,
                clock,
                policy,
                config: config.normalized(),
                stats: Arc::new(DispatcherStats::default()),
            }),
        }
    }

    /// The counters of this dispatcher.
    pub fn stats(&self) -> Arc<DispatcherStats> {
        Arc::clone(&self.inner.stats)
    }

    /// Builds the signed request for one attempt of `d` at `now`.
    pub fn build_request(
        &self,
        d: &ClaimedDelivery,
        keyring: &Keyring,
        now: OffsetDateTime,
    ) -> Result<OutgoingRequest, BuildError> {
        build_request(d, keyring, now)
    }

    /// Makes one attempt of `d` and says what should happen next; never fails.
    ///
    /// A secret under a key this process does not hold gives [`Verdict::Release`] without
    /// calling the receiver (not an attempt); a corrupt secret counts as a failed attempt.
    pub async fn attempt(&self, d: ClaimedDelivery) -> Completion {
        self.inner.attempt(d).await
    }

    /// The worker loop; returns once `shutdown` turns true (or its sender is dropped), every
    /// in-flight send has finished and every completion has been written (or, if storage
    /// is failing at that point, given up: those leases expire and the deliveries return).
    ///
    /// Wakers should use [`Notify::notify_one`], which is remembered while the loop is busy.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>, wake: Arc<Notify>) {
        let cfg = &self.inner.config;
        info!(
            concurrency = cfg.concurrency,
            per_webhook = cfg.per_webhook,
            "webhook dispatcher started"
        );
        let (tx, rx) = mpsc::channel(cfg.concurrency.saturating_add(cfg.completion_batch));
        let completer = tokio::spawn(run_completer(
            Arc::clone(&self.inner.queue),
            rx,
            cfg.completion_batch,
            cfg.completion_flush,
            shutdown.clone(),
        ));
        let mut pool = InFlight::new(cfg.per_webhook, Arc::clone(&self.inner.stats));
        let mut backoff = Backoff::new(STORAGE_BACKOFF_MIN, STORAGE_BACKOFF_MAX);
        let mut last_short_claim: Option<std::time::Instant> = None;

        loop {
            pool.reap();
            if stopping(&shutdown) {
                break;
            }
            let free = cfg.concurrency.saturating_sub(pool.len());
            // Claim in batches, not one row per freed slot: each claim is a transaction,
            // and per-slot claims would make the database the bottleneck.
            let min_claim = (cfg.concurrency / 4).clamp(1, cfg.batch_size);
            if free < min_claim && !pool.is_empty() {
                let keep_going = pause(
                    &mut pool,
                    &mut shutdown,
                    None,
                    None,
                    Until::Finished(min_claim - free),
                )
                .await;
                if keep_going {
                    continue;
                }
                break;
            }
            // After a short claim, let a moment's worth of new work gather first: under a
            // steady trickle this turns a claim per event into a claim per few events.
            if let Some(at) = last_short_claim {
                let since = at.elapsed();
                if since < SHORT_CLAIM_SPACING {
                    tokio::time::sleep(SHORT_CLAIM_SPACING - since).await;
                }
            }
            let limit = free.min(cfg.batch_size);
            let skip = pool.saturated();
            let keep_going = match self
                .inner
                .queue
                .claim(limit, cfg.per_webhook, skip, cfg.lease)
                .await
            {
                Err(e) => {
                    let wait = backoff.next_delay();
                    error!(error = %e, retry_in_ms = millis(wait), "claiming webhook deliveries failed");
                    pause(&mut pool, &mut shutdown, None, Some(wait), Until::Woken).await
                }
                Ok(batch) => {
                    backoff.reset();
                    let claimed = batch.len();
                    // Webhooks that may have more due than this claim brought: those now
                    // over their wave, and those the claim's per-webhook cap cut off.
                    let mut at_limit: Vec<Uuid> = Vec::new();
                    let mut in_batch: HashMap<Uuid, usize> = HashMap::new();
                    for d in batch {
                        let webhook = d.webhook_id;
                        let n = in_batch.entry(webhook).or_insert(0);
                        *n += 1;
                        let capped = *n >= cfg.per_webhook;
                        let count = pool.spawn(Arc::clone(&self.inner), d, tx.clone());
                        if (capped || count > cfg.per_webhook) && !at_limit.contains(&webhook) {
                            at_limit.push(webhook);
                        }
                    }
                    if claimed >= limit {
                        last_short_claim = None;
                        continue;
                    }
                    last_short_claim = Some(std::time::Instant::now());
                    // A short batch means nothing else is due, except for webhooks the
                    // per-webhook limit held back: only their own finished sends free room
                    // for them, so only those are a reason to claim again early.
                    let mut held: Vec<Uuid> = pool.saturated();
                    held.extend(at_limit);
                    let until = if held.is_empty() {
                        Until::Woken
                    } else {
                        Until::Unblocked(&held)
                    };
                    pause(
                        &mut pool,
                        &mut shutdown,
                        Some(&wake),
                        Some(cfg.poll_interval),
                        until,
                    )
                    .await
                }
            };
            if !keep_going {
                break;
            }
        }

        info!(
            in_flight = pool.len(),
            "webhook dispatcher stopping; waiting for in-flight deliveries"
        );
        while let Some(res) = pool.tasks.join_next_with_id().await {
            pool.finish(res);
        }
        drop(tx);
        if let Err(e) = completer.await {
            error!(error = %e, "webhook completion writer failed");
        }
        info!("webhook dispatcher stopped");
    }
}

impl Inner {
    async fn attempt(&self, d: ClaimedDelivery) -> Completion {
        let started = self.clock.now();
        let number = d.attempts.saturating_add(1).max(1);
        let built = build_request(&d, &self.keyring.get(), started);
        let outcome = match built {
            Ok(request) => self.client.send(request).await,
            Err(BuildError::KeyUnavailable { key_id }) => {
                warn!(
                    delivery_id = %d.id,
                    webhook_id = %d.webhook_id,
                    key_id = %key_id,
                    "webhook secret is encrypted under a key this process does not hold; releasing the delivery"
                );
                let verdict = Verdict::Release {
                    at: add_saturating(started, RELEASE_DELAY),
                };
                self.stats.record(&verdict);
                return Completion {
                    delivery_id: d.id,
                    lease_id: d.lease_id,
                    webhook_id: d.webhook_id,
                    attempt: d.attempts,
                    outcome: AttemptOutcome {
                        error: Some(format!(
                            "secret is encrypted under key {key_id} which this process does not hold; left for a process that does"
                        )),
                        ..AttemptOutcome::default()
                    },
                    verdict,
                };
            }
            Err(e) => {
                error!(
                    delivery_id = %d.id,
                    webhook_id = %d.webhook_id,
                    error = %e,
                    "cannot build webhook request"
                );
                AttemptOutcome {
                    error: Some(e.to_string()),
                    ..AttemptOutcome::default()
                }
            }
        };
        let policy_attempt = u32::try_from(number).unwrap_or(u32::MAX);
        let verdict =
            self.policy
                .classify(policy_attempt, &outcome, self.clock.now(), random_jitter());
        self.stats.record(&verdict);
        self.stats
            .attempt_duration
            .observe(f64::from(outcome.duration_ms) / 1000.0);
        if matches!(verdict, Verdict::Success | Verdict::Failed | Verdict::Gone) {
            self.stats.attempts_per_delivery.observe(f64::from(number));
        }
        if verdict == Verdict::Success {
            let age = self.clock.now() - d.event_created_at;
            self.stats.delivery_latency.observe(age.as_seconds_f64());
        }
        log_verdict(&d, number, &outcome, &verdict);
        Completion {
            delivery_id: d.id,
            lease_id: d.lease_id,
            webhook_id: d.webhook_id,
            attempt: number,
            outcome,
            verdict,
        }
    }
}

/// Builds the signed request for one attempt at `d` (body, both signature schemes, headers).
pub fn build_request(
    d: &ClaimedDelivery,
    keyring: &Keyring,
    now: OffsetDateTime,
) -> Result<OutgoingRequest, BuildError> {
    let secret = keyring
        .decrypt_str(&d.secret_encrypted)
        .map_err(|e| match e {
            CryptoError::KeyMismatch { found, .. } => BuildError::KeyUnavailable { key_id: found },
            other => BuildError::SecretUnreadable(other.to_string()),
        })?;
    let body = serde_json::to_vec(&Body {
        id: d.event_id,
        event: &d.event_type,
        timestamp: stratum_core::timefmt::format(d.event_created_at),
        tenant_id: d.tenant_id,
        data: &d.payload,
    })
    .map_err(|e| BuildError::Body(e.to_string()))?;
    let delivery_id = d.id.to_string();
    let signatures = sign_delivery(&secret, &delivery_id, now.unix_timestamp(), &body)
        .map_err(|e| BuildError::SecretUnreadable(e.to_string()))?;
    let timestamp = signatures.timestamp.to_string();
    let headers = vec![
        ("X-Stratum-Event".to_owned(), d.event_type.clone()),
        ("X-Stratum-Delivery".to_owned(), delivery_id.clone()),
        ("X-Stratum-Timestamp".to_owned(), timestamp.clone()),
        ("X-Stratum-Signature".to_owned(), signatures.stratum),
        ("webhook-id".to_owned(), delivery_id),
        ("webhook-timestamp".to_owned(), timestamp),
        ("webhook-signature".to_owned(), signatures.standard),
    ];
    Ok(OutgoingRequest {
        url: d.url.clone(),
        headers,
        body,
    })
}

fn log_verdict(d: &ClaimedDelivery, attempt: i32, outcome: &AttemptOutcome, verdict: &Verdict) {
    let (id, webhook, status) = (d.id, d.webhook_id, outcome.status);
    let ms = outcome.duration_ms;
    match verdict {
        Verdict::Success => {
            debug!(delivery_id = %id, webhook_id = %webhook, attempt, ?status, duration_ms = ms, "webhook delivered");
        }
        Verdict::Retry { at } => {
            debug!(
                delivery_id = %id, webhook_id = %webhook, attempt, ?status, duration_ms = ms,
                error = outcome.error.as_deref().unwrap_or_default(),
                next_attempt_at = %stratum_core::timefmt::format(*at),
                "webhook attempt failed; will retry"
            );
        }
        Verdict::Failed => {
            warn!(
                delivery_id = %id, webhook_id = %webhook, attempt, ?status, duration_ms = ms,
                error = outcome.error.as_deref().unwrap_or_default(),
                "webhook delivery dead-lettered after its last attempt"
            );
        }
        Verdict::Gone => {
            warn!(
                delivery_id = %id, webhook_id = %webhook, attempt,
                "receiver answered 410 Gone; delivery dead-lettered and webhook to be deactivated"
            );
        }
        Verdict::Release { .. } => {}
    }
}

/// A uniformly distributed number in `[0, 1)` for [`RetryPolicy::delay`]'s jitter.
pub fn random_jitter() -> f64 {
    // The low 62 bits of a v4 UUID are random (the two above them are the variant);
    // 53 of them fill an f64 mantissa exactly.
    let (_, low) = Uuid::new_v4().as_u64_pair();
    let bits = (low & ((1 << 62) - 1)) >> 9;
    // `bits` < 2^53, so both conversions are exact.
    bits as f64 / (1u64 << 53) as f64
}

/// Deliveries being sent (or waiting for their webhook's slot), per webhook.
struct InFlight {
    tasks: JoinSet<()>,
    webhook_of: HashMap<TaskId, Uuid>,
    webhooks: HashMap<Uuid, WebhookSlots>,
    per_webhook: usize,
    stats: Arc<DispatcherStats>,
}

struct WebhookSlots {
    count: usize,
    gate: Arc<Semaphore>,
}

impl InFlight {
    fn new(per_webhook: usize, stats: Arc<DispatcherStats>) -> Self {
        Self {
            tasks: JoinSet::new(),
            webhook_of: HashMap::new(),
            webhooks: HashMap::new(),
            per_webhook,
            stats,
        }
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Deliveries of `webhook` claimed here and not finished.
    fn count(&self, webhook: Uuid) -> usize {
        self.webhooks.get(&webhook).map_or(0, |s| s.count)
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Webhooks with a wave sending and more queued behind it: claim nothing more for them.
    fn saturated(&self) -> Vec<Uuid> {
        self.webhooks
            .iter()
            .filter(|(_, s)| s.count > self.per_webhook)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Starts the attempt of `d` as a task that first waits for its webhook's slot;
    /// returns how many deliveries of that webhook are now in flight.
    fn spawn(
        &mut self,
        inner: Arc<Inner>,
        d: ClaimedDelivery,
        done: mpsc::Sender<Completion>,
    ) -> usize {
        let webhook_id = d.webhook_id;
        let per_webhook = self.per_webhook;
        let slots = self
            .webhooks
            .entry(webhook_id)
            .or_insert_with(|| WebhookSlots {
                count: 0,
                gate: Arc::new(Semaphore::new(per_webhook)),
            });
        slots.count += 1;
        let count = slots.count;
        let gate = Arc::clone(&slots.gate);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let handle = self.tasks.spawn(async move {
            // The gate is never closed, so this only ever waits.
            let permit = gate.acquire_owned().await.ok();
            let completion = inner.attempt(d).await;
            drop(permit);
            if done.send(completion).await.is_err() {
                warn!(%webhook_id, "completion writer is gone; the lease will expire and the delivery will be retried");
            }
        });
        self.webhook_of.insert(handle.id(), webhook_id);
        count
    }

    /// Accounts for a finished task; returns its webhook.
    fn finish(&mut self, res: Result<(TaskId, ()), JoinError>) -> Option<Uuid> {
        let id = match res {
            Ok((id, ())) => id,
            Err(e) => {
                error!(error = %e, "webhook delivery task failed; its lease will expire");
                e.id()
            }
        };
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let webhook_id = self.webhook_of.remove(&id)?;
        if let Some(slots) = self.webhooks.get_mut(&webhook_id) {
            slots.count = slots.count.saturating_sub(1);
            if slots.count == 0 {
                self.webhooks.remove(&webhook_id);
            }
        }
        Some(webhook_id)
    }

    /// Accounts for every task that has already finished.
    fn reap(&mut self) {
        while let Some(res) = self.tasks.try_join_next_with_id() {
            let _webhook = self.finish(res);
        }
    }
}

/// Waits for `wait` to pass, a wake-up, shutdown or (when `return_on_slot`) a finished send,
/// accounting for finished sends meanwhile; `false` means shut down.
async fn pause(
    pool: &mut InFlight,
    shutdown: &mut watch::Receiver<bool>,
    wake: Option<&Notify>,
    wait: Option<Duration>,
    until: Until<'_>,
) -> bool {
    let sleep = optional(wait.map(tokio::time::sleep));
    tokio::pin!(sleep);
    let mut finished = 0;
    loop {
        tokio::select! {
            () = wait_for_shutdown(shutdown) => return false,
            () = &mut sleep => return true,
            () = optional(wake.map(Notify::notified)) => return true,
            Some(res) = pool.tasks.join_next_with_id(), if !pool.is_empty() => {
                let webhook = pool.finish(res);
                finished += 1;
                let done = match until {
                    Until::Woken => false,
                    Until::Finished(n) => finished >= n || pool.is_empty(),
                    // Wait until a full wave is sending and none is queued behind it:
                    // the next claim then brings a whole batch for this webhook (not a row
                    // per finished send) while the current wave keeps the receiver busy.
                    Until::Unblocked(held) => webhook
                        .is_some_and(|w| held.contains(&w) && pool.count(w) <= pool.per_webhook),
                };
                if done {
                    return true;
                }
            }
        }
    }
}

/// What, besides a wake-up, a timeout or shutdown, ends a pause.
#[derive(Clone, Copy)]
enum Until<'a> {
    /// Nothing else.
    Woken,
    /// This many sends finished (or none is left).
    Finished(usize),
    /// A send of one of these held-back webhooks finished, so it may take more.
    Unblocked(&'a [Uuid]),
}

/// Awaits `f`, or forever when there is none.
async fn optional<F: Future<Output = ()>>(f: Option<F>) {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Whether shutdown was signalled (or can no longer be, its sender being gone).
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which counts as shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Writes completions in batches; retries failed writes until shutdown.
async fn run_completer(
    queue: Arc<dyn DeliveryQueue>,
    mut rx: mpsc::Receiver<Completion>,
    batch: usize,
    flush: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = Vec::with_capacity(batch);
    loop {
        if rx.recv_many(&mut buf, batch).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + flush;
        while buf.len() < batch {
            let room = batch - buf.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut buf, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        write_completions(queue.as_ref(), &mut buf, &mut shutdown).await;
    }
}

/// Writes `buf` and empties it, retrying storage errors with backoff until shutdown.
async fn write_completions(
    queue: &dyn DeliveryQueue,
    buf: &mut Vec<Completion>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(STORAGE_BACKOFF_MIN, STORAGE_BACKOFF_MAX);
    loop {
        match queue.complete(buf.clone()).await {
            Ok(applied) => {
                if applied < buf.len() {
                    debug!(
                        skipped = buf.len() - applied,
                        "some completions were not applied: their leases had expired"
                    );
                }
                buf.clear();
                return;
            }
            Err(e) if stopping(shutdown) => {
                error!(
                    error = %e,
                    dropped = buf.len(),
                    "could not record delivery results while shutting down; their leases will expire and they will be attempted again"
                );
                buf.clear();
                return;
            }
            Err(e) => {
                let wait = backoff.next_delay();
                error!(
                    error = %e,
                    pending = buf.len(),
                    retry_in_ms = millis(wait),
                    "recording delivery results failed; will retry"
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wait_for_shutdown(shutdown) => {}
                }
            }
        }
    }
}

/// Doubling delays between storage retries.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let current = self.next;
        self.next = current.saturating_mul(2).min(self.max);
        current
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashSet, VecDeque};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use serde_json::json;
    use stratum_core::clock::MockClock;
    use stratum_core::StoreError;
    use stratum_crypto::{generate_whsec, verify_standard, verify_stratum};
    use time::macros::datetime;

    use super::*;
    use crate::{MockDeliveryClient, MockDeliveryQueue};

    const NOW: OffsetDateTime = datetime!(2026-01-31 09:15:00 UTC);
    const EVENT_AT: OffsetDateTime = datetime!(2026-01-31 09:14:59.123456 UTC);
    const MASTER: &str = "dispatcher-test-master-key-0123456789";
    const OTHER_MASTER: &str = "some-other-process-key-0123456789abc";
    const PLAIN_SECRET: &str = "a-plain-secret-of-reasonable-length";

    fn keyring() -> Keyring {
        Keyring::from_env_values(MASTER, None).unwrap()
    }

    fn fixed_clock() -> Arc<dyn Clock> {
        let mut clock = MockClock::new();
        clock.expect_now().return_const(NOW);
        Arc::new(clock)
    }

    fn delivery(secret_encrypted: String, webhook_id: Uuid, attempts: i32) -> ClaimedDelivery {
        ClaimedDelivery {
            id: Uuid::new_v4(),
            lease_id: Uuid::new_v4(),
            attempts,
            webhook_id,
            url: format!("https://receiver.example/{webhook_id}"),
            secret_encrypted,
            event_id: Uuid::new_v4(),
            event_type: "tenant.created".to_owned(),
            tenant_id: Some(Uuid::new_v4()),
            payload: json!({"name": "Acme", "slug": "acme", "nested": {"k": [1, 2]}}),
            event_created_at: EVENT_AT,
        }
    }

    fn good_delivery(attempts: i32) -> ClaimedDelivery {
        let secret = keyring().encrypt_str(PLAIN_SECRET).unwrap();
        delivery(secret, Uuid::new_v4(), attempts)
    }

    fn dispatcher_with(
        queue: impl DeliveryQueue + 'static,
        client: impl DeliveryClient + 'static,
        config: DispatcherConfig,
    ) -> Dispatcher {
        Dispatcher::new(
            Arc::new(queue),
            Arc::new(client),
            SharedKeyring::new(keyring()),
            fixed_clock(),
            RetryPolicy::default(),
            config,
        )
    }

    fn dispatcher(client: MockDeliveryClient) -> Dispatcher {
        dispatcher_with(
            MockDeliveryQueue::new(),
            client,
            DispatcherConfig::default(),
        )
    }

    fn client_answering(outcome: AttemptOutcome) -> MockDeliveryClient {
        let mut client = MockDeliveryClient::new();
        client.expect_send().times(1).return_const(outcome);
        client
    }

    fn status(code: u16) -> AttemptOutcome {
        AttemptOutcome {
            status: Some(code),
            duration_ms: 12,
            ..AttemptOutcome::default()
        }
    }

    fn header<'a>(req: &'a OutgoingRequest, name: &str) -> &'a str {
        let found: Vec<_> = req.headers.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(found.len(), 1, "exactly one {name} header");
        &found[0].1
    }

    fn retry_wait(verdict: &Verdict) -> time::Duration {
        match verdict {
            Verdict::Retry { at } => *at - NOW,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    // ---- build_request ----

    #[test]
    fn body_has_the_wire_fields_in_order() {
        let d = good_delivery(0);
        let req = dispatcher(MockDeliveryClient::new())
            .build_request(&d, &keyring(), NOW)
            .unwrap();
        let want = format!(
            r#"{{"id":"{}","event":"tenant.created","timestamp":"2026-01-31T09:14:59.123Z","tenant_id":"{}","data":{{"name":"Acme","nested":{{"k":[1,2]}},"slug":"acme"}}}}"#,
            d.event_id,
            d.tenant_id.unwrap()
        );
        assert_eq!(String::from_utf8(req.body).unwrap(), want);
        assert_eq!(req.url, d.url);
    }

    #[test]
    fn global_event_has_null_tenant() {
        let d = ClaimedDelivery {
            tenant_id: None,
            ..good_delivery(0)
        };
        let req = dispatcher(MockDeliveryClient::new())
            .build_request(&d, &keyring(), NOW)
            .unwrap();
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["tenant_id"], Value::Null);
        assert!(String::from_utf8(req.body)
            .unwrap()
            .contains(r#""tenant_id":null,"data":"#));
    }

    #[test]
    fn headers_and_both_signatures_verify() {
        let now_unix = NOW.unix_timestamp();
        for secret in [generate_whsec(), PLAIN_SECRET.to_owned()] {
            let d = delivery(keyring().encrypt_str(&secret).unwrap(), Uuid::new_v4(), 3);
            let req = dispatcher(MockDeliveryClient::new())
                .build_request(&d, &keyring(), NOW)
                .unwrap();
            let id = d.id.to_string();
            assert_eq!(header(&req, "X-Stratum-Delivery"), id);
            assert_eq!(header(&req, "webhook-id"), id);
            assert_eq!(header(&req, "X-Stratum-Event"), "tenant.created");
            let ts = header(&req, "X-Stratum-Timestamp");
            assert_eq!(ts, now_unix.to_string());
            assert_eq!(header(&req, "webhook-timestamp"), ts);
            assert_eq!(req.headers.len(), 7);
            let stratum_sig = header(&req, "X-Stratum-Signature");
            assert!(stratum_sig.starts_with("sha256="));
            assert_eq!(
                verify_stratum(secret.as_bytes(), ts, stratum_sig, &req.body, now_unix, 300),
                Ok(())
            );
            let standard_sig = header(&req, "webhook-signature");
            assert!(standard_sig.starts_with("v1,"));
            assert_eq!(
                verify_standard(&secret, &id, ts, standard_sig, &req.body, now_unix, 300),
                Ok(())
            );
            // The signature covers this delivery id, not another.
            assert!(verify_standard(
                &secret,
                &Uuid::new_v4().to_string(),
                ts,
                standard_sig,
                &req.body,
                now_unix,
                300
            )
            .is_err());
        }
    }

    #[test]
    fn build_errors_are_told_apart() {
        let stranger = Keyring::from_env_values(OTHER_MASTER, None).unwrap();
        let d = delivery(
            stranger.encrypt_str(PLAIN_SECRET).unwrap(),
            Uuid::new_v4(),
            0,
        );
        let dispatcher = dispatcher(MockDeliveryClient::new());
        assert_eq!(
            dispatcher.build_request(&d, &keyring(), NOW),
            Err(BuildError::KeyUnavailable {
                key_id: stranger.current().key_id().to_owned()
            })
        );
        for bad in [
            corrupt(&keyring().encrypt_str(PLAIN_SECRET).unwrap()),
            "not an envelope".to_owned(),
            keyring().encrypt_str("whsec_!!!").unwrap(),
        ] {
            let d = delivery(bad.clone(), Uuid::new_v4(), 0);
            assert!(
                matches!(
                    dispatcher.build_request(&d, &keyring(), NOW),
                    Err(BuildError::SecretUnreadable(_))
                ),
                "{bad}"
            );
        }
    }

    /// Flips one character of the ciphertext part, keeping the envelope's shape.
    fn corrupt(envelope: &str) -> String {
        let (head, ct) = envelope.rsplit_once(':').unwrap();
        let mut chars: Vec<char> = ct.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        format!("{head}:{}", chars.into_iter().collect::<String>())
    }

    // ---- attempt ----

    #[tokio::test]
    async fn success_on_2xx() {
        let d = good_delivery(0);
        let (id, webhook) = (d.id, d.webhook_id);
        let mut client = MockDeliveryClient::new();
        let expected_url = d.url.clone();
        client
            .expect_send()
            .withf(move |req| {
                req.url == expected_url
                    && req
                        .headers
                        .contains(&("X-Stratum-Delivery".to_owned(), id.to_string()))
            })
            .times(1)
            .return_const(status(204));
        let dispatcher = dispatcher(client);
        let c = dispatcher.attempt(d.clone()).await;
        assert_eq!(
            c,
            Completion {
                delivery_id: id,
                lease_id: d.lease_id,
                webhook_id: webhook,
                attempt: 1,
                outcome: status(204),
                verdict: Verdict::Success,
            }
        );
        let stats = dispatcher.stats();
        assert_eq!(stats.attempts_total.load(Ordering::Relaxed), 1);
        assert_eq!(stats.successes.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn server_error_on_first_attempt_retries_after_about_five_seconds() {
        let c = dispatcher(client_answering(status(500)))
            .attempt(good_delivery(0))
            .await;
        assert_eq!(c.attempt, 1);
        assert_eq!(c.outcome, status(500));
        let wait = retry_wait(&c.verdict);
        assert!(
            wait >= time::Duration::seconds(4) && wait <= time::Duration::seconds(6),
            "{wait}"
        );
    }

    #[tokio::test]
    async fn server_error_on_last_attempt_dead_letters() {
        let dispatcher = dispatcher(client_answering(status(500)));
        let c = dispatcher.attempt(good_delivery(7)).await;
        assert_eq!(c.attempt, 8);
        assert_eq!(c.verdict, Verdict::Failed);
        let stats = dispatcher.stats();
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn gone_on_410() {
        let dispatcher = dispatcher(client_answering(status(410)));
        let c = dispatcher.attempt(good_delivery(2)).await;
        assert_eq!((c.attempt, c.verdict), (3, Verdict::Gone));
        assert_eq!(dispatcher.stats().gone.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_clamped() {
        let answer = |code, secs| AttemptOutcome {
            retry_after_secs: Some(secs),
            ..status(code)
        };
        let c = dispatcher(client_answering(answer(429, 120)))
            .attempt(good_delivery(0))
            .await;
        assert_eq!(retry_wait(&c.verdict), time::Duration::seconds(120));
        let c = dispatcher(client_answering(answer(503, 1)))
            .attempt(good_delivery(0))
            .await;
        let wait = retry_wait(&c.verdict);
        assert!(
            wait >= time::Duration::seconds(4) && wait <= time::Duration::seconds(6),
            "{wait}"
        );
    }

    #[tokio::test]
    async fn transport_error_retries() {
        let outcome = AttemptOutcome {
            error: Some("connection refused".to_owned()),
            ..AttemptOutcome::default()
        };
        let c = dispatcher(client_answering(outcome.clone()))
            .attempt(good_delivery(1))
            .await;
        assert_eq!(c.attempt, 2);
        assert_eq!(c.outcome, outcome);
        let wait = retry_wait(&c.verdict);
        assert!(
            wait >= time::Duration::seconds(8) && wait <= time::Duration::seconds(12),
            "{wait}"
        );
    }

    #[tokio::test]
    async fn secret_under_unknown_key_is_released_unattempted() {
        let stranger = Keyring::from_env_values(OTHER_MASTER, None).unwrap();
        let d = delivery(
            stranger.encrypt_str(PLAIN_SECRET).unwrap(),
            Uuid::new_v4(),
            4,
        );
        let mut client = MockDeliveryClient::new();
        client.expect_send().times(0);
        let dispatcher = dispatcher(client);
        let c = dispatcher.attempt(d).await;
        assert_eq!(
            c.verdict,
            Verdict::Release {
                at: NOW + time::Duration::seconds(30)
            }
        );
        assert_eq!(c.attempt, 4, "a release does not count as an attempt");
        assert_eq!(c.outcome.status, None);
        let error = c.outcome.error.unwrap();
        assert!(error.contains(stranger.current().key_id()), "{error}");
        assert!(error.contains("does not hold"), "{error}");
        let stats = dispatcher.stats();
        assert_eq!(stats.released.load(Ordering::Relaxed), 1);
        assert_eq!(stats.attempts_total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn corrupt_secret_is_a_failed_attempt() {
        let corrupted = corrupt(&keyring().encrypt_str(PLAIN_SECRET).unwrap());
        for (attempts, last) in [(0, false), (7, true)] {
            let mut client = MockDeliveryClient::new();
            client.expect_send().times(0);
            let dispatcher = dispatcher(client);
            let c = dispatcher
                .attempt(delivery(corrupted.clone(), Uuid::new_v4(), attempts))
                .await;
            assert_eq!(c.attempt, attempts + 1);
            let error = c.outcome.error.clone().unwrap();
            assert!(
                error.starts_with("webhook secret cannot be decrypted: "),
                "{error}"
            );
            assert_eq!(c.outcome.status, None);
            if last {
                assert_eq!(c.verdict, Verdict::Failed);
            } else {
                retry_wait(&c.verdict);
            }
            assert_eq!(dispatcher.stats().attempts_total.load(Ordering::Relaxed), 1);
        }
    }

    #[test]
    fn jitter_is_in_unit_interval_and_varies() {
        let samples: Vec<f64> = (0..1000).map(|_| random_jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        let distinct: HashSet<u64> = samples.iter().map(|j| j.to_bits()).collect();
        assert!(distinct.len() > 990);
        assert!(samples.iter().any(|j| *j < 0.5) && samples.iter().any(|j| *j >= 0.5));
    }

    #[test]
    fn config_defaults_and_zero_limits() {
        let c = DispatcherConfig::default();
        assert_eq!((c.concurrency, c.per_webhook, c.batch_size), (64, 8, 256));
        assert_eq!(c.lease, Duration::from_secs(120));
        assert_eq!(
            c.user_agent,
            format!("Stratum-Webhooks/{}", env!("CARGO_PKG_VERSION"))
        );
        let zero = DispatcherConfig {
            concurrency: 0,
            per_webhook: 0,
            batch_size: 0,
            completion_batch: 0,
            ..DispatcherConfig::default()
        }
        .normalized();
        assert_eq!(
            (
                zero.concurrency,
                zero.per_webhook,
                zero.batch_size,
                zero.completion_batch
            ),
            (1, 1, 1, 1)
        );
    }

    // ---- run ----

    /// Records completions and wakes the test once `expected` distinct ones were written.
    #[derive(Clone, Default)]
    struct Written {
        completions: Arc<Mutex<Vec<Completion>>>,
        batch_sizes: Arc<Mutex<Vec<usize>>>,
        all_in: Arc<Notify>,
    }

    impl Written {
        fn push(&self, batch: Vec<Completion>, expected: usize) -> usize {
            let n = batch.len();
            self.batch_sizes.lock().unwrap().push(n);
            let mut all = self.completions.lock().unwrap();
            all.extend(batch);
            if all.len() >= expected {
                self.all_in.notify_one();
            }
            n
        }

        fn take(&self) -> Vec<Completion> {
            self.completions.lock().unwrap().clone()
        }
    }

    fn run_config() -> DispatcherConfig {
        DispatcherConfig {
            concurrency: 8,
            per_webhook: 8,
            batch_size: 8,
            ..DispatcherConfig::default()
        }
    }

    /// Runs `dispatcher` until `written` holds everything, then signals shutdown and waits
    /// for `run` to return. The timeout only turns a hang into a failure (virtual time).
    async fn run_until_written(dispatcher: &Dispatcher, written: &Written) {
        let (stop, stop_rx) = watch::channel(false);
        let worker = dispatcher.clone();
        let handle =
            tokio::spawn(async move { worker.run(stop_rx, Arc::new(Notify::new())).await });
        tokio::time::timeout(Duration::from_secs(3600), written.all_in.notified())
            .await
            .expect("every delivery should be completed");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(3600), handle)
            .await
            .expect("run should return after shutdown")
            .unwrap();
    }

    fn assert_each_once(completions: &[Completion], deliveries: &[ClaimedDelivery]) {
        let mut got: Vec<Uuid> = completions.iter().map(|c| c.delivery_id).collect();
        let mut want: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "each delivery completed exactly once");
    }

    #[tokio::test(start_paused = true)]
    async fn run_completes_a_batch_once_each_and_stops() {
        let deliveries: Vec<_> = (0..5).map(|_| good_delivery(0)).collect();
        let n = deliveries.len();
        let written = Written::default();
        let mut queue = MockDeliveryQueue::new();
        let mut pending = Some(deliveries.clone());
        queue
            .expect_claim()
            .returning(move |limit, per_webhook, _skip, lease| {
                assert!((1..=8).contains(&limit), "limit {limit}");
                assert_eq!(per_webhook, 8);
                assert_eq!(lease, Duration::from_secs(120));
                Ok(pending.take().unwrap_or_default())
            });
        let sink = written.clone();
        queue
            .expect_complete()
            .returning(move |batch| Ok(sink.push(batch, n)));
        let mut client = MockDeliveryClient::new();
        client.expect_send().times(n).return_const(status(200));
        let dispatcher = dispatcher_with(queue, client, run_config());

        run_until_written(&dispatcher, &written).await;

        let completions = written.take();
        assert_each_once(&completions, &deliveries);
        assert!(completions
            .iter()
            .all(|c| c.verdict == Verdict::Success && c.attempt == 1));
        // Results that finish together reach storage as one write.
        assert_eq!(*written.batch_sizes.lock().unwrap(), vec![n]);
        let stats = dispatcher.stats();
        assert_eq!(stats.successes.load(Ordering::Relaxed), 5);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn completion_writes_are_capped_at_the_batch_size() {
        let deliveries: Vec<_> = (0..5).map(|_| good_delivery(0)).collect();
        let n = deliveries.len();
        let written = Written::default();
        let mut queue = MockDeliveryQueue::new();
        let mut pending = Some(deliveries.clone());
        queue
            .expect_claim()
            .returning(move |_, _, _, _| Ok(pending.take().unwrap_or_default()));
        let sink = written.clone();
        queue
            .expect_complete()
            .returning(move |batch| Ok(sink.push(batch, n)));
        let mut client = MockDeliveryClient::new();
        client.expect_send().times(n).return_const(status(200));
        let config = DispatcherConfig {
            completion_batch: 2,
            ..run_config()
        };
        let dispatcher = dispatcher_with(queue, client, config);

        run_until_written(&dispatcher, &written).await;

        assert_each_once(&written.take(), &deliveries);
        let sizes = written.batch_sizes.lock().unwrap().clone();
        assert!(sizes.iter().all(|s| (1..=2).contains(s)), "{sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn storage_errors_are_retried_not_fatal() {
        let deliveries: Vec<_> = (0..3).map(|_| good_delivery(0)).collect();
        let n = deliveries.len();
        let written = Written::default();
        let mut queue = MockDeliveryQueue::new();
        let mut claims = 0;
        let mut pending = Some(deliveries.clone());
        queue.expect_claim().returning(move |_, _, _, _| {
            claims += 1;
            if claims <= 2 {
                return Err(StoreError::Unavailable);
            }
            Ok(pending.take().unwrap_or_default())
        });
        let sink = written.clone();
        let mut writes = 0;
        queue.expect_complete().returning(move |batch| {
            writes += 1;
            if writes <= 2 {
                return Err(StoreError::Internal("connection reset".into()));
            }
            Ok(sink.push(batch, n))
        });
        let mut client = MockDeliveryClient::new();
        client.expect_send().times(n).return_const(status(200));
        let dispatcher = dispatcher_with(queue, client, run_config());

        run_until_written(&dispatcher, &written).await;

        assert_each_once(&written.take(), &deliveries);
    }

    /// A receiver per webhook URL that takes `latency` per request and records the most
    /// requests it ever saw at once, per webhook and overall.
    #[derive(Default)]
    struct SlowReceivers {
        latency: HashMap<String, Duration>,
        state: Mutex<ReceiverState>,
    }

    #[derive(Default)]
    struct ReceiverState {
        now: HashMap<String, usize>,
        max: HashMap<String, usize>,
        total_now: usize,
        total_max: usize,
    }

    #[async_trait]
    impl DeliveryClient for SlowReceivers {
        async fn send(&self, request: OutgoingRequest) -> AttemptOutcome {
            {
                let mut s = self.state.lock().unwrap();
                let now = s.now.entry(request.url.clone()).or_default();
                *now += 1;
                let now = *now;
                let max = s.max.entry(request.url.clone()).or_default();
                *max = (*max).max(now);
                s.total_now += 1;
                s.total_max = s.total_max.max(s.total_now);
            }
            let latency = self
                .latency
                .get(&request.url)
                .copied()
                .unwrap_or(Duration::from_millis(10));
            tokio::time::sleep(latency).await;
            let mut s = self.state.lock().unwrap();
            *s.now.get_mut(&request.url).unwrap() -= 1;
            s.total_now -= 1;
            status(200)
        }
    }

    /// A queue in memory. `honour_per_webhook` decides whether `claim` applies its
    /// `per_webhook` argument; `skip_webhooks` is always honoured.
    struct MemoryQueue {
        due: Mutex<VecDeque<ClaimedDelivery>>,
        honour_per_webhook: bool,
        claims: Mutex<Vec<(usize, usize)>>,
        written: Written,
        expected: usize,
    }

    impl MemoryQueue {
        fn new(due: Vec<ClaimedDelivery>, honour_per_webhook: bool, written: Written) -> Self {
            Self {
                expected: due.len(),
                due: Mutex::new(due.into()),
                honour_per_webhook,
                claims: Mutex::new(Vec::new()),
                written,
            }
        }
    }

    #[async_trait]
    impl DeliveryQueue for MemoryQueue {
        async fn claim(
            &self,
            limit: usize,
            per_webhook: usize,
            skip_webhooks: Vec<Uuid>,
            _lease: Duration,
        ) -> Result<Vec<ClaimedDelivery>, StoreError> {
            self.claims.lock().unwrap().push((limit, per_webhook));
            let mut due = self.due.lock().unwrap();
            let mut taken = Vec::new();
            let mut per: HashMap<Uuid, usize> = HashMap::new();
            let mut rest = VecDeque::new();
            while let Some(d) = due.pop_front() {
                let count = per.entry(d.webhook_id).or_default();
                let allowed = !skip_webhooks.contains(&d.webhook_id)
                    && (!self.honour_per_webhook || *count < per_webhook)
                    && taken.len() < limit;
                if allowed {
                    *count += 1;
                    taken.push(d);
                } else {
                    rest.push_back(d);
                }
            }
            *due = rest;
            Ok(taken)
        }

        async fn complete(&self, completions: Vec<Completion>) -> Result<usize, StoreError> {
            Ok(self.written.push(completions, self.expected))
        }
    }

    fn deliveries_for(webhook: Uuid, n: usize) -> Vec<ClaimedDelivery> {
        let secret = keyring().encrypt_str(PLAIN_SECRET).unwrap();
        (0..n)
            .map(|_| delivery(secret.clone(), webhook, 0))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn per_webhook_limit_holds_even_when_the_queue_over_delivers() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut due = deliveries_for(a, 12);
        due.extend(deliveries_for(b, 12));
        due.extend(deliveries_for(c, 2));
        let written = Written::default();
        // This queue ignores `per_webhook`, so only the dispatcher can keep the limit.
        let queue = Arc::new(MemoryQueue::new(due.clone(), false, written.clone()));
        let client = Arc::new(SlowReceivers::default());
        let config = DispatcherConfig {
            concurrency: 6,
            per_webhook: 2,
            batch_size: 4,
            ..DispatcherConfig::default()
        };
        let dispatcher = Dispatcher::new(
            queue.clone(),
            client.clone(),
            SharedKeyring::new(keyring()),
            fixed_clock(),
            RetryPolicy::default(),
            config,
        );

        run_until_written(&dispatcher, &written).await;

        assert_each_once(&written.take(), &due);
        let state = client.state.lock().unwrap();
        for webhook in [a, b] {
            let url = format!("https://receiver.example/{webhook}");
            // Reaching 2 shows the sends really overlapped, so the bound was tested.
            assert_eq!(state.max.get(&url), Some(&2), "{url}");
        }
        assert!(state.total_max <= 6, "global limit: {}", state.total_max);
        for (limit, per_webhook) in queue.claims.lock().unwrap().iter() {
            assert!((1..=4).contains(limit), "claim limit {limit}");
            assert_eq!(*per_webhook, 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_receiver_does_not_hold_up_the_others() {
        let (slow, fast) = (Uuid::new_v4(), Uuid::new_v4());
        // The slow webhook's deliveries are first in line.
        let mut due = deliveries_for(slow, 20);
        due.extend(deliveries_for(fast, 20));
        let written = Written::default();
        let queue = Arc::new(MemoryQueue::new(due.clone(), true, written.clone()));
        let client = Arc::new(SlowReceivers {
            latency: HashMap::from([(
                format!("https://receiver.example/{slow}"),
                Duration::from_secs(10),
            )]),
            ..SlowReceivers::default()
        });
        let config = DispatcherConfig {
            concurrency: 8,
            per_webhook: 2,
            batch_size: 8,
            ..DispatcherConfig::default()
        };
        let dispatcher = Dispatcher::new(
            queue,
            client,
            SharedKeyring::new(keyring()),
            fixed_clock(),
            RetryPolicy::default(),
            config,
        );

        run_until_written(&dispatcher, &written).await;

        let completions = written.take();
        assert_each_once(&completions, &due);
        let last_fast = completions
            .iter()
            .rposition(|c| c.webhook_id == fast)
            .unwrap();
        let slow_before = completions[..last_fast]
            .iter()
            .filter(|c| c.webhook_id == slow)
            .count();
        // Every fast delivery (10 ms each) went out while the first slow ones (10 s each)
        // were still in flight; without per-webhook limits they would queue behind all 20.
        assert_eq!(slow_before, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_in_flight_sends_finish_and_flushes() {
        let deliveries: Vec<_> = (0..4).map(|_| good_delivery(0)).collect();
        let n = deliveries.len();
        let written = Written::default();
        let (stop, stop_rx) = watch::channel(false);
        let stop = Arc::new(stop);

        let mut queue = MockDeliveryQueue::new();
        let mut pending = Some(deliveries.clone());
        let stopped = Arc::clone(&stop);
        queue.expect_claim().returning(move |_, _, _, _| {
            assert!(!*stopped.borrow(), "no claims after shutdown");
            Ok(pending.take().unwrap_or_default())
        });
        let sink = written.clone();
        queue
            .expect_complete()
            .returning(move |batch| Ok(sink.push(batch, n)));

        /// Signals shutdown as soon as a send starts, then takes a while to answer.
        struct StopsMidway(Arc<watch::Sender<bool>>);
        #[async_trait]
        impl DeliveryClient for StopsMidway {
            async fn send(&self, _request: OutgoingRequest) -> AttemptOutcome {
                self.0.send_replace(true);
                tokio::time::sleep(Duration::from_secs(5)).await;
                status(200)
            }
        }

        let dispatcher = Dispatcher::new(
            Arc::new(queue),
            Arc::new(StopsMidway(Arc::clone(&stop))),
            SharedKeyring::new(keyring()),
            fixed_clock(),
            RetryPolicy::default(),
            run_config(),
        );
        tokio::time::timeout(
            Duration::from_secs(3600),
            dispatcher.run(stop_rx, Arc::new(Notify::new())),
        )
        .await
        .expect("run should return after shutdown");

        let completions = written.take();
        assert_each_once(&completions, &deliveries);
        assert!(completions.iter().all(|c| c.verdict == Verdict::Success));
    }

    #[tokio::test(start_paused = true)]
    async fn completions_failing_at_shutdown_are_given_up() {
        let deliveries: Vec<_> = (0..2).map(|_| good_delivery(0)).collect();
        let mut queue = MockDeliveryQueue::new();
        let mut pending = Some(deliveries);
        queue
            .expect_claim()
            .returning(move |_, _, _, _| Ok(pending.take().unwrap_or_default()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&attempts);
        queue.expect_complete().returning(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Unavailable)
        });
        let mut client = MockDeliveryClient::new();
        client.expect_send().times(2).return_const(status(200));
        let dispatcher = dispatcher_with(queue, client, run_config());
        let (stop, stop_rx) = watch::channel(false);
        let worker = dispatcher.clone();
        let handle =
            tokio::spawn(async move { worker.run(stop_rx, Arc::new(Notify::new())).await });
        // Let storage fail a few times (virtual time), then shut down.
        while attempts.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(3600), handle)
            .await
            .expect("run should return even though storage is down")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_claims_before_the_poll_interval() {
        let d = good_delivery(0);
        let written = Written::default();
        let mut queue = MockDeliveryQueue::new();
        let mut calls = 0;
        let mut pending = Some(vec![d.clone()]);
        let waker = Arc::new(Notify::new());
        let wake = Arc::clone(&waker);
        queue.expect_claim().returning(move |_, _, _, _| {
            calls += 1;
            if calls == 1 {
                // Nothing due yet; the event arrives and the outbox wakes the worker.
                wake.notify_one();
                return Ok(Vec::new());
            }
            Ok(pending.take().unwrap_or_default())
        });
        let sink = written.clone();
        queue
            .expect_complete()
            .returning(move |batch| Ok(sink.push(batch, 1)));
        let mut client = MockDeliveryClient::new();
        client.expect_send().times(1).return_const(status(200));
        let config = DispatcherConfig {
            poll_interval: Duration::from_secs(3600),
            ..run_config()
        };
        let dispatcher = dispatcher_with(queue, client, config);
        let (stop, stop_rx) = watch::channel(false);
        let worker = dispatcher.clone();
        let handle = tokio::spawn(async move { worker.run(stop_rx, waker).await });
        // With a one-hour poll interval, only the wake-up can deliver within a minute.
        tokio::time::timeout(Duration::from_secs(60), written.all_in.notified())
            .await
            .expect("the wake-up should trigger a claim");
        stop.send(true).unwrap();
        handle.await.unwrap();
        assert_each_once(&written.take(), &[d]);
    }
}
