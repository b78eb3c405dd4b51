//! The middleware around every request, one job each (outermost first, as `crate::app`
//! wraps them): [`trace`], [`request_id`], [`access_log`], [`http_metrics`], [`method_not_allowed_body`],
//! [`body_deadline`].

use std::future::Future as _;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;

use crate::error::REQUEST_ID;

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The label of anything outside the known sets.
pub const OTHER: &str = "other";

/// The metrics label of a method: a standard one, or `other`.
pub fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => OTHER,
    }
}

/// Gives the request body a deadline (`STRATUM_REQUEST_BODY_TIMEOUT_MS`): a body that
/// has not fully arrived by then fails with a timed-out I/O error, which the body
/// extractors answer with 408 `REQUEST_TIMEOUT` (and the connection is closed).
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let timeout = req
        .app_data::<actix_web::web::Data<crate::AppState>>()
        .map(|s| s.body_timeout)
        .unwrap_or(DEFAULT_BODY_TIMEOUT);
    let inner = req.take_payload();
    let stream = DeadlineStream {
        inner,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        done: false,
    };
    req.set_payload(actix_web::dev::Payload::Stream {
        payload: Box::pin(stream),
    });
    next.call(req).await
}

/// The default of `STRATUM_REQUEST_BODY_TIMEOUT_MS`.
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct DeadlineStream {
    inner: actix_web::dev::Payload,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl futures_util::Stream for DeadlineStream {
    type Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.done = true;
                    Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request body deadline passed",
                        ),
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The request's id, available to handlers through extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// The id of `req`: the caller's `X-Request-Id` when sane, else a fresh UUIDv7.
fn incoming_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Gives every request an id (the caller's `X-Request-Id` when sane), makes it available to
/// handlers ([`RequestId`] in the extensions) and to error bodies (the task-local
/// [`REQUEST_ID`]), and echoes it on the response.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = incoming_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = REQUEST_ID.scope(id.clone(), next.call(req)).await?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    Ok(res)
}

/// Gives the empty 405 actix answers for an unregistered method the API's error body
/// (`METHOD_NOT_ALLOWED`), keeping its `Allow` header.
pub async fn method_not_allowed_body(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let mut res = next.call(req).await?.map_into_boxed_body();
    if res.status() == actix_web::http::StatusCode::METHOD_NOT_ALLOWED {
        let allow = res.headers().get(actix_web::http::header::ALLOW).cloned();
        res = res.map_body(|_, _| {
            BoxBody::new(
                serde_json::json!({"error": {"code": "METHOD_NOT_ALLOWED", "message": "method not allowed on this route"}})
                    .to_string(),
            )
        });
        res.headers_mut().insert(
            actix_web::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(a) = allow {
            res.headers_mut().insert(actix_web::http::header::ALLOW, a);
        }
    }
    Ok(res)
}

/// The route label of a request: its route template, or `other`. Labels come from fixed sets
/// only (route templates, standard methods), so no request can add a time series.
fn route_label(req: &actix_web::HttpRequest) -> String {
    req.match_pattern().unwrap_or_else(|| OTHER.to_owned())
}

/// Counts every request and observes its latency in the HTTP metrics, by route template,
/// method and status.
pub async fn http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let res = next.call(req).await?;
    let latency = started.elapsed().as_secs_f64();
    if let Some(state) = res
        .request()
        .app_data::<actix_web::web::Data<crate::AppState>>()
    {
        state.metrics.observe_http(
            &route_label(res.request()),
            method_label(&method),
            res.status().as_u16(),
            latency,
        );
    }
    Ok(res)
}

/// Logs one line per request: its id, method, route, status, latency and caller.
pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let res = next.call(req).await?;
    let latency = started.elapsed().as_secs_f64();
    let request = res.request();
    let id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let (key_id, tenant_id) = request
        .extensions()
        .get::<crate::auth::AuthInfo>()
        .map(|a| (Some(a.key_id.clone()), a.tenant_id.clone()))
        .unwrap_or_default();
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route_label(request),
        status = res.status().as_u16(),
        latency_ms = latency * 1000.0,
        key_id = key_id.as_deref().unwrap_or("-"),
        tenant_id = tenant_id.as_deref().unwrap_or("-"),
        "request"
    );
    Ok(res)
}

/// One server span per request for trace export (OpenTelemetry HTTP semantic conventions):
/// `http.request.method`, `http.route` (the route template, never the path or query) and
/// `http.response.status_code`, continuing the caller's W3C `traceparent`. Its context
/// becomes the task's [`trace_context`](stratum_core::trace_context), so the events the
/// request makes keep it. When no trace export is on, the span is disabled and the request
/// passes straight through.
pub async fn trace(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use tracing::field::Empty;
    // The conventions' name for a method outside the known set.
    let method = match method_label(req.method()) {
        OTHER => "_OTHER",
        known => known,
    };
    let span = tracing::info_span!(
        target: "stratum::trace",
        "HTTP request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = Empty,
        http.response.status_code = Empty,
    );
    if span.is_disabled() {
        return next.call(req).await;
    }
    // Known before routing (the application's resource map), so it names the span from
    // its start.
    if let Some(route) = req.match_pattern() {
        span.record("otel.name", format!("{method} {route}"));
        span.record("http.route", route);
    }
    let context = continue_trace(&span, req.headers());
    let out = stratum_core::trace_context::scope(
        context,
        tracing::Instrument::instrument(next.call(req), span.clone()),
    )
    .await;
    let status = match &out {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    out
}

/// Makes `span` the child of the caller's `traceparent` (when the process propagates W3C
/// trace context) and answers the span's own context as a `traceparent`.
#[cfg(feature = "otel")]
fn continue_trace(
    span: &tracing::Span,
    headers: &actix_web::http::header::HeaderMap,
) -> Option<String> {
    use opentelemetry::propagation::{Extractor, Injector};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    struct Incoming<'a>(&'a actix_web::http::header::HeaderMap);
    impl Extractor for Incoming<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    struct Traceparent(Option<String>);
    impl Injector for Traceparent {
        fn set(&mut self, key: &str, value: String) {
            if key == "traceparent" {
                self.0 = Some(value);
            }
        }
    }

    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Incoming(headers)));
    // Only fails when no OpenTelemetry layer is installed: the span is then a root.
    let _ = span.set_parent(parent);
    let mut out = Traceparent(None);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&span.context(), &mut out));
    out.0
}

/// Without the `otel` feature spans are not exported and carry no trace context.
#[cfg(not(feature = "otel"))]
fn continue_trace(
    _span: &tracing::Span,
    _headers: &actix_web::http::header::HeaderMap,
) -> Option<String> {
    None
}
