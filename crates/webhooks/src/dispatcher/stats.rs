//! The dispatcher's counters and the snapshot of its state.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::histogram::{AtomicHistogram, ATTEMPT_BUCKETS, LATENCY_BUCKETS};
use crate::{ClaimedDelivery, Verdict};

/// Counters for metrics; every field only grows except `in_flight`.
#[derive(Debug)]
pub struct DispatcherStats {
    /// The breaker transitions its queue writes, when the queue counts them.
    pub breakers: std::sync::OnceLock<std::sync::Arc<crate::BreakerTransitions>>,
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
    /// Deliveries the last claim brought.
    pub last_claim_size: AtomicUsize,
    /// Completions the last batch wrote.
    pub last_completion_batch_size: AtomicUsize,
    /// Creation instant (Unix microseconds) of the oldest event in the last non-empty claim.
    last_claim_oldest_event_us: AtomicI64,
}

impl Default for DispatcherStats {
    fn default() -> Self {
        Self {
            breakers: std::sync::OnceLock::new(),
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
            last_claim_size: AtomicUsize::new(0),
            last_completion_batch_size: AtomicUsize::new(0),
            last_claim_oldest_event_us: AtomicI64::new(i64::MIN),
        }
    }
}

impl DispatcherStats {
    pub(crate) fn claimed(&self, batch: &[ClaimedDelivery]) {
        self.last_claim_size.store(batch.len(), Ordering::Relaxed);
        if let Some(oldest) = batch.iter().map(|d| d.event_created_at).min() {
            let us = oldest.unix_timestamp_nanos() / 1000;
            let us = i64::try_from(us).unwrap_or(i64::MIN);
            self.last_claim_oldest_event_us.store(us, Ordering::Relaxed);
        }
    }

    pub(crate) fn completed_batch(&self, n: usize) {
        self.last_completion_batch_size.store(n, Ordering::Relaxed);
    }

    /// The snapshot of these counters' instantaneous figures with the per-webhook ones.
    pub(crate) fn snapshot(
        &self,
        webhooks: Vec<WebhookConcurrency>,
        now: OffsetDateTime,
    ) -> DispatcherSnapshot {
        let us = self.last_claim_oldest_event_us.load(Ordering::Relaxed);
        let oldest_claimed_age = (us != i64::MIN)
            .then(|| OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok())
            .flatten()
            .map(|at| Duration::try_from(now - at).unwrap_or(Duration::ZERO));
        DispatcherSnapshot {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_claim_size: self.last_claim_size.load(Ordering::Relaxed),
            last_completion_batch_size: self.last_completion_batch_size.load(Ordering::Relaxed),
            oldest_claimed_age,
            webhooks,
        }
    }

    pub(crate) fn record(&self, verdict: &Verdict) {
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

/// One webhook's concurrency, as the dispatcher sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConcurrency {
    /// The webhook.
    pub webhook_id: Uuid,
    /// Attempts being sent to it now.
    pub in_flight: usize,
    /// Deliveries claimed for it here, waiting for a free slot.
    pub waiting: usize,
    /// Its adaptive concurrency limit.
    pub limit: usize,
    /// The latency its receiver answers in when not loaded, once one was seen.
    pub baseline_latency: Option<Duration>,
}

/// What the dispatcher is doing now (see [`super::Dispatcher::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherSnapshot {
    /// Deliveries claimed here and not finished.
    pub in_flight: usize,
    /// Deliveries the last claim brought.
    pub last_claim_size: usize,
    /// Completions the last completion batch wrote.
    pub last_completion_batch_size: usize,
    /// At the last claim that brought anything: how old the oldest event it brought was
    /// (how far the queue lags behind), measured now. `None` before the first.
    pub oldest_claimed_age: Option<Duration>,
    /// Every webhook this process sends to or sent to recently, by id.
    pub webhooks: Vec<WebhookConcurrency>,
}
