//! Webhooks, events and deliveries.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::WebhookError;

/// Every event a webhook can hear about, plus the synthetic test event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// A tenant was created.
    #[serde(rename = "tenant.created")]
    TenantCreated,
    /// A tenant's name, slug or metadata changed.
    #[serde(rename = "tenant.updated")]
    TenantUpdated,
    /// A tenant was archived.
    #[serde(rename = "tenant.deleted")]
    TenantDeleted,
    /// A tenant moved under another parent.
    #[serde(rename = "tenant.moved")]
    TenantMoved,
    /// A config key was set.
    #[serde(rename = "config.updated")]
    ConfigUpdated,
    /// A config key was removed.
    #[serde(rename = "config.deleted")]
    ConfigDeleted,
    /// A permission policy was created.
    #[serde(rename = "permission.created")]
    PermissionCreated,
    /// A permission policy changed.
    #[serde(rename = "permission.updated")]
    PermissionUpdated,
    /// A permission policy was removed.
    #[serde(rename = "permission.deleted")]
    PermissionDeleted,
    /// The synthetic event of `POST /webhooks/:id/test`; never subscribable.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    /// The nine events a webhook may subscribe to.
    pub const SUBSCRIBABLE: [EventType; 9] = [
        Self::TenantCreated,
        Self::TenantUpdated,
        Self::TenantDeleted,
        Self::TenantMoved,
        Self::ConfigUpdated,
        Self::ConfigDeleted,
        Self::PermissionCreated,
        Self::PermissionUpdated,
        Self::PermissionDeleted,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantCreated => "tenant.created",
            Self::TenantUpdated => "tenant.updated",
            Self::TenantDeleted => "tenant.deleted",
            Self::TenantMoved => "tenant.moved",
            Self::ConfigUpdated => "config.updated",
            Self::ConfigDeleted => "config.deleted",
            Self::PermissionCreated => "permission.created",
            Self::PermissionUpdated => "permission.updated",
            Self::PermissionDeleted => "permission.deleted",
            Self::WebhookTest => "webhook.test",
        }
    }

    /// Parses a wire name (including `webhook.test`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::SUBSCRIBABLE
            .into_iter()
            .chain([Self::WebhookTest])
            .find(|e| e.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-empty, duplicate-free list of subscribable events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriptions(Vec<EventType>);

impl Subscriptions {
    /// Validates event names.
    pub fn parse(names: &[String]) -> Result<Self, WebhookError> {
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
                .filter(|e| *e != EventType::WebhookTest)
                .ok_or_else(|| invalid(format!("unsupported event '{n}'")))?;
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

    /// The wire names.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|e| e.as_str().to_owned()).collect()
    }
}

/// A syntactically acceptable webhook target. Whether its host resolves to an allowed
/// address is the [`UrlGuard`](crate::UrlGuard) port's question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 2048;

impl WebhookUrl {
    /// Checks the shape: absolute, `https` (or `http` when `allow_http`), a host, no
    /// credentials, no fragment, at most 2048 characters.
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
    pub url: String,
    /// Subscribed events.
    pub events: Vec<String>,
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
    /// Changes with every write; the webhook's `ETag`. Not part of the JSON shape.
    #[serde(skip)]
    pub version: i64,
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
    pub fn as_str(self) -> &'static str {
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
    fn event_names_round_trip() {
        for e in EventType::SUBSCRIBABLE {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
            assert_eq!(
                serde_json::to_value(e).unwrap(),
                serde_json::json!(e.as_str())
            );
        }
        assert_eq!(EventType::parse("tenant.exploded"), None);
    }

    #[test]
    fn subscriptions_are_validated() {
        let s =
            |v: &[&str]| Subscriptions::parse(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert!(s(&["tenant.created", "config.updated"]).is_ok());
        assert!(s(&[]).is_err());
        assert!(s(&["tenant.created", "tenant.created"]).is_err());
        assert!(s(&["webhook.test"]).is_err());
        assert!(s(&["nope"]).is_err());
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
