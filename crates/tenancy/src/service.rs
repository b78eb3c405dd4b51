//! The tenancy use cases, one module per service.

use serde_json::Value;
use stratum_core::Precondition;

use crate::TenancyError;

mod api_keys;
mod config;
mod permissions;
mod tenants;

pub use api_keys::*;
pub use config::*;
pub use permissions::*;
pub use tenants::*;

type Result<T> = std::result::Result<T, TenancyError>;

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(crate) fn check_precondition(precondition: Precondition, current: i64) -> Result<()> {
    Ok(stratum_core::check_precondition(precondition, current)?)
}

pub(crate) fn after_stale(precondition: Precondition, attempt: u32) -> Result<()> {
    Ok(stratum_core::after_stale(precondition, attempt)?)
}
