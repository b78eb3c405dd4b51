//! Stratum webhooks: the registry's rules, the delivery model, the retry policy and the
//! [`Dispatcher`] use case that claims, signs, sends and completes
//! deliveries through ports.

#![warn(missing_docs)]

pub mod breaker;
pub mod concurrency;
pub mod dispatcher;
pub mod error;
pub mod histogram;
pub mod model;
pub mod policy;
pub mod ports;
pub mod registry;
#[cfg(test)]
mod registry_tests;
pub mod replay;

pub use breaker::{Breaker, BreakerChange, BreakerConfig, BreakerState, BreakerTransitions};
pub use dispatcher::{
    build_request, random_jitter, BuildError, Dispatcher, DispatcherConfig, DispatcherSnapshot,
    DispatcherStats, WebhookConcurrency, DEFAULT_CONCURRENCY, DEFAULT_INITIAL_PER_WEBHOOK,
    DEFAULT_MAX_PER_WEBHOOK, RELEASE_DELAY,
};
pub use error::WebhookError;
pub use histogram::{AtomicHistogram, HistogramSnapshot};
pub use model::*;
pub use policy::{RetryPolicy, MAX_RETRY_AFTER};
pub use ports::*;
pub use registry::*;
pub use replay::*;
