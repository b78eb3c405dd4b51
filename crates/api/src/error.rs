//! The one mapping from failures to HTTP: stable codes, the API.md error body, generic 5xx.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use stratum_core::StoreError;

tokio::task_local! {
    /// The request id of the request being served, for error bodies and logs.
    pub static REQUEST_ID: String;
}

/// The request id of the current request, when inside one.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// One field-level problem.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable `SCREAMING_SNAKE` code.
    pub code: &'static str,
    /// Human text.
    pub message: String,
    /// Field-level details, when they help.
    pub details: Vec<FieldError>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    details: &'a [FieldError],
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// 400 `VALIDATION_ERROR` with no field.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    /// 400 `VALIDATION_ERROR` about one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            details: vec![FieldError {
                field: field.to_owned(),
                message: message.clone(),
            }],
            ..Self::validation(format!("{field}: {message}"))
        }
    }

    /// 404 with a specific code.
    pub fn not_found(code: &'static str, what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
    }

    /// 409 with a specific code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid API key is required",
        )
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    /// 412: `If-Match` named a version that is no longer current; nothing changed.
    pub fn precondition_failed(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "PRECONDITION_FAILED",
            format!("If-Match does not name the current version ({detail}); nothing changed"),
        )
    }

    /// 503: the database is unreachable; nothing changed.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "the database is unreachable; the request changed nothing, try again",
        )
    }

    /// 500: logs `cause` with the request id; the body stays generic.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(request_id = current_request_id().as_deref().unwrap_or("-"), error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let request_id = if self.status.is_server_error() {
            current_request_id()
        } else {
            None
        };
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                details: &self.details,
                request_id,
            },
        };
        let mut builder = HttpResponse::build(self.status);
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a late body may still arrive: the connection cannot be reused.
            builder.force_close();
        }
        let mut res = builder.json(body);
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable => Self::unavailable(),
            // Another process rotated the encryption key to one this process does not hold
            // (or rotated again while this write retried): nothing changed, and a process
            // started with the key (or this one, restarted) can answer.
            StoreError::KeyNotActive {
                active_key_id: key_id,
            }
            | StoreError::KeyUnavailable { key_id } => {
                tracing::warn!(
                    request_id = current_request_id().as_deref().unwrap_or("-"),
                    key_id = %key_id,
                    "a secret is under an encryption key this process does not hold; answering 503"
                );
                Self {
                    retry_after: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ENCRYPTION_KEY_UNAVAILABLE",
                        format!(
                            "this process does not hold encryption key {key_id}, which the data needs; \
                             nothing changed: retry (another process may answer) or restart this one with the key"
                        ),
                    )
                }
            }
            StoreError::Internal(cause) => Self::internal(cause),
        }
    }
}

impl From<stratum_tenancy::TenancyError> for ApiError {
    fn from(e: stratum_tenancy::TenancyError) -> Self {
        use stratum_tenancy::TenancyError as E;
        match e {
            E::Validation { field, message } => Self::field(field, message),
            E::TenantNotFound => Self::not_found("TENANT_NOT_FOUND", "tenant"),
            E::ConfigNotFound => Self::not_found("NOT_FOUND", "config key"),
            E::PermissionNotFound => Self::not_found("NOT_FOUND", "permission policy"),
            E::ApiKeyNotFound => Self::not_found("NOT_FOUND", "api key"),
            E::Conflict(m) => Self::conflict("CONFLICT", m),
            E::HasChildren => Self::conflict(
                "HAS_CHILDREN",
                "tenant has active children; archive or move them first",
            ),
            E::CycleDetected => Self::conflict(
                "CYCLE_DETECTED",
                "a tenant cannot move under itself or one of its descendants",
            ),
            E::ConfigLocked(key) => Self::conflict(
                "CONFIG_LOCKED",
                format!("config key '{key}' is locked by an ancestor"),
            ),
            E::Stale => Self::conflict("CONFLICT", "the resource changed concurrently; retry"),
            E::PreconditionFailed(m) => Self::precondition_failed(m),
            E::Forbidden(m) => Self::forbidden(m),
            E::Crypto(m) => Self::internal(format!("stored secret unreadable: {m}")),
            E::Store(s) => s.into(),
        }
    }
}

impl From<stratum_audit::AuditError> for ApiError {
    fn from(e: stratum_audit::AuditError) -> Self {
        use stratum_audit::AuditError as E;
        match e {
            E::NotFound => Self::not_found("AUDIT_ENTRY_NOT_FOUND", "audit entry"),
            E::BadCursor => Self::field("cursor", "does not name an audit entry"),
            E::TenantNotFound => Self::not_found("TENANT_NOT_FOUND", "tenant"),
            E::BadRange => Self::field("from", "must not be after 'to'"),
            E::Invalid { field, message } => Self::field(field, message),
            E::Forbidden(m) => Self::forbidden(m),
            E::Store(s) => s.into(),
        }
    }
}

impl From<stratum_core::LimitError> for ApiError {
    fn from(e: stratum_core::LimitError) -> Self {
        Self::field("limit", format!("must be between 1 and {}", e.max))
    }
}

impl From<stratum_webhooks::WebhookError> for ApiError {
    fn from(e: stratum_webhooks::WebhookError) -> Self {
        use stratum_webhooks::WebhookError as E;
        match e {
            E::Validation { field, message } => Self::field(field, message),
            E::UrlInvalid(m) => Self {
                details: vec![FieldError {
                    field: "url".into(),
                    message: m.clone(),
                }],
                ..Self::new(StatusCode::BAD_REQUEST, "WEBHOOK_URL_INVALID", m)
            },
            E::NotFound => Self::not_found("WEBHOOK_NOT_FOUND", "webhook"),
            E::DeliveryNotFound => Self::not_found("DELIVERY_NOT_FOUND", "delivery"),
            E::ReplayNotFound => Self::not_found("NOT_FOUND", "replay"),
            E::DeliveryNotFailed => Self::conflict(
                "DELIVERY_NOT_FAILED",
                "only a failed delivery can be retried",
            ),
            E::TenantNotFound => Self::not_found("TENANT_NOT_FOUND", "tenant"),
            E::Stale => Self::conflict("CONFLICT", "the webhook changed concurrently; retry"),
            E::PreconditionFailed(m) => Self::precondition_failed(m),
            E::Conflict(m) => Self::conflict("CONFLICT", m),
            E::LimitReached(m) => Self::conflict("CONFLICT", m),
            E::Forbidden(m) => Self::forbidden(m),
            E::Store(s) => s.into(),
        }
    }
}

impl From<stratum_consent::ConsentError> for ApiError {
    fn from(e: stratum_consent::ConsentError) -> Self {
        use stratum_consent::ConsentError as E;
        match e {
            E::Validation { field, message } => Self::field(field, message),
            E::TenantNotFound => Self::not_found("TENANT_NOT_FOUND", "tenant"),
            E::NotFound => Self::not_found("CONSENT_NOT_FOUND", "active consent"),
            E::Forbidden(m) => Self::forbidden(m),
            E::Conflict(m) => Self::conflict("CONFLICT", m),
            E::Store(s) => s.into(),
        }
    }
}

impl From<stratum_maintenance::MaintenanceError> for ApiError {
    fn from(e: stratum_maintenance::MaintenanceError) -> Self {
        use stratum_maintenance::MaintenanceError as E;
        match e {
            E::Validation { field, message } => Self::field(field, message),
            E::Forbidden(m) => Self::forbidden(m),
            E::InvalidOldKey => Self::new(
                StatusCode::BAD_REQUEST,
                "INVALID_OLD_KEY",
                "old_key is not the encryption key in use; nothing was changed",
            ),
            // Logged with the row it names; the body stays generic.
            E::RotationInProgress => Self::conflict(
                "ROTATION_IN_PROGRESS",
                "another key rotation is in progress; nothing was changed",
            ),
            E::Reencrypt { row, reason } => Self::internal(format!(
                "key rotation rolled back, nothing changed: {row} could not be re-encrypted: {reason}"
            )),
            E::Store(s) => s.into(),
        }
    }
}
