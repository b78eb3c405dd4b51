//! Runnable examples of reusing Stratum's domain crates outside the Stratum server; the
//! code is in the examples, which `tests/run_examples.rs` runs:
//!
//! - `embed-webhooks`: a service of its own that embeds `stratum-webhooks` and
//!   `stratum-http-delivery` with in-memory adapters (no PostgreSQL), registers a webhook and
//!   delivers a signed event of its own catalogue to a receiver.
//! - `verify-receiver`: a receiver that verifies both signatures of each delivery with
//!   `stratum-crypto`.
//!
//! ```text
//! WEBHOOK_SECRET=whsec_... cargo run -p stratum-examples --example verify-receiver
//! RECEIVER_URL=http://127.0.0.1:8099/hook WEBHOOK_SECRET=whsec_... \
//!     cargo run -p stratum-examples --example embed-webhooks
//! ```
