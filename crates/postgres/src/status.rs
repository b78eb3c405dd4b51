//! The status enums as the database stores them: each column holds the enum's `as_str`
//! name, and a stored name maps back through the one function of its enum here. A name the
//! enum does not know is an error (a row this release cannot read), never a default.

use stratum_core::StoreError;
use stratum_tenancy::TenantStatus;
use stratum_webhooks::{DeliveryStatus, ReplayStatus};

/// `tenants.status`: `active` or `archived`.
pub fn tenant(stored: &str) -> Result<TenantStatus, StoreError> {
    TenantStatus::parse(stored).ok_or_else(|| unknown("tenant", stored))
}

/// `webhook_deliveries.status`: `pending`, `success` or `failed`.
pub fn delivery(stored: &str) -> Result<DeliveryStatus, StoreError> {
    DeliveryStatus::parse(stored).ok_or_else(|| unknown("delivery", stored))
}

/// `webhook_replays.status`: `running` or `completed`.
pub fn replay(stored: &str) -> Result<ReplayStatus, StoreError> {
    ReplayStatus::parse(stored).ok_or_else(|| unknown("replay", stored))
}

fn unknown(what: &str, stored: &str) -> StoreError {
    StoreError::internal(format!("unknown {what} status {stored:?} in the database"))
}

/// `active`, for filters on `tenants.status`.
pub const TENANT_ACTIVE: &str = TenantStatus::Active.as_str();
/// `archived`.
pub const TENANT_ARCHIVED: &str = TenantStatus::Archived.as_str();
/// `pending`, for filters on `webhook_deliveries.status`.
pub const DELIVERY_PENDING: &str = DeliveryStatus::Pending.as_str();
/// `success`.
pub const DELIVERY_SUCCESS: &str = DeliveryStatus::Success.as_str();
/// `failed`.
pub const DELIVERY_FAILED: &str = DeliveryStatus::Failed.as_str();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_maps_back_to_its_variant() {
        for s in [TenantStatus::Active, TenantStatus::Archived] {
            assert_eq!(tenant(s.as_str()).ok(), Some(s));
        }
        for s in [
            DeliveryStatus::Pending,
            DeliveryStatus::Success,
            DeliveryStatus::Failed,
        ] {
            assert_eq!(delivery(s.as_str()).ok(), Some(s));
        }
        for s in [ReplayStatus::Running, ReplayStatus::Completed] {
            assert_eq!(replay(s.as_str()).ok(), Some(s));
        }
    }

    #[test]
    fn an_unknown_stored_name_is_an_error_not_a_default() {
        for bad in ["", "Active", "frozen", "archived "] {
            let e = tenant(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("unknown tenant status"), "{bad:?}: {e}");
        }
        assert!(delivery("dead").is_err());
        assert!(delivery("PENDING").is_err());
        assert!(replay("paused").is_err());
    }
}
