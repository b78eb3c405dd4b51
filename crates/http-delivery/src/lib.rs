//! Outbound HTTP for webhook deliveries: the reqwest-based [`DeliveryClient`] adapter and
//! the SSRF guard that keeps deliveries away from private, loopback and metadata addresses.
//!
//! [`DeliveryClient`]: stratum_webhooks::DeliveryClient

mod client;
mod resolve;
mod ssrf;
mod trace;

pub use client::{ClientBuildError, ClientConfig, ReqwestDeliveryClient};
pub use ssrf::{blocked_ip, blocked_name, parse_ip_literal, SsrfGuard};
