//! Webhooks, events and deliveries.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use stratum_core::{EventCatalogue, EventType};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::WebhookError;

/// The synthetic event of `POST /webhooks/:id/test`; never subscribable.
pub const WEBHOOK_TEST: EventType = EventType::from_static("webhook.test");

/// A non-empty, duplicate-free list of events, each one of an allowed set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriptions(Vec<EventType>);

impl Subscriptions {
    /// Validates event names against the registered `catalogue` (`webhook.test` is never
    /// subscribable).
    ///
    /// ```
    /// use stratum_core::{EventCatalogue, EventType};
    /// use stratum_webhooks::Subscriptions;
    ///
    /// const PAID: EventType = EventType::from_static("invoice.paid");
    /// let catalogue = EventCatalogue::new().with(PAID, "An invoice was paid.");
    /// let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    /// let subs = Subscriptions::parse(&names(&["invoice.paid"]), &catalogue).unwrap();
    /// assert_eq!(subs.as_slice(), &[PAID]);
    /// assert!(Subscriptions::parse(&names(&["invoice.lost"]), &catalogue).is_err());
    /// assert!(Subscriptions::parse(&names(&[]), &catalogue).is_err());
    /// ```
    pub fn parse(names: &[String], catalogue: &EventCatalogue) -> Result<Self, WebhookError> {
        Self::parse_where(
            names,
            |e| *e != WEBHOOK_TEST && catalogue.contains(e),
            "unsupported event",
        )
    }

    /// Validates event names against the events a webhook subscribes to.
    pub fn parse_among(names: &[String], subscribed: &[EventType]) -> Result<Self, WebhookError> {
        Self::parse_where(
            names,
            |e| subscribed.contains(e),
            "the webhook does not subscribe to",
        )
    }

    fn parse_where(
        names: &[String],
        allowed: impl Fn(&EventType) -> bool,
        refusal: &str,
    ) -> Result<Self, WebhookError> {
        let invalid = |message: String| WebhookError::Validation {
            field: "events",
            message,
        };
        if names.is_empty() {
            return Err(invalid("must name at least one event".into()));
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let e = EventType::parse(n)
                .ok()
                .filter(|e| allowed(e))
                .ok_or_else(|| invalid(format!("{refusal} '{n}'")))?;
            if out.contains(&e) {
                return Err(invalid(format!("duplicate event '{n}'")));
            }
            out.push(e);
        }
        Ok(Self(out))
    }

    /// The events.
    pub fn as_slice(&self) -> &[EventType] {
        &self.0
    }

    /// The events, owned.
    pub fn into_vec(self) -> Vec<EventType> {
        self.0
    }

    /// The wire names.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|e| e.as_str().to_owned()).collect()
    }
}

/// A syntactically acceptable webhook target. Whether its host resolves to an allowed
/// address is the [`UrlGuard`](crate::UrlGuard) port's question. Serializes as the bare
/// string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WebhookUrl(String);

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 2048;

impl WebhookUrl {
    /// Checks the shape: absolute, `https` (or `http` when `allow_http`), a host, no
    /// credentials, no fragment, at most 2048 characters.
    ///
    /// ```
    /// use stratum_webhooks::WebhookUrl;
    ///
    /// let url = WebhookUrl::parse("https://hooks.example.com:8443/in?x=1", false).unwrap();
    /// assert_eq!(url.host(), "hooks.example.com");
    /// assert!(WebhookUrl::parse("http://hooks.example.com/in", false).is_err());
    /// assert!(WebhookUrl::parse("http://127.0.0.1:9000/in", true).is_ok());
    /// assert!(WebhookUrl::parse("https://user:pw@example.com/", false).is_err());
    /// ```
    pub fn parse(raw: &str, allow_http: bool) -> Result<Self, WebhookError> {
        let bad = |m: &str| WebhookError::UrlInvalid(m.to_owned());
        if raw.len() > MAX_URL_LEN {
            return Err(bad("url is longer than 2048 characters"));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("url contains whitespace or control characters"));
        }
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| bad("url must be absolute"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "https" => {}
            "http" if allow_http => {}
            "http" => return Err(bad("url must use https")),
            _ => return Err(bad("url must use https")),
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("url must not carry credentials"));
        }
        if raw.contains('#') {
            return Err(bad("url must not have a fragment"));
        }
        let host = host_of_authority(authority);
        if host.is_empty() {
            return Err(bad("url has no host"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A URL read back from storage, where only URLs [`parse`](Self::parse) accepted are
    /// written; for storage adapters, not for input.
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part (brackets of an IPv6 literal removed).
    pub fn host(&self) -> &str {
        let rest = self.0.split_once("://").map(|(_, r)| r).unwrap_or_default();
        host_of_authority(rest.split(['/', '?', '#']).next().unwrap_or_default())
    }
}

impl PartialEq<str> for WebhookUrl {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for WebhookUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn host_of_authority(authority: &str) -> &str {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
}

/// A registered webhook (the secret is never part of it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// Id.
    pub id: Uuid,
    /// `None` = global.
    pub tenant_id: Option<Uuid>,
    /// Target URL.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub url: WebhookUrl,
    /// Subscribed events.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub events: Vec<EventType>,
    /// Inactive webhooks receive nothing.
    pub active: bool,
    /// Free text.
    pub description: Option<String>,
    /// Created.
    #[serde(with = "stratum_core::timefmt::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "stratum_core::timefmt::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Most attempts started per second, over every process; `None`: no limit.
    pub rate_limit_per_second: Option<u32>,
    /// Whether deliveries go one at a time in commit order.
    pub ordering: DeliveryOrdering,
    /// Why the engine turned it off; cleared when it is turned on again.
    pub disabled_reason: Option<DisabledReason>,
    /// When the last of the previous secrets stops signing; `None` when none still signs.
    #[serde(with = "stratum_core::timefmt::rfc3339_opt")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// Changes with every write; the webhook's `ETag`. Not part of the JSON shape.
    #[serde(skip)]
    pub version: i64,
}

/// Most requests per second a rate limit may allow.
pub const MAX_RATE_LIMIT_PER_SECOND: u32 = 10_000;

/// Checks a rate limit: 1-10,000 per second.
pub fn validate_rate_limit(n: u32) -> Result<u32, WebhookError> {
    if (1..=MAX_RATE_LIMIT_PER_SECOND).contains(&n) {
        Ok(n)
    } else {
        Err(WebhookError::Validation {
            field: "rate_limit_per_second",
            message: "must be an integer from 1 to 10000, or null".into(),
        })
    }
}

/// How a webhook's deliveries are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOrdering {
    /// As many in flight as the receiver copes with, in no promised order.
    #[default]
    Unordered,
    /// One in flight, in the order the events' transactions committed; a failing delivery
    /// holds the lane until it succeeds or is dead-lettered.
    Fifo,
}

impl DeliveryOrdering {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unordered => "unordered",
            Self::Fifo => "fifo",
        }
    }

    /// Parses a stored or wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unordered" => Some(Self::Unordered),
            "fifo" => Some(Self::Fifo),
            _ => None,
        }
    }
}

/// Why the engine disabled a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DisabledReason {
    /// The receiver answered 410 Gone.
    Gone,
    /// Its circuit breaker stayed open for the configured time.
    Failing,
}

impl DisabledReason {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gone => "gone",
            Self::Failing => "failing",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gone" => Some(Self::Gone),
            "failing" => Some(Self::Failing),
            _ => None,
        }
    }
}

/// A secret that signs beside the current one until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// The secret, encrypted at rest.
    pub secret_encrypted: String,
    /// When it stops signing.
    pub expires_at: OffsetDateTime,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for (another) attempt.
    Pending,
    /// A 2xx was received.
    Success,
    /// Every attempt used, or the receiver said 410: the dead-letter queue.
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "success" => Some(Self::Success),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// Id; also the `X-Stratum-Delivery` / `webhook-id` header.
    pub id: Uuid,
    /// The webhook.
    pub webhook_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: String,
    /// The event's tenant.
    pub tenant_id: Option<Uuid>,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i32,
    /// When the next attempt is due.
    #[serde(with = "stratum_core::timefmt::rfc3339_opt")]
    pub next_retry_at: Option<OffsetDateTime>,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
    /// HTTP status of the last attempt.
    pub response_code: Option<i32>,
    /// Created.
    #[serde(with = "stratum_core::timefmt::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it succeeded or was dead-lettered.
    #[serde(with = "stratum_core::timefmt::rfc3339_opt")]
    pub completed_at: Option<OffsetDateTime>,
}

/// A delivery leased to one worker for one attempt, with what the attempt needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    /// Delivery id.
    pub id: Uuid,
    /// The lease; completion only applies while it still holds.
    pub lease_id: Uuid,
    /// Attempts made before this one.
    pub attempts: i32,
    /// The webhook.
    pub webhook_id: Uuid,
    /// Target URL.
    pub url: String,
    /// The webhook's secret, encrypted at rest.
    pub secret_encrypted: String,
    /// Secrets that still sign beside it until they expire (newest first).
    pub previous_secrets: Vec<PreviousSecret>,
    /// The webhook is FIFO: this is the head of its lane, the only delivery in flight.
    pub fifo: bool,
    /// The attempt may not start before this (its slot under the webhook's rate limit).
    pub not_before: Option<OffsetDateTime>,
    /// The event.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: String,
    /// The event's tenant.
    pub tenant_id: Option<Uuid>,
    /// The resource after the change.
    pub payload: Value,
    /// When the event happened.
    pub event_created_at: OffsetDateTime,
    /// The trace context (W3C `traceparent`) of the request that made the event, when it
    /// was traced and the queue reads it; opaque here.
    pub trace_context: Option<String>,
}

/// One HTTP request to a receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingRequest {
    /// Target URL.
    pub url: String,
    /// Headers besides `Content-Type` and `User-Agent`.
    pub headers: Vec<(String, String)>,
    /// The JSON body, exactly as signed.
    pub body: Vec<u8>,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// The trace context of the request that made the event ([`ClaimedDelivery::trace_context`]).
    pub trace_context: Option<String>,
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptOutcome {
    /// HTTP status, when a response came back.
    pub status: Option<u16>,
    /// `Retry-After` in seconds, when the receiver sent one.
    pub retry_after_secs: Option<u64>,
    /// Transport error (timeout, connect, blocked target), when no response came back.
    pub error: Option<String>,
    /// The first bytes of the response body (≤ 4 KiB).
    pub body_excerpt: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u32,
    /// The target was refused before sending (not `https` where that is required, or a
    /// blocked address): the same check as at registration, so retrying cannot help.
    pub refused: bool,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Success,
    /// Try again at this time.
    Retry {
        /// When the next attempt is due.
        at: OffsetDateTime,
    },
    /// Dead-letter it.
    Failed,
    /// The receiver said 410: dead-letter it and deactivate the webhook.
    Gone,
    /// This process cannot attempt it (e.g. its secret is under a key this process does
    /// not hold): give it back untouched for another process, after this time.
    Release {
        /// When it becomes claimable again.
        at: OffsetDateTime,
    },
}

/// The result of one attempt, to be written back under the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Delivery id.
    pub delivery_id: Uuid,
    /// The delivery's event (with the id, the storage finds the row without a search).
    pub event_id: Uuid,
    /// Must still be the row's lease, else the write is skipped.
    pub lease_id: Uuid,
    /// The webhook (deactivated on [`Verdict::Gone`]).
    pub webhook_id: Uuid,
    /// The attempt number this was (1-based).
    pub attempt: i32,
    /// What happened on the wire.
    pub outcome: AttemptOutcome,
    /// What happens next.
    pub verdict: Verdict,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_validated() {
        let catalogue = EventCatalogue::new()
            .with(EventType::from_static("tenant.created"), "created")
            .with(EventType::from_static("config.updated"), "updated")
            .with(
                WEBHOOK_TEST,
                "registered by mistake: still not subscribable",
            );
        let s = |v: &[&str]| {
            Subscriptions::parse(
                &v.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                &catalogue,
            )
        };
        assert_eq!(
            s(&["tenant.created", "config.updated"]).unwrap().names(),
            vec!["tenant.created", "config.updated"]
        );
        assert!(s(&[]).is_err());
        assert!(s(&["tenant.created", "tenant.created"]).is_err());
        assert!(s(&["webhook.test"]).is_err());
        assert!(s(&["nope"]).is_err());
        assert!(
            s(&["tenant.deleted"]).is_err(),
            "well formed, not registered"
        );
    }

    #[test]
    fn a_webhook_serializes_url_and_events_as_strings() {
        let w = Webhook {
            id: Uuid::nil(),
            tenant_id: None,
            url: WebhookUrl::parse("https://example.com/in", false).unwrap(),
            events: vec![EventType::from_static("tenant.created")],
            active: true,
            description: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            rate_limit_per_second: None,
            ordering: DeliveryOrdering::Unordered,
            disabled_reason: None,
            previous_secret_expires_at: None,
            version: 1,
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["url"], "https://example.com/in");
        assert_eq!(v["events"], serde_json::json!(["tenant.created"]));
    }

    #[test]
    fn url_shapes() {
        let ok = |u: &str| WebhookUrl::parse(u, false).is_ok();
        assert!(ok("https://example.com/hook"));
        assert!(ok("https://example.com:8443/hook?x=1"));
        assert!(!ok("http://example.com/hook"));
        assert!(WebhookUrl::parse("http://127.0.0.1:9/x", true).is_ok());
        assert!(!ok("ftp://example.com"));
        assert!(!ok("example.com/hook"));
        assert!(!ok("https://user:pw@example.com/"));
        assert!(!ok("https:///nohost"));
        assert!(!ok("https://example.com/a b"));
        assert!(!ok("https://example.com/#frag"));
        assert!(!ok(&format!("https://example.com/{}", "a".repeat(2100))));
        assert_eq!(
            WebhookUrl::parse("https://[::1]:8080/x", false)
                .unwrap()
                .host(),
            "::1"
        );
        assert_eq!(
            WebhookUrl::parse("https://Example.com:1/x", false)
                .unwrap()
                .host(),
            "Example.com"
        );
    }
}
