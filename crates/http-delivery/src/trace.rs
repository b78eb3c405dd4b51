//! The span of one delivery attempt (OpenTelemetry HTTP client conventions), linked to the
//! request that made the event, and the `traceparent` the receiver gets.

use stratum_webhooks::{AttemptOutcome, OutgoingRequest};
use tracing::field::Empty;
use tracing::Span;

/// A root span (attempts run on the workers, long after the request) for `request`; a
/// disabled one when no trace export is on.
pub(crate) fn attempt_span(request: &OutgoingRequest) -> Span {
    let span = tracing::info_span!(
        target: "stratum::trace",
        parent: None,
        "POST",
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = "POST",
        http.request.resend_count = Empty,
        http.response.status_code = Empty,
        server.address = Empty,
        server.port = Empty,
        error.type = Empty,
        stratum.delivery.attempt = request.attempt,
    );
    if span.is_disabled() {
        return span;
    }
    if request.attempt > 1 {
        span.record("http.request.resend_count", request.attempt - 1);
    }
    // The host and port only: a URL's path and query may carry a receiver's token.
    if let Ok(url) = reqwest::Url::parse(&request.url) {
        if let Some(host) = url.host_str() {
            span.record("server.address", host);
        }
        if let Some(port) = url.port_or_known_default() {
            span.record("server.port", port);
        }
    }
    span
}

/// Records what the attempt produced on its span.
pub(crate) fn record_outcome(span: &Span, outcome: &AttemptOutcome) {
    if span.is_disabled() {
        return;
    }
    match outcome.status {
        Some(status) => {
            span.record("http.response.status_code", status);
            if status >= 400 {
                span.record("error.type", status.to_string());
                span.record("otel.status_code", "error");
            }
        }
        None => {
            // The kind of failure, not its message (which may quote the target).
            let kind = if outcome.refused {
                "refused"
            } else {
                "transport"
            };
            span.record("error.type", kind);
            span.record("otel.status_code", "error");
        }
    }
}

/// Links `span` to the request that made the event (`caused_by`, a W3C `traceparent`)
/// and answers the `traceparent` that continues `span` at the receiver.
#[cfg(feature = "otel")]
pub(crate) fn link_and_propagate(span: &Span, caused_by: Option<&str>) -> Option<String> {
    use std::collections::HashMap;

    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    if span.is_disabled() {
        return None;
    }
    if let Some(caused_by) = caused_by {
        let carrier = HashMap::from([("traceparent".to_owned(), caused_by.to_owned())]);
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        // An invalid or absent context adds no link.
        span.add_link(cx.span().span_context().clone());
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&span.context(), &mut carrier)
    });
    carrier.remove("traceparent")
}

/// Without the `otel` feature nothing is linked or propagated.
#[cfg(not(feature = "otel"))]
pub(crate) fn link_and_propagate(_span: &Span, _caused_by: Option<&str>) -> Option<String> {
    None
}
