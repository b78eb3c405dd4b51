//! Per-key rate limiting: a token bucket per API key, in memory, per process.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Limits for one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per key (0 disables limiting).
    pub per_second: f64,
    /// Requests a key may make in a burst.
    pub burst: f64,
    /// Whether the bootstrap admin key is limited too.
    pub limit_bootstrap: bool,
}

/// Token buckets keyed by API key id.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter, or `None` when limiting is off.
    pub fn new(config: RateLimitConfig) -> Option<Self> {
        (config.per_second > 0.0 && config.burst >= 1.0).then(|| Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the bootstrap key is limited.
    pub fn limits_bootstrap(&self) -> bool {
        self.config.limit_bootstrap
    }

    /// Whether `key` has no token left, without taking one: `Some(seconds)` until the next.
    pub fn exhausted(&self, key: &str, now: Instant) -> Option<u64> {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, at) = buckets.get(key)?;
        let refill = now.duration_since(*at).as_secs_f64() * self.config.per_second;
        let tokens = (*tokens + refill).min(self.config.burst);
        (tokens < 1.0).then(|| ((1.0 - tokens) / self.config.per_second).ceil().max(1.0) as u64)
    }

    /// Takes one token for `key`; `Err(seconds)` says when to retry.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // Idle keys are full buckets: forgetting them changes nothing.
            let full = self.config.burst;
            let rate = self.config.per_second;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < full
            });
        }
        let (tokens, at) = buckets
            .entry(key.to_owned())
            .or_insert((self.config.burst, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.config.per_second;
        *tokens = (*tokens + refill).min(self.config.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / self.config.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let rl = RateLimiter::new(RateLimitConfig {
            per_second: 2.0,
            burst: 3.0,
            limit_bootstrap: false,
        })
        .unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check("k", t0).is_ok());
        }
        assert_eq!(rl.check("k", t0), Err(1));
        assert!(rl.check("other", t0).is_ok(), "keys are independent");
        assert!(rl.check("k", t0 + Duration::from_millis(600)).is_ok());
        assert!(rl.check("k", t0 + Duration::from_millis(600)).is_err());
    }

    #[test]
    fn exhausted_peeks_without_taking() {
        let rl = RateLimiter::new(RateLimitConfig {
            per_second: 1.0,
            burst: 2.0,
            limit_bootstrap: true,
        })
        .unwrap();
        let t0 = Instant::now();
        assert_eq!(rl.exhausted("ip", t0), None);
        assert!(rl.check("ip", t0).is_ok());
        assert_eq!(rl.exhausted("ip", t0), None);
        assert_eq!(rl.exhausted("ip", t0), None, "peeking takes nothing");
        assert!(rl.check("ip", t0).is_ok());
        assert_eq!(rl.exhausted("ip", t0), Some(1));
        assert_eq!(rl.exhausted("ip", t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn zero_disables() {
        assert!(RateLimiter::new(RateLimitConfig {
            per_second: 0.0,
            burst: 10.0,
            limit_bootstrap: true
        })
        .is_none());
    }
}
