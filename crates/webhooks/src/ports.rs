//! The ports the webhook domain needs.

use std::time::Duration;

use async_trait::async_trait;
use stratum_core::StoreError;
use uuid::Uuid;

use crate::{AttemptOutcome, ClaimedDelivery, Completion, OutgoingRequest, WebhookUrl};

/// Sends one signed request to a receiver.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait DeliveryClient: Send + Sync {
    /// Performs the POST. Never fails as a call: transport errors, timeouts and blocked
    /// targets come back as an [`AttemptOutcome`] with `error` set and no status.
    async fn send(&self, request: OutgoingRequest) -> AttemptOutcome;
}

/// Decides whether a URL's host is an allowed target (SSRF guard).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UrlGuard: Send + Sync {
    /// `Err(reason)` when the host resolves to, or is, a blocked address, or cannot be
    /// resolved at all.
    async fn check(&self, url: &WebhookUrl) -> Result<(), String>;
}

/// The delivery queue: leases due deliveries to one worker at a time.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Leases up to `limit` due deliveries for `lease`, oldest first within each webhook
    /// and round-robin across webhooks: of a webhook listed in `rooms` at most its room
    /// (none when it is 0), of any other at most `per_webhook`. Commits before returning.
    async fn claim(
        &self,
        limit: usize,
        per_webhook: usize,
        rooms: Vec<(Uuid, usize)>,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Records the attempts and applies the verdicts, each only where its lease still
    /// holds; returns how many applied.
    async fn complete(&self, completions: Vec<Completion>) -> Result<usize, StoreError>;

    /// Records `head`, a FIFO lane head's successful attempt, as [`Self::complete`] does and,
    /// in the same transaction, leases the lane's next delivery for `lease` when it is due:
    /// the lane hands over without waiting for a claim. Returns whether `head` applied and
    /// the delivery leased, if any. A queue without hand-over leases nothing here (the next
    /// claim finds the lane's next head).
    async fn complete_and_claim_next(
        &self,
        head: Completion,
        lease: Duration,
    ) -> Result<(bool, Option<ClaimedDelivery>), StoreError> {
        let _ = lease;
        Ok((self.complete(vec![head]).await? == 1, None))
    }
}
