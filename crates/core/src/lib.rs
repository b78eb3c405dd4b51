//! Stratum core: the vocabulary every other crate shares.
//!
//! Ids, who is acting ([`Actor`], [`Scope`]), where in the tenant tree ([`TenantPath`]),
//! what a mutation records alongside itself ([`Journal`]), the [`Clock`] port, pagination
//! and the wire format of timestamps.

#![warn(missing_docs)]

pub mod actor;
pub mod clock;
pub mod directory;
pub mod event;
pub mod ids;
pub mod journal;
pub mod page;
pub mod precondition;
pub mod probe;
pub mod store_error;
pub mod tenant_path;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod timefmt;
pub mod trace_context;

pub use actor::{Actor, ActorKind, Scope, TenantScope};
pub use clock::{Clock, SystemClock};
pub use directory::{TenantDirectory, TenantDirectoryExt, TenantEntry};
pub use event::{EventCatalogue, EventSpec, EventType, EventTypeError};
pub use ids::new_id;
pub use journal::{Caller, EventDraft, Forbidden, Journal, RequestMeta};
pub use page::{next_page, Limit, LimitError, PageError};
pub use precondition::{
    after_stale, check_precondition, etag, on_stale, OnStale, Precondition, WriteRefused,
    WRITE_ATTEMPTS,
};
pub use probe::{NotReady, PoolStats, StorageProbe};
pub use store_error::{BoxError, StoreError, KEY_RETRIES};
pub use tenant_path::TenantPath;
pub use text::TextError;

/// The marker that replaces secrets and sensitive values wherever they would be shown.
pub const REDACTED: &str = "[REDACTED]";
