//! In-flight accounting and concurrency control: the deliveries being sent, per webhook,
//! and each webhook's gate, whose size an [`AimdLimit`] adapts to how its receiver copes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{Id as TaskId, JoinError, JoinSet};
use tracing::{debug, error, warn};
use uuid::Uuid;

use super::{DispatcherStats, Inner};
use crate::concurrency::{AimdConfig, AimdLimit, Signal};
use crate::Verdict;
use crate::{ClaimedDelivery, Completion, WebhookConcurrency};

/// How long a webhook with nothing in flight keeps its learnt limit.
const IDLE_FORGET: Duration = Duration::from_secs(300);
/// How often idle webhooks are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// The gates of the webhooks this process sends to, shared with [`super::Dispatcher::snapshot`].
pub(super) type Gates = Mutex<HashMap<Uuid, Arc<WebhookGate>>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent at every await-free step, so a panic elsewhere
    // leaves nothing half-done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One webhook's concurrency: a semaphore holding `limit` permits, and the controller.
pub(super) struct WebhookGate {
    permits: Arc<Semaphore>,
    state: Mutex<GateState>,
}

struct GateState {
    controller: AimdLimit,
    /// Permits that exist (held or available); follows the controller's limit.
    issued: usize,
    /// Permits still to be withdrawn after a cut (they were held when it happened).
    debt: usize,
    /// Claimed here and not finished (sending, or waiting for a permit).
    claimed: usize,
    /// Sending now (holding a permit).
    sending: usize,
    /// When `claimed` last fell to zero.
    idle_since: Option<Instant>,
    /// Failed attempts in a row here since the last success.
    failures: u32,
    /// When `failures` reached the breaker's threshold (the breaker opened, or is about to):
    /// deliveries claimed before it are given back unsent, since the breaker admits only a
    /// probe claimed after it opened.
    tripped_at: Option<Instant>,
}

impl WebhookGate {
    fn new(config: AimdConfig) -> Self {
        let controller = AimdLimit::new(config);
        let limit = controller.limit();
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            state: Mutex::new(GateState {
                controller,
                issued: limit,
                debt: 0,
                claimed: 0,
                sending: 0,
                idle_since: None,
                failures: 0,
                tripped_at: None,
            }),
        }
    }

    /// Counts one attempt's result against the breaker's `threshold` (0: off).
    fn record_result(&self, ok: bool, threshold: u32) {
        let mut s = lock(&self.state);
        if ok {
            s.failures = 0;
            s.tripped_at = None;
        } else {
            s.failures = s.failures.saturating_add(1);
            if threshold > 0 && s.failures == threshold {
                s.tripped_at = Some(Instant::now());
            }
        }
    }

    /// Whether a delivery claimed at `claimed_at` was claimed before the breaker tripped.
    fn claimed_before_trip(&self, claimed_at: Instant) -> bool {
        lock(&self.state)
            .tripped_at
            .is_some_and(|tripped| claimed_at < tripped)
    }

    /// The current limit.
    pub(super) fn limit(&self) -> usize {
        lock(&self.state).controller.limit()
    }

    /// Claimed here and not finished.
    pub(super) fn claimed(&self) -> usize {
        lock(&self.state).claimed
    }

    /// How many more deliveries a claim may bring for this webhook: enough for one wave
    /// sending and the next one waiting, so the receiver stays busy between claims.
    pub(super) fn room(&self) -> usize {
        let s = lock(&self.state);
        s.controller
            .limit()
            .saturating_mul(2)
            .saturating_sub(s.claimed)
    }

    pub(super) fn snapshot(&self, webhook_id: Uuid) -> WebhookConcurrency {
        let s = lock(&self.state);
        WebhookConcurrency {
            webhook_id,
            in_flight: s.sending,
            waiting: s.claimed.saturating_sub(s.sending),
            limit: s.controller.limit(),
            baseline_latency: s.controller.baseline(),
        }
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed, so this only ever waits.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        lock(&self.state).sending += 1;
        permit
    }

    /// Feeds the controller with one attempt (none when nothing was sent) and gives the
    /// permit back, or withdraws it if a cut left more permits out than the limit.
    fn release(&self, permit: Option<OwnedSemaphorePermit>, sample: Option<(Signal, Duration)>) {
        let mut s = lock(&self.state);
        let in_flight = s.sending;
        s.sending = s.sending.saturating_sub(1);
        if let Some((signal, latency)) = sample {
            let before = s.controller.limit();
            let limit = s.controller.record(signal, latency, in_flight);
            if limit != before {
                debug!(
                    limit,
                    before,
                    ?signal,
                    latency_ms = latency.as_millis() as u64,
                    "webhook concurrency limit changed"
                );
            }
            let target = s.issued.saturating_sub(s.debt);
            if limit > target {
                let grow = limit - target;
                // Growth first pays back debt, then issues new permits.
                let repaid = grow.min(s.debt);
                s.debt -= repaid;
                let fresh = grow - repaid;
                s.issued += fresh;
                self.permits.add_permits(fresh);
            } else if limit < target {
                s.debt += target - limit;
            }
        }
        if let (true, Some(permit)) = (s.debt > 0, permit) {
            permit.forget();
            s.debt -= 1;
            s.issued -= 1;
            // Idle permits go at once too.
            let idle = self.permits.forget_permits(s.debt);
            s.debt -= idle;
            s.issued -= idle;
        }
    }
}

/// What a delivery task reports to: the completion writer (with whether the completion is
/// urgent: a FIFO lane waits for it), the claim loop's wake-up, and shutdown.
#[derive(Clone)]
pub(super) struct TaskLinks {
    pub(super) done: mpsc::Sender<(Completion, bool)>,
    pub(super) wake: Arc<Notify>,
    pub(super) shutdown: watch::Receiver<bool>,
}

/// Deliveries being sent (or waiting for their webhook's permit), per webhook.
pub(super) struct InFlight {
    pub(super) tasks: JoinSet<()>,
    webhook_of: HashMap<TaskId, Uuid>,
    gates: Arc<Gates>,
    config: AimdConfig,
    stats: Arc<DispatcherStats>,
    last_prune: Instant,
}

impl InFlight {
    pub(super) fn new(config: AimdConfig, gates: Arc<Gates>, stats: Arc<DispatcherStats>) -> Self {
        Self {
            tasks: JoinSet::new(),
            webhook_of: HashMap::new(),
            gates,
            config: config.normalized(),
            stats,
            last_prune: Instant::now(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn gate(&self, webhook: Uuid) -> Option<Arc<WebhookGate>> {
        lock(&self.gates).get(&webhook).cloned()
    }

    /// How much each known webhook may take in the next claim (0: none); webhooks not
    /// listed may take [`Self::default_room`].
    pub(super) fn rooms(&self) -> Vec<(Uuid, usize)> {
        lock(&self.gates)
            .iter()
            .map(|(id, g)| (*id, g.room()))
            .collect()
    }

    /// What a claim may bring for a webhook with nothing known about it yet.
    pub(super) fn default_room(&self) -> usize {
        self.config.initial.saturating_mul(2)
    }

    /// Webhooks with no room left: only their own finished sends free some.
    pub(super) fn saturated(&self) -> Vec<Uuid> {
        lock(&self.gates)
            .iter()
            .filter(|(_, g)| g.room() == 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Starts the attempt of `d` as a task that first waits for its webhook's permit.
    ///
    /// A FIFO lane's head that succeeds hands its lane over in the same task: the
    /// transaction that records it leases the lane's next delivery, which this task sends
    /// next (the lane keeps its one slot, and no claim round lies between two of its
    /// deliveries). Anything else goes to the completion writer.
    pub(super) fn spawn(&mut self, inner: Arc<Inner>, d: ClaimedDelivery, links: TaskLinks) {
        let webhook_id = d.webhook_id;
        let gate = {
            let mut gates = lock(&self.gates);
            Arc::clone(
                gates
                    .entry(webhook_id)
                    .or_insert_with(|| Arc::new(WebhookGate::new(self.config))),
            )
        };
        {
            let mut s = lock(&gate.state);
            s.claimed += 1;
            s.idle_since = None;
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let claimed = Instant::now();
        let handle = self.tasks.spawn(async move {
            let (mut d, mut claimed) = (d, claimed);
            loop {
                let fifo = d.fifo;
                let completion = attempt_in_gate(&inner, &gate, d, claimed).await;
                if fifo
                    && completion.verdict == Verdict::Success
                    && !super::stopping(&links.shutdown)
                {
                    match inner
                        .queue
                        .complete_and_claim_next(completion.clone(), inner.config.lease)
                        .await
                    {
                        Ok((_, Some(next))) => {
                            inner.stats.claimed(std::slice::from_ref(&next));
                            (d, claimed) = (next, Instant::now());
                            continue;
                        }
                        // Nothing due in the lane now. A delivery committed while this
                        // ran may have been skipped by a claim that still saw the head
                        // leased: the claim loop looks again.
                        Ok((_, None)) => {
                            links.wake.notify_one();
                            return;
                        }
                        // Whether it committed is unknown: the writer applies it again
                        // (only where its lease still holds). Had it committed, the next
                        // delivery's lease runs out before the lane moves on.
                        Err(e) => {
                            warn!(%webhook_id, error = %e, "handing a FIFO lane over failed; recording its head through the completion writer")
                        }
                    }
                }
                if links.done.send((completion, fifo)).await.is_err() {
                    warn!(%webhook_id, "completion writer is gone; the lease will expire and the delivery will be retried");
                }
                return;
            }
        });
        self.webhook_of.insert(handle.id(), webhook_id);
    }

    /// Accounts for a finished task; returns its webhook.
    pub(super) fn finish(&mut self, res: Result<(TaskId, ()), JoinError>) -> Option<Uuid> {
        let id = match res {
            Ok((id, ())) => id,
            Err(e) => {
                error!(error = %e, "webhook delivery task failed; its lease will expire");
                e.id()
            }
        };
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let webhook_id = self.webhook_of.remove(&id)?;
        if let Some(gate) = self.gate(webhook_id) {
            let mut s = lock(&gate.state);
            s.claimed = s.claimed.saturating_sub(1);
            if s.claimed == 0 {
                s.idle_since = Some(Instant::now());
            }
        }
        Some(webhook_id)
    }

    /// Accounts for every task that has already finished, and now and then forgets the
    /// webhooks idle for long (their receivers may have changed since).
    pub(super) fn reap(&mut self) {
        while let Some(res) = self.tasks.try_join_next_with_id() {
            let _webhook = self.finish(res);
        }
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = Instant::now();
            lock(&self.gates).retain(|_, g| {
                let s = lock(&g.state);
                s.claimed > 0 || s.idle_since.is_none_or(|t| t.elapsed() < IDLE_FORGET)
            });
        }
    }

    /// Claimed here and not finished, for `webhook`.
    pub(super) fn claimed(&self, webhook: Uuid) -> usize {
        self.gate(webhook).map_or(0, |g| g.claimed())
    }

    /// The current limit of `webhook`.
    pub(super) fn limit(&self, webhook: Uuid) -> usize {
        self.gate(webhook)
            .map_or(self.config.initial, |g| g.limit())
    }
}

/// Waits for `d`'s rate-limit slot and its webhook's permit, then attempts it, or gives it
/// back unsent; feeds the webhook's gate with what happened. `claimed` is when this
/// process got `d`.
async fn attempt_in_gate(
    inner: &Inner,
    gate: &WebhookGate,
    d: ClaimedDelivery,
    claimed: Instant,
) -> Completion {
    // A rate-limited delivery waits for its slot first (claimed with the lease, so no
    // other worker takes it meanwhile).
    if let Some(at) = d.not_before {
        let wait = at - inner.clock.now();
        if wait.is_positive() {
            tokio::time::sleep(wait.unsigned_abs()).await;
        }
    }
    let claimed_at = tokio::time::Instant::now();
    let permit = gate.acquire().await;
    let waited = claimed_at.elapsed();
    let late = d
        .not_before
        .map(|at| inner.clock.now() - at)
        .filter(|late| *late > super::RATE_SLOT_TOLERANCE);
    let (completion, sent) = if waited > inner.config.lease / 2 {
        (inner.give_back(&d, waited), false)
    } else if gate.claimed_before_trip(claimed) {
        // Claimed before this webhook's failures opened its breaker: the breaker now
        // admits only its probe, so this one waits for the breaker, unattempted.
        (inner.give_back(&d, waited), false)
    } else if let Some(late) = late {
        // Sent this late, it would share a second with later slots: the rate limit holds
        // only if each attempt starts near its slot. It goes back for a new one.
        (inner.give_back(&d, late.unsigned_abs()), false)
    } else {
        inner.attempt_measured(d).await
    };
    let sample = sent.then(|| {
        (
            Signal::from_status(completion.outcome.status),
            Duration::from_millis(u64::from(completion.outcome.duration_ms)),
        )
    });
    if sent {
        gate.record_result(
            completion.verdict == Verdict::Success,
            inner.config.breaker_threshold,
        );
    }
    gate.release(permit, sample);
    completion
}
