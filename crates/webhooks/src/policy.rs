//! The retry policy: how long to wait after a failed attempt, and what an attempt's outcome
//! means for the delivery.

use std::time::Duration;

use time::OffsetDateTime;

use crate::{AttemptOutcome, Verdict};

/// The longest `Retry-After` that is honoured; longer requests are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

// Jitter scales a delay by a factor in [0.8, 1.2] (±20 %), counted in millionths so the
// arithmetic on nanoseconds stays exact and monotonic.
const JITTER_LOW_PPM: u128 = 800_000;
const JITTER_RANGE_PPM: f64 = 400_000.0;
const PPM: u128 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Exponential backoff with jitter and a cap, and the number of attempts before a delivery
/// is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt (`STRATUM_WEBHOOK_BACKOFF_BASE_MS`).
    pub base: Duration,
    /// The cap on one delay (`STRATUM_WEBHOOK_BACKOFF_MAX_MS`).
    pub max: Duration,
    /// Attempts before a delivery is dead-lettered (`STRATUM_WEBHOOK_MAX_ATTEMPTS`).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(5_000),
            max: Duration::from_millis(3_600_000),
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt after attempt number `attempt` (1-based) failed.
    ///
    /// `base * 2^(attempt - 1)`, capped at `max`, times a jitter factor in `[0.8, 1.2]`
    /// onto which `jitter` (`[0, 1)`, clamped; not-a-number counts as 0.5) maps linearly,
    /// and capped at `max` again. `jitter = 0.5` gives the factor 1 exactly.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stratum_webhooks::RetryPolicy;
    ///
    /// let policy = RetryPolicy {
    ///     base: Duration::from_secs(5),
    ///     max: Duration::from_secs(60),
    ///     max_attempts: 8,
    /// };
    /// assert_eq!(policy.delay(1, 0.5), Duration::from_secs(5));
    /// assert_eq!(policy.delay(3, 0.5), Duration::from_secs(20));
    /// assert_eq!(policy.delay(3, 0.0), Duration::from_secs(16), "20 s times 0.8");
    /// assert_eq!(policy.delay(9, 0.99), Duration::from_secs(60), "capped");
    /// ```
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let unjittered = self.unjittered(attempt);
        let jitter = if jitter.is_nan() {
            0.5
        } else {
            jitter.clamp(0.0, 1.0)
        };
        // `jitter` is in [0, 1], so the rounded product is in [0, 400_000]: the cast
        // neither truncates nor loses a sign.
        let factor_ppm = JITTER_LOW_PPM + (jitter * JITTER_RANGE_PPM).round() as u128;
        // u128 nanoseconds: a Duration is < 2^64 s ≈ 1.8e28 ns, times 1.2e6 stays < 2^128.
        let nanos = unjittered.as_nanos() * factor_ppm / PPM;
        from_nanos(nanos).min(self.max)
    }

    /// What happens to a delivery after attempt number `attempt` (1-based) produced
    /// `outcome` at `now`.
    ///
    /// 2xx is success; 410 is gone; a refused target is dead-lettered at once; anything else (3xx, 4xx, 5xx, no response) is retried
    /// after [`delay`](Self::delay) until `max_attempts` attempts have been made, then
    /// dead-lettered. A 429 or 503 carrying `Retry-After` is retried after that many seconds,
    /// but never sooner than the policy's delay and never later than 24 hours (or the
    /// policy's delay, if that is longer).
    pub fn classify(
        &self,
        attempt: u32,
        outcome: &AttemptOutcome,
        now: OffsetDateTime,
        jitter: f64,
    ) -> Verdict {
        match outcome.status {
            Some(200..=299) => return Verdict::Success,
            Some(410) => return Verdict::Gone,
            _ => {}
        }
        if attempt >= self.max_attempts || outcome.refused {
            return Verdict::Failed;
        }
        let delay = self.delay(attempt, jitter);
        let wait = match (outcome.status, outcome.retry_after_secs) {
            (Some(429 | 503), Some(secs)) => {
                Duration::from_secs(secs).min(MAX_RETRY_AFTER).max(delay)
            }
            _ => delay,
        };
        Verdict::Retry {
            at: add_saturating(now, wait),
        }
    }

    /// `base * 2^(attempt - 1)` capped at `max`, without overflow.
    fn unjittered(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        1u32.checked_shl(exponent)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// `nanos` as a Duration, saturating at `Duration::MAX`.
fn from_nanos(nanos: u128) -> Duration {
    let Ok(secs) = u64::try_from(nanos / NANOS_PER_SEC) else {
        return Duration::MAX;
    };
    // The remainder is below 1e9, so it always fits.
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, subsec)
}

/// `now + wait`, or the latest representable instant when that overflows (only reachable
/// with an absurd configuration).
pub(crate) fn add_saturating(now: OffsetDateTime, wait: Duration) -> OffsetDateTime {
    time::Duration::try_from(wait)
        .ok()
        .and_then(|w| now.checked_add(w))
        .unwrap_or_else(|| {
            time::PrimitiveDateTime::new(time::Date::MAX, time::Time::MIDNIGHT).assume_utc()
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-01-31 09:15:00 UTC);

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    fn status(code: u16) -> AttemptOutcome {
        AttemptOutcome {
            status: Some(code),
            ..AttemptOutcome::default()
        }
    }

    fn status_retry_after(code: u16, secs: u64) -> AttemptOutcome {
        AttemptOutcome {
            status: Some(code),
            retry_after_secs: Some(secs),
            ..AttemptOutcome::default()
        }
    }

    fn transport(error: &str) -> AttemptOutcome {
        AttemptOutcome {
            error: Some(error.to_owned()),
            ..AttemptOutcome::default()
        }
    }

    fn retry_at(secs: i64) -> Verdict {
        Verdict::Retry {
            at: NOW + time::Duration::seconds(secs),
        }
    }

    #[test]
    fn defaults_match_configuration_table() {
        let p = policy();
        assert_eq!(p.base, Duration::from_millis(5_000));
        assert_eq!(p.max, Duration::from_millis(3_600_000));
        assert_eq!(p.max_attempts, 8);
    }

    #[test]
    fn delays_double_then_cap() {
        let p = policy();
        let secs: Vec<u64> = (1..=12).map(|n| p.delay(n, 0.5).as_secs()).collect();
        assert_eq!(
            secs,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        // Attempt 0 is treated like attempt 1.
        assert_eq!(p.delay(0, 0.5), Duration::from_secs(5));
    }

    #[test]
    fn jitter_maps_onto_plus_minus_twenty_percent() {
        let p = policy();
        assert_eq!(p.delay(1, 0.0), Duration::from_secs(4));
        assert_eq!(p.delay(1, 0.25), Duration::from_millis(4_500));
        assert_eq!(p.delay(1, 1.0), Duration::from_secs(6));
        assert_eq!(p.delay(1, -3.0), Duration::from_secs(4));
        assert_eq!(p.delay(1, 7.0), Duration::from_secs(6));
        assert_eq!(p.delay(1, f64::NAN), Duration::from_secs(5));
        assert_eq!(p.delay(1, f64::INFINITY), Duration::from_secs(6));
        // At the cap, upward jitter is cut back to the cap; downward jitter still applies.
        assert_eq!(p.delay(20, 1.0), p.max);
        assert_eq!(p.delay(20, 0.0), Duration::from_secs(2_880));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let p = RetryPolicy {
            base: Duration::MAX,
            max: Duration::MAX,
            max_attempts: u32::MAX,
        };
        assert_eq!(p.delay(u32::MAX, 1.0), Duration::MAX);
        assert_eq!(p.delay(1, 1.0), Duration::MAX);
        assert!(p.delay(1, 0.0) < Duration::MAX);
        assert_eq!(policy().delay(u32::MAX, 0.5), policy().max);
        // A retry time beyond the calendar saturates instead of panicking.
        assert!(matches!(
            p.classify(1, &status(500), NOW, 0.5),
            Verdict::Retry { at } if at > NOW
        ));
    }

    #[test]
    fn classification_table() {
        let p = policy();
        let last = p.max_attempts;
        let cases: Vec<(&str, u32, AttemptOutcome, Verdict)> = vec![
            ("200", 1, status(200), Verdict::Success),
            ("204", 3, status(204), Verdict::Success),
            ("299", 1, status(299), Verdict::Success),
            ("2xx on last attempt", last, status(200), Verdict::Success),
            ("410", 1, status(410), Verdict::Gone),
            ("410 on last attempt", last, status(410), Verdict::Gone),
            ("500 first", 1, status(500), retry_at(5)),
            ("500 second", 2, status(500), retry_at(10)),
            ("500 seventh", 7, status(500), retry_at(320)),
            ("500 last", last, status(500), Verdict::Failed),
            ("beyond last", last + 5, status(500), Verdict::Failed),
            ("301 is a failure", 1, status(301), retry_at(5)),
            ("302 is a failure", 1, status(302), retry_at(5)),
            ("400", 1, status(400), retry_at(5)),
            ("404", 2, status(404), retry_at(10)),
            ("100", 1, status(100), retry_at(5)),
            ("transport", 1, transport("connection refused"), retry_at(5)),
            (
                "transport last",
                last,
                transport("timeout"),
                Verdict::Failed,
            ),
            (
                "429 Retry-After 120",
                1,
                status_retry_after(429, 120),
                retry_at(120),
            ),
            (
                "503 Retry-After 1 clamps up",
                1,
                status_retry_after(503, 1),
                retry_at(5),
            ),
            (
                "503 Retry-After 1 clamps up to a later attempt's delay",
                4,
                status_retry_after(503, 1),
                retry_at(40),
            ),
            (
                "429 Retry-After 2 days clamps down",
                1,
                status_retry_after(429, 2 * 86_400),
                retry_at(86_400),
            ),
            (
                "429 Retry-After u64::MAX clamps down",
                1,
                status_retry_after(429, u64::MAX),
                retry_at(86_400),
            ),
            ("429 without Retry-After", 1, status(429), retry_at(5)),
            (
                "500 ignores Retry-After",
                1,
                status_retry_after(500, 120),
                retry_at(5),
            ),
            (
                "429 on last attempt",
                last,
                status_retry_after(429, 120),
                Verdict::Failed,
            ),
        ];
        for (name, attempt, outcome, want) in cases {
            assert_eq!(p.classify(attempt, &outcome, NOW, 0.5), want, "{name}");
        }
    }

    #[test]
    fn retry_after_floor_exceeding_a_day_is_the_policy_delay() {
        let p = RetryPolicy {
            base: Duration::from_secs(2 * 86_400),
            max: Duration::from_secs(3 * 86_400),
            max_attempts: 3,
        };
        assert_eq!(
            p.classify(1, &status_retry_after(429, 10), NOW, 0.5),
            retry_at(2 * 86_400)
        );
    }

    #[test]
    fn a_refused_target_is_dead_lettered_on_the_first_attempt() {
        let p = policy();
        let refused = AttemptOutcome {
            error: Some("refused target: url must use https".into()),
            refused: true,
            ..AttemptOutcome::default()
        };
        assert_eq!(p.classify(1, &refused, NOW, 0.5), Verdict::Failed);
        let transient = AttemptOutcome {
            error: Some("connect timeout".into()),
            ..AttemptOutcome::default()
        };
        assert!(matches!(
            p.classify(1, &transient, NOW, 0.5),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn single_attempt_policy_dead_letters_at_once() {
        let p = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert_eq!(p.classify(1, &status(500), NOW, 0.5), Verdict::Failed);
        assert_eq!(p.classify(1, &status(200), NOW, 0.5), Verdict::Success);
    }

    #[test]
    fn jittered_retry_stays_in_bounds() {
        let p = policy();
        for jitter in [0.0, 0.1, 0.5, 0.9, 0.999_999] {
            let Verdict::Retry { at } = p.classify(1, &status(500), NOW, jitter) else {
                panic!("expected a retry for jitter {jitter}");
            };
            let wait = at - NOW;
            assert!(
                wait >= time::Duration::seconds(4) && wait <= time::Duration::seconds(6),
                "{jitter}: {wait}"
            );
        }
    }

    fn arb_policy() -> impl Strategy<Value = RetryPolicy> {
        (0u64..=86_400_000, 0u64..=86_400_000, 0u32..=50).prop_map(|(base, max, attempts)| {
            RetryPolicy {
                base: Duration::from_millis(base),
                max: Duration::from_millis(max),
                max_attempts: attempts,
            }
        })
    }

    /// `min(base * 2^(n-1), max)` computed the slow, obviously right way.
    fn reference(p: &RetryPolicy, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1);
        let raw = p.base.as_nanos().saturating_mul(1u128 << exp.min(100));
        Duration::from_nanos(u64::try_from(raw.min(p.max.as_nanos())).unwrap())
    }

    proptest! {
        #[test]
        fn prop_unjittered_delay_is_monotonic(p in arb_policy(), n in 1u32..200) {
            prop_assert!(p.delay(n, 0.5) <= p.delay(n + 1, 0.5));
        }

        #[test]
        fn prop_delay_never_exceeds_max(p in arb_policy(), n in any::<u32>(), j in any::<f64>()) {
            prop_assert!(p.delay(n, j) <= p.max);
        }

        #[test]
        fn prop_delay_within_jitter_bounds(p in arb_policy(), n in 1u32..200, j in 0.0f64..1.0) {
            let r = reference(&p, n);
            let d = p.delay(n, j);
            prop_assert!(d.as_nanos() * 5 >= r.as_nanos() * 4, "{:?} < 0.8 * {:?}", d, r);
            prop_assert!(d.as_nanos() * 5 <= r.as_nanos() * 6, "{:?} > 1.2 * {:?}", d, r);
            prop_assert_eq!(p.delay(n, 0.5), r);
        }

        #[test]
        fn prop_retry_is_never_in_the_past_nor_beyond_policy(
            p in arb_policy(),
            n in 1u32..60,
            code in prop::sample::select(vec![300u16, 400, 404, 429, 500, 502, 503]),
            retry_after in prop::option::of(any::<u64>()),
            j in 0.0f64..1.0,
        ) {
            let outcome = AttemptOutcome {
                status: Some(code),
                retry_after_secs: retry_after,
                ..AttemptOutcome::default()
            };
            match p.classify(n, &outcome, NOW, j) {
                Verdict::Failed => prop_assert!(n >= p.max_attempts),
                Verdict::Retry { at } => {
                    prop_assert!(n < p.max_attempts);
                    let wait = at - NOW;
                    let delay = time::Duration::try_from(p.delay(n, j)).unwrap();
                    let ceiling = delay.max(time::Duration::seconds(86_400));
                    prop_assert!(wait >= delay && wait <= ceiling, "{wait} vs {delay}");
                }
                other => prop_assert!(false, "unexpected verdict {:?}", other),
            }
        }
    }
}
