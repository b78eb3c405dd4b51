//! Prometheus metrics: HTTP traffic, the delivery engine, the queue and the pool, exposed
//! in the Prometheus text format (0.0.4) by `prometheus-client`.
//!
//! Scrapes only read atomics and a few locks; queue gauges are refreshed on an interval by
//! the server, never per scrape. Label values come from fixed sets only (route templates,
//! standard methods or `other`, status codes, outcomes), so no request can add a series.
//!
//! The same registry serves `stratum serve` and `stratum worker`; more figures are added
//! with [`Metrics::register_collector`] (e.g. a dispatcher's per-webhook gauges).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use actix_web::{web, HttpResponse};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use stratum_webhooks::histogram::LATENCY_BUCKETS;
use stratum_webhooks::{
    BreakerTransitions, DispatcherSnapshot, DispatcherStats, HistogramSnapshot,
};

use crate::AppState;

/// The `Content-Type` of a scrape.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Queue figures, refreshed by a background task.
#[derive(Debug, Default)]
pub struct QueueGauges {
    /// Deliveries waiting for an attempt (due or not).
    pub pending: AtomicI64,
    /// Pending deliveries due now.
    pub due: AtomicI64,
    /// Age in seconds of the oldest due delivery (0 when none).
    pub oldest_due_age_seconds: AtomicI64,
    /// Dead-lettered deliveries.
    pub dead_letter: AtomicI64,
    /// Webhooks currently inactive.
    pub inactive_webhooks: AtomicI64,
    /// Webhooks whose circuit breaker is open or half-open.
    pub open_breakers: AtomicI64,
    /// Unix time of the last successful refresh.
    pub refreshed_at: AtomicI64,
}

/// Labels of `stratum_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

/// Labels of `stratum_http_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric the process exposes.
pub struct Metrics {
    registry: RwLock<Registry>,
    http_requests: Family<RequestLabels, Counter>,
    http_latency: LatencyFamily,
    rate_limited: Counter,
    /// Queue gauges.
    pub queue: Arc<QueueGauges>,
    dispatcher: OnceLock<()>,
    dispatcher_snapshot: OnceLock<()>,
    breakers: OnceLock<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with the HTTP, rate-limit and queue metrics.
    pub fn new() -> Self {
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let rate_limited = Counter::default();
        let queue = Arc::new(QueueGauges::default());
        let mut registry = Registry::default();
        // Counters get their `_total` suffix from the encoder; HELP texts get a final `.`.
        registry.register(
            "stratum_http_requests",
            "HTTP requests by route template, method and status",
            http_requests.clone(),
        );
        registry.register(
            "stratum_http_request_duration_seconds",
            "HTTP request latency",
            http_latency.clone(),
        );
        registry.register(
            "stratum_rate_limited",
            "Requests refused with 429",
            rate_limited.clone(),
        );
        registry.register_collector(Box::new(QueueCollector(Arc::clone(&queue))));
        Self {
            registry: RwLock::new(registry),
            http_requests,
            http_latency,
            rate_limited,
            queue,
            dispatcher: OnceLock::new(),
            dispatcher_snapshot: OnceLock::new(),
            breakers: OnceLock::new(),
        }
    }

    /// Adds a collector whose figures every later scrape includes: the place to expose
    /// more of a component's state (a dispatcher's per-webhook gauges, say) without
    /// touching the rest of the exposition.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(collector);
    }

    /// Exposes a running dispatcher's counters (once; later calls are ignored).
    pub fn attach_dispatcher(&self, stats: Arc<DispatcherStats>) {
        if self.dispatcher.set(()).is_ok() {
            self.register_collector(Box::new(DispatcherCollector(stats)));
        }
    }

    /// Exposes what a running dispatcher is doing now, read at each scrape: deliveries in
    /// flight, the last claim and completion batch sizes, the age of the oldest event it
    /// last claimed and, per webhook it sent to recently, in flight, waiting and its
    /// adaptive concurrency limit (once; later calls are ignored).
    pub fn attach_dispatcher_snapshot(&self, snapshot: SnapshotSource) {
        if self.dispatcher_snapshot.set(()).is_ok() {
            self.register_collector(Box::new(SnapshotCollector(snapshot)));
        }
    }

    /// Exposes the breaker transitions a delivery queue writes (once; later calls are ignored).
    pub fn attach_breakers(&self, transitions: Arc<BreakerTransitions>) {
        if self.breakers.set(()).is_ok() {
            self.register_collector(Box::new(BreakerCollector(transitions)));
        }
    }

    /// Records one HTTP request; `route` and `method` must come from bounded sets.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RouteLabels {
            route: route.to_owned(),
            method: method.to_owned(),
        };
        self.http_latency.get_or_create(&labels).observe(seconds);
        self.http_requests
            .get_or_create(&RequestLabels {
                route: labels.route,
                method: labels.method,
                status,
            })
            .inc();
    }

    /// Counts a request refused by the rate limiter.
    pub fn observe_rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// The Prometheus text exposition, with the connection pool's current figures.
    pub fn render(&self, pool: stratum_core::PoolStats) -> String {
        let mut out = String::with_capacity(8192);
        {
            let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        }
        let mut per_scrape = Registry::default();
        per_scrape.register_collector(Box::new(PoolCollector {
            size: pool.size,
            idle: pool.idle,
            waiting: pool.waiting,
            max_size: pool.max_size,
        }));
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &per_scrape);
        out
    }
}

/// Encodes one gauge without labels.
fn gauge<N>(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Encodes one counter family with a single `label`.
fn labelled_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes a snapshot of one of the dispatcher's lock-free histograms.
fn snapshot_histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    s: &HistogramSnapshot,
) -> std::fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    // The encoder takes per-bucket counts and accumulates them itself.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = s
        .bounds
        .iter()
        .zip(&s.cumulative)
        .map(|(bound, cumulative)| {
            let n = cumulative.saturating_sub(previous);
            previous = *cumulative;
            (*bound, n)
        })
        .collect();
    m.encode_histogram::<[(&str, &str); 0]>(
        s.sum,
        s.count,
        &buckets,
        None::<&HashMap<usize, Exemplar<[(&str, &str); 0], f64>>>,
    )
}

/// The queue gauges the server refreshes.
#[derive(Debug)]
struct QueueCollector(Arc<QueueGauges>);

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let q = &self.0;
        for (name, help, v) in [
            (
                "stratum_deliveries_pending",
                "Deliveries waiting for an attempt.",
                &q.pending,
            ),
            (
                "stratum_deliveries_due",
                "Pending deliveries due now and not being sent (no live lease).",
                &q.due,
            ),
            (
                "stratum_deliveries_oldest_due_age_seconds",
                "Age of the oldest due delivery not being sent.",
                &q.oldest_due_age_seconds,
            ),
            (
                "stratum_dead_letter_size",
                "Dead-lettered (failed) deliveries.",
                &q.dead_letter,
            ),
            (
                "stratum_webhooks_inactive",
                "Webhooks currently inactive.",
                &q.inactive_webhooks,
            ),
            (
                "stratum_webhook_breakers_open",
                "Webhooks whose circuit breaker is open or half-open (every process).",
                &q.open_breakers,
            ),
            (
                "stratum_queue_gauges_refreshed_timestamp_seconds",
                "When the queue gauges were last refreshed.",
                &q.refreshed_at,
            ),
        ] {
            gauge(&mut encoder, name, help, v.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

/// The connection pool's figures at the moment of a scrape.
#[derive(Debug)]
struct PoolCollector {
    size: u64,
    idle: u64,
    waiting: u64,
    max_size: u64,
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, v) in [
            ("stratum_db_pool_size", "Connections open.", self.size),
            ("stratum_db_pool_idle", "Connections idle.", self.idle),
            (
                "stratum_db_pool_waiting",
                "Callers waiting for a connection.",
                self.waiting,
            ),
            (
                "stratum_db_pool_max_size",
                "Connections allowed.",
                self.max_size,
            ),
        ] {
            gauge(&mut encoder, name, help, v)?;
        }
        Ok(())
    }
}

/// Reads a running dispatcher's [`DispatcherSnapshot`].
pub type SnapshotSource = Arc<dyn Fn() -> DispatcherSnapshot + Send + Sync>;

/// A dispatcher's current state (its total in flight is `stratum_deliveries_in_flight`),
/// per process and per webhook. The webhook label's values
/// are the webhooks this process delivered to in the last minutes (the dispatcher forgets
/// a webhook idle for 5 minutes), not anything a request can choose.
struct SnapshotCollector(SnapshotSource);

impl std::fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCollector")
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = (self.0)();
        gauge(
            &mut encoder,
            "stratum_dispatcher_last_claim_size",
            "Deliveries the last claim brought.",
            s.last_claim_size as i64,
        )?;
        gauge(
            &mut encoder,
            "stratum_dispatcher_last_completion_batch_size",
            "Completions the last completion batch wrote.",
            s.last_completion_batch_size as i64,
        )?;
        gauge(
            &mut encoder,
            "stratum_dispatcher_oldest_claimed_age_seconds",
            "Age of the oldest event the last non-empty claim brought (how far delivery lags).",
            s.oldest_claimed_age.map_or(0.0, |d| d.as_secs_f64()),
        )?;
        let ids: Vec<String> = s
            .webhooks
            .iter()
            .map(|w| w.webhook_id.to_string())
            .collect();
        type Figure = fn(&stratum_webhooks::WebhookConcurrency) -> i64;
        let families: [(&str, &str, Figure); 3] = [
            (
                "stratum_webhook_in_flight",
                "Attempts being sent to the webhook by this process.",
                |w| w.in_flight as i64,
            ),
            (
                "stratum_webhook_waiting",
                "Deliveries claimed for the webhook, waiting for one of its slots.",
                |w| w.waiting as i64,
            ),
            (
                "stratum_webhook_concurrency_limit",
                "The webhook's adaptive in-flight limit in this process.",
                |w| w.limit as i64,
            ),
        ];
        for (name, help, figure) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (w, id) in s.webhooks.iter().zip(&ids) {
                let labels = [("webhook_id", id.as_str())];
                ConstGauge::new(figure(w)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The breaker transitions this process wrote.
#[derive(Debug)]
struct BreakerCollector(Arc<BreakerTransitions>);

impl Collector for BreakerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let b = &self.0;
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        labelled_counters(
            &mut encoder,
            "stratum_webhook_breaker_transitions",
            "Circuit breaker state changes this process wrote, by the state entered.",
            "to",
            &[
                ("open", load(&b.opened)),
                ("reopen", load(&b.reopened)),
                ("closed", load(&b.closed)),
            ],
        )?;
        let disabled = ConstCounter::new(load(&b.disabled));
        disabled.encode(encoder.encode_descriptor(
            "stratum_webhooks_disabled_failing",
            "Webhooks disabled because their circuit breaker stayed open.",
            None,
            disabled.metric_type(),
        )?)
    }
}

/// A running dispatcher's counters and histograms.
#[derive(Debug)]
struct DispatcherCollector(Arc<DispatcherStats>);

impl Collector for DispatcherCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let d = &self.0;
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        labelled_counters(
            &mut encoder,
            "stratum_delivery_attempts",
            "Delivery attempts by outcome.",
            "outcome",
            &[
                ("success", load(&d.successes)),
                ("failure", load(&d.failures)),
            ],
        )?;
        labelled_counters(
            &mut encoder,
            "stratum_deliveries_finished",
            "Deliveries finished by outcome.",
            "outcome",
            &[
                ("success", load(&d.successes)),
                ("dead_lettered", load(&d.dead_lettered)),
                ("gone", load(&d.gone)),
                ("released", load(&d.released)),
            ],
        )?;
        let disabled = ConstCounter::new(load(&d.gone));
        disabled.encode(encoder.encode_descriptor(
            "stratum_webhooks_auto_disabled",
            "Webhooks disabled after a 410 Gone.",
            None,
            disabled.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "stratum_deliveries_in_flight",
            "Deliveries claimed by this process and not finished.",
            d.in_flight.load(Ordering::Relaxed) as u64,
        )?;
        snapshot_histogram(
            &mut encoder,
            "stratum_delivery_latency_seconds",
            "Event created to 2xx received.",
            &d.delivery_latency.snapshot(),
        )?;
        snapshot_histogram(
            &mut encoder,
            "stratum_delivery_attempts",
            "Attempts a delivery took until success or dead letter.",
            &d.attempts_per_delivery.snapshot(),
        )?;
        snapshot_histogram(
            &mut encoder,
            "stratum_delivery_attempt_duration_seconds",
            "Duration of one attempt.",
            &d.attempt_duration.snapshot(),
        )
    }
}

async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(state.metrics.render(state.storage.pool_stats()))
}

/// `GET /metrics`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(scrape));
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratum_webhooks::AtomicHistogram;

    fn encode(collector: impl Collector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap_or(());
        out
    }

    #[test]
    fn dispatcher_histograms_render_cumulative_buckets() {
        let stats = DispatcherStats::default();
        let h = &stats.attempt_duration;
        h.observe(0.0005);
        h.observe(0.5);
        h.observe(5000.0);
        stats.successes.fetch_add(2, Ordering::Relaxed);
        let out = encode(DispatcherCollector(Arc::new(stats)));
        let name = "stratum_delivery_attempt_duration_seconds";
        assert!(out.contains(&format!("# TYPE {name} histogram\n")), "{out}");
        assert!(
            out.contains(&format!("{name}_bucket{{le=\"0.001\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{name}_bucket{{le=\"1\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{name}_bucket{{le=\"3600\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 3\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{name}_count 3\n")), "{out}");
        assert!(out.contains("stratum_delivery_attempts_total{outcome=\"success\"} 2\n"));
        assert!(out.contains("stratum_deliveries_finished_total{outcome=\"gone\"} 0\n"));
        assert!(out.contains("# TYPE stratum_webhooks_auto_disabled_total counter\n"));
        assert!(out.contains("stratum_deliveries_in_flight 0\n"));
    }

    #[test]
    fn snapshot_buckets_match_the_histogram_they_copy() {
        let h = AtomicHistogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut registry = Registry::default();
        #[derive(Debug)]
        struct One(HistogramSnapshot);
        impl Collector for One {
            fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
                snapshot_histogram(&mut encoder, "x", "help", &self.0)
            }
        }
        registry.register_collector(Box::new(One(h.snapshot())));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap_or(());
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn http_series_keep_their_names_and_labels() {
        let m = Metrics::new();
        m.observe_http("/api/v1/tenants/{id}", "GET", 200, 0.003);
        m.observe_http("/api/v1/tenants/{id}", "GET", 200, 0.2);
        m.observe_rate_limited();
        m.queue.pending.store(7, Ordering::Relaxed);
        let mut out = String::new();
        let registry = m.registry.read().unwrap_or_else(PoisonError::into_inner);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap_or(());
        assert!(out.contains(
            "stratum_http_requests_total{route=\"/api/v1/tenants/{id}\",method=\"GET\",status=\"200\"} 2\n"
        ), "{out}");
        assert!(out.contains(
            "stratum_http_request_duration_seconds_bucket{route=\"/api/v1/tenants/{id}\",method=\"GET\",le=\"0.005\"} 1\n"
        ), "{out}");
        assert!(out.contains(
            "stratum_http_request_duration_seconds_count{route=\"/api/v1/tenants/{id}\",method=\"GET\"} 2\n"
        ), "{out}");
        assert!(out.contains("# HELP stratum_http_requests_total HTTP requests by route template, method and status.\n"), "{out}");
        assert!(out.contains("stratum_rate_limited_total 1\n"), "{out}");
        assert!(out.contains("stratum_deliveries_pending 7\n"), "{out}");
        assert!(
            !out.contains("stratum_delivery_attempts"),
            "no dispatcher attached"
        );
    }

    #[test]
    fn dispatcher_snapshot_renders_per_webhook_limits() {
        let id = uuid::Uuid::from_u128(7);
        let source: SnapshotSource = Arc::new(move || DispatcherSnapshot {
            in_flight: 5,
            last_claim_size: 12,
            last_completion_batch_size: 3,
            oldest_claimed_age: Some(std::time::Duration::from_millis(1500)),
            webhooks: vec![stratum_webhooks::WebhookConcurrency {
                webhook_id: id,
                in_flight: 5,
                waiting: 2,
                limit: 40,
                baseline_latency: None,
            }],
        });
        let out = encode(SnapshotCollector(source));
        assert!(
            out.contains("stratum_dispatcher_last_claim_size 12\n"),
            "{out}"
        );
        assert!(
            out.contains("stratum_dispatcher_last_completion_batch_size 3\n"),
            "{out}"
        );
        assert!(
            out.contains("stratum_dispatcher_oldest_claimed_age_seconds 1.5\n"),
            "{out}"
        );
        let label = format!("{{webhook_id=\"{id}\"}}");
        assert!(
            out.contains(&format!("stratum_webhook_in_flight{label} 5\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("stratum_webhook_waiting{label} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("stratum_webhook_concurrency_limit{label} 40\n")),
            "{out}"
        );
    }
}
