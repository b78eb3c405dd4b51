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
//!   already made, and its outcome carries only an explanatory `error` (or none when the
//!   delivery waited past half its lease for its webhook's slot and was given back).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stratum_core::Clock;
use stratum_crypto::{Keyring, SharedKeyring};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::policy::{add_saturating, RetryPolicy};
use crate::{
    AttemptOutcome, ClaimedDelivery, Completion, DeliveryClient, DeliveryQueue, OutgoingRequest,
    Verdict,
};

use crate::concurrency::AimdConfig;
use completer::{millis, run_completer, Backoff};
use in_flight::{lock, Gates, InFlight, TaskLinks};
pub use request::{build_request, random_jitter, BuildError};
pub use stats::{DispatcherSnapshot, DispatcherStats, WebhookConcurrency};

/// How long a delivery this process cannot sign is left for other processes.
pub const RELEASE_DELAY: Duration = Duration::from_secs(30);

/// How late after its rate-limit slot an attempt may still start; a later one is given
/// back unattempted for a new slot, so that no one-second window holds more than the
/// limit plus this share of it.
pub(crate) const RATE_SLOT_TOLERANCE: time::Duration = time::Duration::milliseconds(50);

/// The least time between two claims when the first came back short.
const SHORT_CLAIM_SPACING: Duration = Duration::from_millis(2);

pub(crate) const STORAGE_BACKOFF_MIN: Duration = Duration::from_millis(500);
pub(crate) const STORAGE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Default of [`DispatcherConfig::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 512;
/// Default of [`DispatcherConfig::per_webhook`].
pub const DEFAULT_MAX_PER_WEBHOOK: usize = 256;
/// Default of [`DispatcherConfig::initial_per_webhook`].
pub const DEFAULT_INITIAL_PER_WEBHOOK: usize = 8;

/// How the worker loop sizes its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// Deliveries in flight per process (`STRATUM_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Most deliveries in flight to one webhook, however well its receiver copes
    /// (`STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT`): the cap of the adaptive limit.
    pub per_webhook: usize,
    /// Deliveries in flight to a webhook before anything is known about its receiver
    /// (`STRATUM_WEBHOOK_INITIAL_IN_FLIGHT_PER_ENDPOINT`); the adaptive limit starts here.
    pub initial_per_webhook: usize,
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
    /// `STRATUM_WEBHOOK_BREAKER_THRESHOLD` (0: off): after this many failed attempts in a
    /// row to a webhook, deliveries this process claimed before them are given back unsent
    /// (the breaker shared in storage admits only its probe).
    pub breaker_threshold: u32,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            per_webhook: DEFAULT_MAX_PER_WEBHOOK,
            initial_per_webhook: DEFAULT_INITIAL_PER_WEBHOOK,
            batch_size: 256,
            lease: Duration::from_secs(120),
            poll_interval: Duration::from_secs(1),
            completion_batch: 256,
            completion_flush: Duration::from_millis(5),
            user_agent: format!("Stratum-Webhooks/{}", env!("CARGO_PKG_VERSION")),
            breaker_threshold: crate::BreakerConfig::default().threshold,
        }
    }
}

impl DispatcherConfig {
    /// The per-webhook controller's settings.
    pub fn aimd(&self) -> AimdConfig {
        AimdConfig {
            initial: self.initial_per_webhook,
            max: self.per_webhook,
            ..AimdConfig::default()
        }
    }

    /// Limits of zero would stall the loop; each counts as one.
    fn normalized(mut self) -> Self {
        self.concurrency = self.concurrency.max(1);
        self.per_webhook = self.per_webhook.max(1);
        self.initial_per_webhook = self.initial_per_webhook.clamp(1, self.per_webhook);
        self.batch_size = self.batch_size.max(1);
        self.completion_batch = self.completion_batch.max(1);
        self
    }
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
    gates: Arc<Gates>,
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
                gates: Arc::new(Gates::default()),
            }),
        }
    }

    /// The counters of this dispatcher.
    pub fn stats(&self) -> Arc<DispatcherStats> {
        Arc::clone(&self.inner.stats)
    }

    /// What the dispatcher is doing now: per webhook, deliveries in flight and waiting and
    /// the adaptive limit; the sizes of the last claim and completion batch.
    pub fn snapshot(&self) -> DispatcherSnapshot {
        let mut webhooks: Vec<WebhookConcurrency> = lock(&self.inner.gates)
            .iter()
            .map(|(id, g)| g.snapshot(*id))
            .collect();
        webhooks.sort_by_key(|w| w.webhook_id);
        self.inner.stats.snapshot(webhooks, self.inner.clock.now())
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
            per_webhook_initial = cfg.initial_per_webhook,
            per_webhook_max = cfg.per_webhook,
            "webhook dispatcher started"
        );
        let (tx, rx) = mpsc::channel(cfg.concurrency.saturating_add(cfg.completion_batch));
        let completer = tokio::spawn(run_completer(
            Arc::clone(&self.inner.queue),
            rx,
            cfg.completion_batch,
            cfg.completion_flush,
            Arc::clone(&self.inner.stats),
            Arc::clone(&wake),
            shutdown.clone(),
        ));
        let mut pool = InFlight::new(
            cfg.aimd(),
            Arc::clone(&self.inner.gates),
            Arc::clone(&self.inner.stats),
        );
        let mut backoff = Backoff::new(STORAGE_BACKOFF_MIN, STORAGE_BACKOFF_MAX);
        let links = TaskLinks {
            done: tx.clone(),
            wake: Arc::clone(&wake),
            shutdown: shutdown.clone(),
        };
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
            let rooms = pool.rooms();
            let default_room = pool.default_room();
            let keep_going = match self
                .inner
                .queue
                .claim(limit, default_room, rooms.clone(), cfg.lease)
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
                    self.inner.stats.claimed(&batch);
                    let mut in_batch: HashMap<Uuid, usize> = HashMap::new();
                    for d in batch {
                        *in_batch.entry(d.webhook_id).or_insert(0) += 1;
                        pool.spawn(Arc::clone(&self.inner), d, links.clone());
                    }
                    if claimed >= limit {
                        last_short_claim = None;
                        continue;
                    }
                    last_short_claim = Some(std::time::Instant::now());
                    // A short batch means nothing else is due, except for webhooks the
                    // per-webhook limit held back: only their own finished sends free room
                    // for them, so only those are a reason to claim again early. Those are
                    // the saturated ones and those the claim filled to their room (a room
                    // of 0 included: it asked none of them).
                    let mut held: Vec<Uuid> = pool.saturated();
                    let room_of: HashMap<Uuid, usize> = rooms.into_iter().collect();
                    held.extend(
                        room_of
                            .iter()
                            .filter(|(w, room)| in_batch.get(*w).copied().unwrap_or(0) >= **room)
                            .map(|(w, _)| *w),
                    );
                    held.extend(
                        in_batch
                            .iter()
                            .filter(|(w, n)| !room_of.contains_key(*w) && **n >= default_room)
                            .map(|(w, _)| *w),
                    );
                    held.sort_unstable();
                    held.dedup();
                    // One of them may already take more: its sends finished, or its limit
                    // grew, while the claim ran (a fast receiver answers within a claim's
                    // time). Waiting for its next finished send could then wait for a
                    // send that is not there, until the next wake-up or poll.
                    if held.iter().any(|w| pool.claimed(*w) <= pool.limit(*w)) {
                        continue;
                    }
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
        // Every sender must be gone for the writer to drain and stop.
        drop(links);
        drop(tx);
        if let Err(e) = completer.await {
            error!(error = %e, "webhook completion writer failed");
        }
        info!("webhook dispatcher stopped");
    }
}

impl Inner {
    async fn attempt(&self, d: ClaimedDelivery) -> Completion {
        self.attempt_measured(d).await.0
    }

    /// Gives `d` back unattempted, due at once: it waited for its webhook's slot for so
    /// long (the webhook's limit was cut meanwhile) that its lease might run out while it
    /// is being sent, and another worker would then send it too.
    fn give_back(&self, d: &ClaimedDelivery, waited: Duration) -> Completion {
        debug!(
            delivery_id = %d.id,
            webhook_id = %d.webhook_id,
            waited_ms = millis(waited),
            "delivery waited too long for its webhook's slot; giving it back"
        );
        let verdict = Verdict::Release {
            at: self.clock.now(),
        };
        self.stats.record(&verdict);
        Completion {
            delivery_id: d.id,
            event_id: d.event_id,
            lease_id: d.lease_id,
            webhook_id: d.webhook_id,
            attempt: d.attempts,
            outcome: AttemptOutcome::default(),
            verdict,
        }
    }

    /// The attempt and whether a request was sent (its outcome says something about the
    /// receiver).
    async fn attempt_measured(&self, d: ClaimedDelivery) -> (Completion, bool) {
        let started = self.clock.now();
        let number = d.attempts.saturating_add(1).max(1);
        let built = build_request(&d, &self.keyring.get(), started);
        let sent = built.is_ok();
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
                let completion = Completion {
                    delivery_id: d.id,
                    event_id: d.event_id,
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
                return (completion, false);
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
        let completion = Completion {
            delivery_id: d.id,
            event_id: d.event_id,
            lease_id: d.lease_id,
            webhook_id: d.webhook_id,
            attempt: number,
            outcome,
            verdict,
        };
        (completion, sent)
    }
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
                        .is_some_and(|w| held.contains(&w) && pool.claimed(w) <= pool.limit(w)),
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
pub(crate) fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

pub(crate) async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which counts as shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

mod completer;
mod in_flight;
mod request;
mod stats;
#[cfg(test)]
mod tests;
