//! Adaptive per-webhook concurrency: an AIMD controller (additive increase, multiplicative
//! decrease, as TCP's congestion window) fed with the outcome and latency of every attempt.
//!
//! A receiver that answers fast and without errors sees its limit grow, first by one per
//! success (slow start, doubling per round trip) and, after the first sign of overload, by
//! one per round trip; a receiver that errs, times out, answers 429/5xx, or whose latency
//! grows well above its observed baseline, sees its limit cut in half, at most once per
//! round trip. The limit never goes below 1 nor above the configured maximum.
//!
//! The controller is plain state with no clock and no I/O: the dispatcher measures, the
//! controller decides.

use std::time::Duration;

/// What one attempt tells the controller about its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A 2xx (or any answer that is not a sign of overload: 3xx, 4xx but 429).
    Answered,
    /// The receiver is overloaded or unreachable: transport error, timeout, 429 or 5xx.
    Overloaded,
}

impl Signal {
    /// How an attempt's HTTP status (or its absence) reads as a load signal.
    pub fn from_status(status: Option<u16>) -> Self {
        match status {
            None | Some(429) | Some(500..=599) => Self::Overloaded,
            Some(_) => Self::Answered,
        }
    }
}

/// The controller's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AimdConfig {
    /// The limit a webhook starts at.
    pub initial: usize,
    /// The limit never goes above this (`STRATUM_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT`).
    pub max: usize,
    /// A latency above `baseline × tolerance + slack` counts as overload.
    pub latency_tolerance: f64,
    /// Absolute allowance on top of the relative one, so that the jitter of a
    /// millisecond-fast receiver is not read as overload.
    pub latency_slack: Duration,
    /// Factor applied to the limit on overload.
    pub backoff: f64,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            initial: 8,
            max: 256,
            latency_tolerance: 2.0,
            latency_slack: Duration::from_millis(50),
            backoff: 0.5,
        }
    }
}

impl AimdConfig {
    /// Limits of zero count as one; `initial` is kept within `1..=max`.
    pub fn normalized(mut self) -> Self {
        self.max = self.max.max(1);
        self.initial = self.initial.clamp(1, self.max);
        if !(self.latency_tolerance.is_finite() && self.latency_tolerance >= 1.0) {
            self.latency_tolerance = 1.0;
        }
        if !(self.backoff.is_finite() && self.backoff > 0.0 && self.backoff < 1.0) {
            self.backoff = 0.5;
        }
        self
    }
}

/// One webhook's concurrency limit.
#[derive(Debug, Clone, PartialEq)]
pub struct AimdLimit {
    config: AimdConfig,
    /// The limit, fractional so that additive increase can add `1 / limit` per success.
    limit: f64,
    /// The lowest recent latency, drifting slowly up towards what lone attempts observe.
    baseline: Option<Duration>,
    /// Whether overload was ever seen (ends slow start).
    congested: bool,
    /// Samples since the last cut; a new cut waits for `window` of them.
    since_cut: usize,
    /// The limit before the last cut: the attempts that may have been in flight when it
    /// happened, whose overload reports are answered by that cut already.
    window: usize,
}

/// How far the baseline moves towards a higher latency sample (an exponential average).
const BASELINE_DRIFT: f64 = 0.01;

impl AimdLimit {
    /// A limit at `config.initial`.
    pub fn new(config: AimdConfig) -> Self {
        let config = config.normalized();
        Self {
            limit: config.initial as f64,
            config,
            baseline: None,
            congested: false,
            since_cut: usize::MAX,
            window: 0,
        }
    }

    /// The current limit, in `1..=max`.
    pub fn limit(&self) -> usize {
        // `limit` stays within [1, max], so the conversion is exact enough and in range.
        (self.limit.floor() as usize).clamp(1, self.config.max)
    }

    /// The latency this receiver answers in when not overloaded, once one was seen.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// Feeds one finished attempt: its `signal`, its `latency`, and how many attempts of
    /// this webhook were in flight when it finished (itself included). Returns the new limit.
    pub fn record(&mut self, signal: Signal, latency: Duration, in_flight: usize) -> usize {
        self.since_cut = self.since_cut.saturating_add(1);
        let slow = signal == Signal::Answered && self.latency_grew(latency);
        if signal == Signal::Overloaded || slow {
            self.cut();
        } else {
            self.learn(latency, in_flight);
            // Grow only while the limit is in use: a webhook sending one event a minute
            // says nothing about how many at once its receiver could take.
            if in_flight.saturating_mul(2) >= self.limit() {
                let step = if self.congested {
                    1.0 / self.limit
                } else {
                    1.0
                };
                self.limit = (self.limit + step).min(self.config.max as f64);
            }
        }
        self.limit()
    }

    fn latency_grew(&self, latency: Duration) -> bool {
        let Some(base) = self.baseline else {
            return false;
        };
        let allowed = base.mul_f64(self.config.latency_tolerance) + self.config.latency_slack;
        latency > allowed
    }

    fn cut(&mut self) {
        self.congested = true;
        // Every attempt in flight when the receiver got overloaded reports it; one cut per
        // round trip (a limit's worth of samples) is the answer to all of them.
        if self.since_cut < self.window {
            return;
        }
        self.window = self.limit();
        self.limit = (self.limit * self.config.backoff).max(1.0);
        self.since_cut = 0;
    }

    fn learn(&mut self, latency: Duration, in_flight: usize) {
        self.baseline = Some(match self.baseline {
            None => latency,
            Some(base) if latency <= base => latency,
            // Higher latencies move the baseline only when this attempt was alone: with
            // others in flight it may include queueing this very limit caused, and
            // following it would let the limit run away. A receiver that really got slower
            // is cut down to a limit of one, where its new baseline is learnt.
            Some(base) if in_flight <= 1 => base + (latency - base).mul_f64(BASELINE_DRIFT),
            Some(base) => base,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(2);

    fn config(initial: usize, max: usize) -> AimdConfig {
        AimdConfig {
            initial,
            max,
            ..AimdConfig::default()
        }
    }

    /// Feeds `n` samples with the limit fully in use.
    fn feed(c: &mut AimdLimit, n: usize, signal: Signal, latency: Duration) -> usize {
        for _ in 0..n {
            let in_flight = c.limit();
            c.record(signal, latency, in_flight);
        }
        c.limit()
    }

    #[test]
    fn starts_at_initial_within_bounds() {
        assert_eq!(AimdLimit::new(config(8, 256)).limit(), 8);
        assert_eq!(AimdLimit::new(config(0, 256)).limit(), 1);
        assert_eq!(AimdLimit::new(config(500, 16)).limit(), 16);
        assert_eq!(AimdLimit::new(config(3, 0)).limit(), 1);
    }

    #[test]
    fn status_classification() {
        assert_eq!(Signal::from_status(Some(200)), Signal::Answered);
        assert_eq!(Signal::from_status(Some(204)), Signal::Answered);
        assert_eq!(Signal::from_status(Some(404)), Signal::Answered);
        assert_eq!(Signal::from_status(Some(410)), Signal::Answered);
        assert_eq!(Signal::from_status(Some(429)), Signal::Overloaded);
        assert_eq!(Signal::from_status(Some(500)), Signal::Overloaded);
        assert_eq!(Signal::from_status(Some(503)), Signal::Overloaded);
        assert_eq!(Signal::from_status(None), Signal::Overloaded);
    }

    #[test]
    fn fast_receiver_grows_to_hundreds_and_stops_at_the_max() {
        let mut c = AimdLimit::new(config(8, 512));
        // Slow start: one more per success, so a few hundred samples reach hundreds.
        assert_eq!(feed(&mut c, 100, Signal::Answered, FAST), 108);
        assert!(feed(&mut c, 200, Signal::Answered, FAST) >= 300);
        assert_eq!(feed(&mut c, 10_000, Signal::Answered, FAST), 512);
    }

    #[test]
    fn unused_limit_does_not_grow() {
        let mut c = AimdLimit::new(config(8, 512));
        for _ in 0..1000 {
            c.record(Signal::Answered, FAST, 1);
        }
        assert_eq!(c.limit(), 8);
        // Half in use is enough.
        c.record(Signal::Answered, FAST, 4);
        assert_eq!(c.limit(), 9);
    }

    #[test]
    fn overload_halves_once_per_round_trip() {
        let mut c = AimdLimit::new(config(64, 512));
        // A whole window of 64 failures (all in flight together) cuts once, not 64 times.
        for _ in 0..64 {
            c.record(Signal::Overloaded, FAST, 64);
        }
        assert_eq!(c.limit(), 32);
        // Failures sent after the cut cut again.
        c.record(Signal::Overloaded, FAST, 32);
        assert_eq!(c.limit(), 16);
    }

    #[test]
    fn never_below_one() {
        let mut c = AimdLimit::new(config(8, 512));
        assert_eq!(feed(&mut c, 1000, Signal::Overloaded, FAST), 1);
    }

    #[test]
    fn after_overload_growth_is_additive() {
        let mut c = AimdLimit::new(config(64, 512));
        c.record(Signal::Overloaded, FAST, 64);
        assert_eq!(c.limit(), 32);
        // Congestion avoidance: about one more per round trip (32 samples at 32).
        assert_eq!(feed(&mut c, 32, Signal::Answered, FAST), 32);
        assert_eq!(feed(&mut c, 2, Signal::Answered, FAST), 33);
        // Ten round trips later: about ten more, not ten times more.
        let after = feed(&mut c, 10 * 38, Signal::Answered, FAST);
        assert!((40..=45).contains(&after), "{after}");
    }

    #[test]
    fn latency_growth_cuts_like_an_error() {
        let mut c = AimdLimit::new(config(8, 512));
        feed(&mut c, 100, Signal::Answered, Duration::from_millis(10));
        let grown = c.limit();
        assert_eq!(c.baseline(), Some(Duration::from_millis(10)));
        // 60 ms is within 2 × 10 ms + 50 ms: still fine.
        c.record(Signal::Answered, Duration::from_millis(60), grown);
        assert!(c.limit() >= grown);
        // 500 ms is well above: overload.
        let before = c.limit();
        c.record(Signal::Answered, Duration::from_millis(500), before);
        assert_eq!(c.limit(), before / 2);
    }

    #[test]
    fn slow_receiver_that_times_out_stays_at_a_few() {
        // A 10 s receiver behind a 10 s timeout: every attempt is a transport error.
        let mut c = AimdLimit::new(config(8, 512));
        let limit = feed(&mut c, 200, Signal::Overloaded, Duration::from_secs(10));
        assert_eq!(limit, 1);
    }

    #[test]
    fn slow_but_steady_receiver_with_growing_latency_is_held_back() {
        let mut c = AimdLimit::new(config(8, 512));
        // Baseline 100 ms; latency then grows with the load (a receiver queueing requests).
        feed(&mut c, 20, Signal::Answered, Duration::from_millis(100));
        let mut highest = 0;
        for _ in 0..2000 {
            let limit = c.limit();
            // Latency proportional to what is in flight beyond 8: a receiver serving 8 at once.
            let queued = limit.saturating_sub(8) as u64;
            let latency = Duration::from_millis(100 + queued * 100 / 8);
            c.record(Signal::Answered, latency, limit);
            highest = highest.max(c.limit());
        }
        // The limit oscillates around where latency crosses the tolerance (~2.5 × baseline:
        // 8 + 12 = 20 in flight), never runs off to the max.
        assert!(highest < 64, "highest {highest}");
        assert!(c.limit() >= 8, "limit {}", c.limit());
    }

    #[test]
    fn baseline_tracks_the_minimum_and_drifts_up_slowly() {
        let mut c = AimdLimit::new(config(8, 8));
        c.record(Signal::Answered, Duration::from_millis(20), 8);
        c.record(Signal::Answered, Duration::from_millis(5), 8);
        assert_eq!(c.baseline(), Some(Duration::from_millis(5)));
        // Not alone in flight: may be queueing of our own making, ignored.
        c.record(Signal::Answered, Duration::from_millis(55), 8);
        assert_eq!(c.baseline(), Some(Duration::from_millis(5)));
        // Alone: one percent of the 50 ms above.
        c.record(Signal::Answered, Duration::from_millis(55), 1);
        assert_eq!(c.baseline(), Some(Duration::from_micros(5500)));
        // Errors teach nothing about the baseline.
        c.record(Signal::Overloaded, Duration::from_secs(10), 8);
        assert_eq!(c.baseline(), Some(Duration::from_micros(5500)));
    }
}
