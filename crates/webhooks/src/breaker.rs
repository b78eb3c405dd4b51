//! The circuit breaker of a webhook: after a run of failed attempts no attempt is made for a
//! cool-down; then one probe decides whether the backlog flows again. The state is shared
//! by every process (the storage keeps it); this module holds only its rules.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

/// `STRATUM_WEBHOOK_BREAKER_*` and `STRATUM_WEBHOOK_DISABLE_AFTER_MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open the breaker; 0 turns the breaker off.
    pub threshold: u32,
    /// The first cool-down after the breaker opens.
    pub cooldown: Duration,
    /// The longest cool-down (each failed probe doubles it up to this).
    pub cooldown_max: Duration,
    /// A breaker open this long (through failed probes) disables the webhook; `None`: never.
    pub disable_after: Option<Duration>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            threshold: 10,
            cooldown: Duration::from_millis(30_000),
            cooldown_max: Duration::from_millis(600_000),
            disable_after: Some(Duration::from_millis(432_000_000)),
        }
    }
}

impl BreakerConfig {
    /// Whether the breaker is on at all.
    pub fn enabled(&self) -> bool {
        self.threshold > 0
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Attempts flow.
    #[default]
    Closed,
    /// No attempt until `next_probe_at`.
    Open,
    /// One probe is in flight; its answer closes or re-opens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "closed" => Some(Self::Closed),
            "open" => Some(Self::Open),
            "half_open" => Some(Self::HalfOpen),
            _ => None,
        }
    }
}

/// One webhook's breaker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Breaker {
    /// Where it stands.
    pub state: BreakerState,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// When it last opened (kept through failed probes); null when closed.
    #[serde(with = "stratum_core::timefmt::rfc3339_opt")]
    pub opened_at: Option<OffsetDateTime>,
    /// When the next probe may go (open), or when a lost probe is given up (half-open).
    #[serde(with = "stratum_core::timefmt::rfc3339_opt")]
    pub next_probe_at: Option<OffsetDateTime>,
    /// The cool-down in force (doubled after each failed probe).
    #[serde(skip)]
    pub cooldown_ms: i64,
}

/// What a batch of attempt results does to a breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerChange {
    /// The breaker afterwards.
    pub breaker: Breaker,
    /// Each change of state, in order.
    pub transitions: Vec<(BreakerState, BreakerState)>,
    /// It has been open for the configured time: disable the webhook.
    pub disable: bool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn after(now: OffsetDateTime, millis: i64) -> OffsetDateTime {
    now.checked_add(time::Duration::milliseconds(millis))
        .unwrap_or(now)
}

impl Breaker {
    /// Applies the results (`true`: a 2xx) of attempts to this webhook that completed at
    /// `now`, in the order they completed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stratum_webhooks::{Breaker, BreakerConfig, BreakerState};
    ///
    /// let cfg = BreakerConfig { threshold: 3, ..BreakerConfig::default() };
    /// let now = time::OffsetDateTime::UNIX_EPOCH;
    /// let two = Breaker::default().record(&[false, false], now, &cfg).breaker;
    /// assert_eq!(two.state, BreakerState::Closed);
    /// let three = two.record(&[false], now, &cfg).breaker;
    /// assert_eq!(three.state, BreakerState::Open);
    /// assert_eq!(three.next_probe_at, Some(now + Duration::from_secs(30)));
    /// ```
    pub fn record(
        &self,
        results: &[bool],
        now: OffsetDateTime,
        cfg: &BreakerConfig,
    ) -> BreakerChange {
        let mut b = self.clone();
        let mut transitions = Vec::new();
        let mut disable = false;
        if !cfg.enabled() {
            return BreakerChange {
                breaker: b,
                transitions,
                disable,
            };
        }
        for &ok in results {
            if ok {
                if b.state != BreakerState::Closed {
                    transitions.push((b.state, BreakerState::Closed));
                }
                b = Breaker::default();
                continue;
            }
            b.consecutive_failures = b.consecutive_failures.saturating_add(1);
            match b.state {
                BreakerState::Closed if b.consecutive_failures >= cfg.threshold => {
                    transitions.push((BreakerState::Closed, BreakerState::Open));
                    b.state = BreakerState::Open;
                    b.opened_at = Some(now);
                    b.cooldown_ms = ms(cfg.cooldown);
                    b.next_probe_at = Some(after(now, b.cooldown_ms));
                }
                BreakerState::Closed => {}
                // The probe failed: open again for twice as long.
                BreakerState::HalfOpen => {
                    transitions.push((BreakerState::HalfOpen, BreakerState::Open));
                    b.state = BreakerState::Open;
                    b.cooldown_ms = b.cooldown_ms.saturating_mul(2).clamp(
                        ms(cfg.cooldown).min(ms(cfg.cooldown_max)),
                        ms(cfg.cooldown_max),
                    );
                    b.next_probe_at = Some(after(now, b.cooldown_ms));
                }
                // An attempt that started before the breaker opened.
                BreakerState::Open => {}
            }
            if b.state != BreakerState::Closed {
                if let (Some(limit), Some(opened)) = (cfg.disable_after, b.opened_at) {
                    if now - opened >= limit {
                        disable = true;
                    }
                }
            }
        }
        BreakerChange {
            breaker: b,
            transitions,
            disable,
        }
    }
}

/// Breaker state changes one process wrote, for the metrics.
#[derive(Debug, Default)]
pub struct BreakerTransitions {
    /// Closed to open.
    pub opened: std::sync::atomic::AtomicU64,
    /// A failed probe: half-open to open.
    pub reopened: std::sync::atomic::AtomicU64,
    /// A success: open or half-open to closed.
    pub closed: std::sync::atomic::AtomicU64,
    /// Webhooks disabled because their breaker stayed open.
    pub disabled: std::sync::atomic::AtomicU64,
}

impl BreakerTransitions {
    /// Counts one change of state.
    pub fn count(&self, from: BreakerState, to: BreakerState) {
        use std::sync::atomic::Ordering::Relaxed;
        match (from, to) {
            (BreakerState::Closed, BreakerState::Open) => self.opened.fetch_add(1, Relaxed),
            (BreakerState::HalfOpen, BreakerState::Open) => self.reopened.fetch_add(1, Relaxed),
            (_, BreakerState::Closed) => self.closed.fetch_add(1, Relaxed),
            _ => 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(threshold: u32) -> BreakerConfig {
        BreakerConfig {
            threshold,
            cooldown: Duration::from_secs(30),
            cooldown_max: Duration::from_secs(100),
            disable_after: Some(Duration::from_secs(1000)),
        }
    }

    const T0: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

    fn at(secs: i64) -> OffsetDateTime {
        T0 + time::Duration::seconds(secs)
    }

    #[test]
    fn opens_at_exactly_the_threshold() {
        let c = cfg(10);
        let nine = Breaker::default().record(&[false; 9], T0, &c);
        assert_eq!(nine.breaker.state, BreakerState::Closed);
        assert_eq!(nine.breaker.consecutive_failures, 9);
        assert!(nine.transitions.is_empty());
        let ten = nine.breaker.record(&[false], at(1), &c);
        assert_eq!(ten.breaker.state, BreakerState::Open);
        assert_eq!(
            ten.transitions,
            vec![(BreakerState::Closed, BreakerState::Open)]
        );
        assert_eq!(ten.breaker.opened_at, Some(at(1)));
        assert_eq!(ten.breaker.next_probe_at, Some(at(31)));
    }

    #[test]
    fn a_success_resets_the_run() {
        let c = cfg(3);
        let b = Breaker::default().record(&[false, false, true, false, false], T0, &c);
        assert_eq!(b.breaker.state, BreakerState::Closed);
        assert_eq!(b.breaker.consecutive_failures, 2);
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_the_cap() {
        let c = cfg(1);
        let mut b = Breaker::default().record(&[false], T0, &c).breaker;
        let mut waits = Vec::new();
        for i in 1..=4 {
            b.state = BreakerState::HalfOpen;
            let now = at(i * 10);
            let ch = b.record(&[false], now, &c);
            assert_eq!(
                ch.transitions,
                vec![(BreakerState::HalfOpen, BreakerState::Open)]
            );
            b = ch.breaker;
            waits.push((b.next_probe_at.unwrap() - now).whole_seconds());
        }
        assert_eq!(waits, vec![60, 100, 100, 100]);
        assert_eq!(b.opened_at, Some(T0), "kept through failed probes");
    }

    #[test]
    fn a_successful_probe_closes() {
        let c = cfg(1);
        let mut b = Breaker::default().record(&[false], T0, &c).breaker;
        b.state = BreakerState::HalfOpen;
        let ch = b.record(&[true], at(40), &c);
        assert_eq!(ch.breaker, Breaker::default());
        assert_eq!(
            ch.transitions,
            vec![(BreakerState::HalfOpen, BreakerState::Closed)]
        );
    }

    #[test]
    fn open_long_enough_disables() {
        let c = cfg(1);
        let mut b = Breaker::default().record(&[false], T0, &c).breaker;
        b.state = BreakerState::HalfOpen;
        assert!(!b.record(&[false], at(999), &c).disable);
        assert!(b.record(&[false], at(1000), &c).disable);
        let never = BreakerConfig {
            disable_after: None,
            ..c
        };
        assert!(!b.record(&[false], at(1_000_000), &never).disable);
    }

    #[test]
    fn threshold_zero_is_off() {
        let b = Breaker::default().record(&[false; 100], T0, &cfg(0));
        assert_eq!(b.breaker, Breaker::default());
        assert!(b.transitions.is_empty());
    }

    #[test]
    fn stragglers_after_opening_change_nothing_but_the_count() {
        let c = cfg(2);
        let open = Breaker::default().record(&[false, false], T0, &c).breaker;
        let later = open.record(&[false, false], at(5), &c);
        assert!(later.transitions.is_empty());
        assert_eq!(later.breaker.next_probe_at, open.next_probe_at);
        assert_eq!(later.breaker.consecutive_failures, 4);
    }
}
