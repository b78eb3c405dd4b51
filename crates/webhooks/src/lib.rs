//! Stratum webhooks: the registry's rules, the delivery model, the retry policy and the
//! [`Dispatcher`](dispatcher::Dispatcher) use case that claims, signs, sends and completes
//! deliveries through ports.

pub mod error;
pub mod model;
pub mod ports;

pub use error::WebhookError;
pub use model::*;
pub use ports::*;
