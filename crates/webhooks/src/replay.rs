//! Replay: re-enqueue the stored events of a time window to one webhook, as a durable job
//! that a worker loop advances in short batches.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use stratum_core::timefmt::{rfc3339, rfc3339_opt};
use stratum_core::{new_id, Caller, Clock, Scope, StoreError};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Subscriptions, WebhookError, WebhookStore};

type Result<T> = std::result::Result<T, WebhookError>;

/// The longest window one replay may cover.
pub const MAX_REPLAY_WINDOW: time::Duration = time::Duration::days(90);

/// Where a replay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReplayStatus {
    /// Events remain to be enqueued.
    Running,
    /// Every event of the window has been enqueued.
    Completed,
}

impl ReplayStatus {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "completed" => Some(Self::Completed),
            _ => None,
        }
    }
}

/// A replay job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Replay {
    /// Id.
    pub id: Uuid,
    /// The webhook that receives the replayed events.
    pub webhook_id: Uuid,
    /// Start of the window (inclusive).
    #[serde(with = "rfc3339")]
    pub since: OffsetDateTime,
    /// End of the window (exclusive).
    #[serde(with = "rfc3339")]
    pub until: OffsetDateTime,
    /// The events the request narrowed the replay to; null: all the webhook receives.
    pub events: Option<Vec<String>>,
    /// `running` or `completed`.
    pub status: ReplayStatus,
    /// Events to enqueue in all.
    pub total: i64,
    /// Events enqueued so far.
    pub enqueued: i64,
    /// Requested.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the last event was enqueued.
    #[serde(with = "rfc3339_opt")]
    pub completed_at: Option<OffsetDateTime>,
}

/// What `POST /webhooks/:id/replay` carries.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReplay {
    /// Start of the window (inclusive).
    pub since: OffsetDateTime,
    /// End of the window (exclusive); now when absent.
    pub until: Option<OffsetDateTime>,
    /// Only these events (each one the webhook subscribes to).
    pub events: Option<Vec<String>>,
}

/// What one step of the worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayProgress {
    /// The job advanced.
    pub replay_id: Uuid,
    /// Deliveries enqueued by this step.
    pub enqueued: u64,
    /// The job is now completed.
    pub completed: bool,
}

/// Replay jobs.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ReplayStore: Send + Sync {
    /// Inserts the running job and its journal entry in one transaction, counting `total`
    /// there: the events of `[since, min(until, created_at))` of types `event_types` in the
    /// webhook's tenant audience (its tenant and every descendant today; every event for a
    /// global webhook). The journal's after-state gets the stored replay. Returns it.
    /// `NotFound` when the webhook is gone.
    async fn create(
        &self,
        replay: Replay,
        event_types: Vec<String>,
        journal: stratum_core::Journal,
    ) -> Result<Replay>;

    /// One replay of one webhook; `None` when unknown.
    async fn get(
        &self,
        webhook_id: Uuid,
        id: Uuid,
    ) -> std::result::Result<Option<Replay>, StoreError>;

    /// In one short transaction: takes one running job (skipping jobs another worker holds
    /// and jobs with `max_backlog` or more of their deliveries still pending), enqueues its
    /// next `batch` events oldest first as new pending deliveries, advances its cursor and
    /// count, completes it when nothing remains, and notifies the workers. `None` when no
    /// job could advance.
    async fn step(
        &self,
        batch: i64,
        max_backlog: i64,
    ) -> std::result::Result<Option<ReplayProgress>, StoreError>;
}

/// Starting and reading replays.
pub struct ReplayService {
    webhooks: Arc<dyn WebhookStore>,
    replays: Arc<dyn ReplayStore>,
    clock: Arc<dyn Clock>,
}

impl ReplayService {
    /// Wires the service.
    pub fn new(
        webhooks: Arc<dyn WebhookStore>,
        replays: Arc<dyn ReplayStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            webhooks,
            replays,
            clock,
        }
    }

    async fn visible_webhook(&self, caller: &Caller, id: Uuid) -> Result<crate::Webhook> {
        match self.webhooks.get(id).await? {
            Some((w, path)) if caller.actor.can_see_owned_by(path.as_ref()) => Ok(w),
            _ => Err(WebhookError::NotFound),
        }
    }

    /// Starts a replay of `input`'s window to webhook `webhook_id`.
    pub async fn start(
        &self,
        caller: &Caller,
        webhook_id: Uuid,
        input: NewReplay,
    ) -> Result<Replay> {
        caller.require(Scope::Write)?;
        let webhook = self.visible_webhook(caller, webhook_id).await?;
        let now = self.clock.now();
        let until = input.until.unwrap_or(now);
        if input.since >= until {
            return Err(WebhookError::Validation {
                field: "since",
                message: "must be before until".into(),
            });
        }
        if until - input.since > MAX_REPLAY_WINDOW {
            return Err(WebhookError::Validation {
                field: "until",
                message: "the window may span at most 90 days".into(),
            });
        }
        let event_types = match &input.events {
            None => webhook
                .events
                .iter()
                .map(|e| e.as_str().to_owned())
                .collect(),
            Some(names) => Subscriptions::parse_among(names, &webhook.events)?.names(),
        };
        let replay = Replay {
            id: new_id(),
            webhook_id,
            since: input.since,
            until,
            events: input.events,
            status: ReplayStatus::Running,
            total: 0,
            enqueued: 0,
            created_at: now,
            completed_at: None,
        };
        let journal = caller
            .journal("webhook.replayed", "webhook")
            .resource(webhook_id)
            .tenant(webhook.tenant_id)
            .after(Some(serde_json::to_value(&replay).unwrap_or(Value::Null)));
        self.replays.create(replay, event_types, journal).await
    }

    /// A replay of a webhook the caller can see.
    pub async fn get(&self, caller: &Caller, webhook_id: Uuid, id: Uuid) -> Result<Replay> {
        caller.require(Scope::Read)?;
        self.visible_webhook(caller, webhook_id).await?;
        self.replays
            .get(webhook_id, id)
            .await?
            .ok_or(WebhookError::ReplayNotFound)
    }
}

/// The replay worker's settings.
#[derive(Debug, Clone, Copy)]
pub struct ReplayerConfig {
    /// Events enqueued per step (`STRATUM_REPLAY_BATCH_SIZE`).
    pub batch: i64,
    /// A job waits while this many of its deliveries are pending (`STRATUM_REPLAY_MAX_BACKLOG`).
    pub max_backlog: i64,
    /// Pause after each step that enqueued something (`STRATUM_REPLAY_PAUSE_MS`).
    pub pause: Duration,
    /// Poll interval when no job could advance.
    pub idle: Duration,
}

impl Default for ReplayerConfig {
    fn default() -> Self {
        Self {
            batch: 100,
            max_backlog: 100,
            pause: Duration::from_millis(20),
            // Also the wait while a job's backlog is full: short, so the job refills soon.
            idle: Duration::from_millis(250),
        }
    }
}

/// The replay worker: advances running jobs one short transaction at a time, paced so
/// that live deliveries keep flowing.
pub struct Replayer {
    store: Arc<dyn ReplayStore>,
    config: ReplayerConfig,
}

impl Replayer {
    /// Wires the worker.
    pub fn new(store: Arc<dyn ReplayStore>, config: ReplayerConfig) -> Self {
        Self { store, config }
    }

    /// One step; what it did, if anything.
    pub async fn step(&self) -> std::result::Result<Option<ReplayProgress>, StoreError> {
        self.store
            .step(self.config.batch.max(1), self.config.max_backlog.max(1))
            .await
    }

    /// Runs until `stop` turns true.
    pub async fn run(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match self.step().await {
                Ok(Some(p)) => {
                    tracing::debug!(replay_id = %p.replay_id, enqueued = p.enqueued, completed = p.completed, "replay step");
                    self.config.pause
                }
                Ok(None) => self.config.idle,
                Err(e) => {
                    tracing::warn!(error = %e, "replay step failed; retrying");
                    self.config.idle
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
