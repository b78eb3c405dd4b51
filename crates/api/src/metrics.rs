//! Prometheus metrics: HTTP traffic, the delivery engine, the queue and the pool.
//! Scrapes only read atomics and a few locks; queue gauges are refreshed on an interval by
//! the server, never per scrape.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use actix_web::{web, HttpResponse};
use stratum_webhooks::histogram::LATENCY_BUCKETS;
use stratum_webhooks::{AtomicHistogram, DispatcherStats, HistogramSnapshot};

use crate::AppState;

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
    /// Unix time of the last successful refresh.
    pub refreshed_at: AtomicI64,
}

type HttpKey = (String, String, u16);

/// Every metric the process exposes.
#[derive(Default)]
pub struct Metrics {
    http_requests: Mutex<HashMap<HttpKey, u64>>,
    http_latency: Mutex<HashMap<(String, String), Arc<AtomicHistogram>>>,
    rate_limited: AtomicU64,
    /// Queue gauges.
    pub queue: QueueGauges,
    dispatcher: OnceLock<Arc<DispatcherStats>>,
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exposes a running dispatcher's counters.
    pub fn attach_dispatcher(&self, stats: Arc<DispatcherStats>) {
        let _already = self.dispatcher.set(stats);
    }

    /// Records one HTTP request.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, seconds: f64) {
        {
            let mut m = self
                .http_requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *m.entry((route.to_owned(), method.to_owned(), status))
                .or_insert(0) += 1;
        }
        let h = {
            let mut m = self
                .http_latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            m.entry((route.to_owned(), method.to_owned()))
                .or_insert_with(|| Arc::new(AtomicHistogram::new(LATENCY_BUCKETS)))
                .clone()
        };
        h.observe(seconds);
    }

    /// Counts a request refused by the rate limiter.
    pub fn observe_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, pool: stratum_core::PoolStats) -> String {
        let mut out = String::with_capacity(8192);
        header(
            &mut out,
            "stratum_http_requests_total",
            "counter",
            "HTTP requests by route template, method and status.",
        );
        {
            let m = self
                .http_requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort();
            for ((route, method, status), n) in rows {
                let _ = writeln!(
                    out,
                    "stratum_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        header(
            &mut out,
            "stratum_http_request_duration_seconds",
            "histogram",
            "HTTP request latency.",
        );
        {
            let m = self
                .http_latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for ((route, method), h) in rows {
                let labels = format!("route=\"{}\",method=\"{method}\"", escape(route));
                histogram(
                    &mut out,
                    "stratum_http_request_duration_seconds",
                    &labels,
                    &h.snapshot(),
                );
            }
        }
        header(
            &mut out,
            "stratum_rate_limited_total",
            "counter",
            "Requests refused with 429.",
        );
        let _ = writeln!(
            out,
            "stratum_rate_limited_total {}",
            self.rate_limited.load(Ordering::Relaxed)
        );

        let q = &self.queue;
        for (name, help, v) in [
            (
                "stratum_deliveries_pending",
                "Deliveries waiting for an attempt.",
                &q.pending,
            ),
            (
                "stratum_deliveries_due",
                "Pending deliveries due now.",
                &q.due,
            ),
            (
                "stratum_deliveries_oldest_due_age_seconds",
                "Age of the oldest due delivery.",
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
                "stratum_queue_gauges_refreshed_timestamp_seconds",
                "When the queue gauges were last refreshed.",
                &q.refreshed_at,
            ),
        ] {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }

        for (name, help, v) in [
            ("stratum_db_pool_size", "Connections open.", pool.size),
            ("stratum_db_pool_idle", "Connections idle.", pool.idle),
            (
                "stratum_db_pool_waiting",
                "Callers waiting for a connection.",
                pool.waiting,
            ),
            (
                "stratum_db_pool_max_size",
                "Connections allowed.",
                pool.max_size,
            ),
        ] {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }

        if let Some(d) = self.dispatcher.get() {
            header(
                &mut out,
                "stratum_delivery_attempts_total",
                "counter",
                "Delivery attempts by outcome.",
            );
            for (outcome, v) in [("success", &d.successes), ("failure", &d.failures)] {
                let _ = writeln!(
                    out,
                    "stratum_delivery_attempts_total{{outcome=\"{outcome}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
            header(
                &mut out,
                "stratum_deliveries_finished_total",
                "counter",
                "Deliveries finished by outcome.",
            );
            for (outcome, v) in [
                ("success", &d.successes),
                ("dead_lettered", &d.dead_lettered),
                ("gone", &d.gone),
                ("released", &d.released),
            ] {
                let _ = writeln!(
                    out,
                    "stratum_deliveries_finished_total{{outcome=\"{outcome}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
            header(
                &mut out,
                "stratum_webhooks_auto_disabled_total",
                "counter",
                "Webhooks disabled after a 410 Gone.",
            );
            let _ = writeln!(
                out,
                "stratum_webhooks_auto_disabled_total {}",
                d.gone.load(Ordering::Relaxed)
            );
            header(
                &mut out,
                "stratum_deliveries_in_flight",
                "gauge",
                "Deliveries claimed by this process and not finished.",
            );
            let _ = writeln!(
                out,
                "stratum_deliveries_in_flight {}",
                d.in_flight.load(Ordering::Relaxed)
            );
            header(
                &mut out,
                "stratum_delivery_latency_seconds",
                "histogram",
                "Event created to 2xx received.",
            );
            histogram(
                &mut out,
                "stratum_delivery_latency_seconds",
                "",
                &d.delivery_latency.snapshot(),
            );
            header(
                &mut out,
                "stratum_delivery_attempts",
                "histogram",
                "Attempts a delivery took until success or dead letter.",
            );
            histogram(
                &mut out,
                "stratum_delivery_attempts",
                "",
                &d.attempts_per_delivery.snapshot(),
            );
            header(
                &mut out,
                "stratum_delivery_attempt_duration_seconds",
                "histogram",
                "Duration of one attempt.",
            );
            histogram(
                &mut out,
                "stratum_delivery_attempt_duration_seconds",
                "",
                &d.attempt_duration.snapshot(),
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, labels: &str, s: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, n) in s.bounds.iter().zip(&s.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", s.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", s.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", s.count);
}

async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(state.storage.pool_stats()))
}

/// `GET /metrics`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(scrape));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = AtomicHistogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut out = String::new();
        histogram(&mut out, "x", "route=\"/a\"", &h.snapshot());
        assert!(out.contains("x_bucket{route=\"/a\",le=\"0.1\"} 1\n"));
        assert!(out.contains("x_bucket{route=\"/a\",le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"/a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{route=\"/a\"} 3\n"));
    }
}
