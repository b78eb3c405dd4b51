//! OpenTelemetry traces end to end: `stratum serve` and a separate `stratum worker` export
//! OTLP (HTTP/protobuf) to a receiver in the test, which decodes the spans; a webhook
//! receiver gets the delivery and its `traceparent`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{json, Value};
use stratum_e2e::{client, default_env, eventually, Received, Receiver, Stratum, TestDb, ADMIN};

const WAIT: Duration = Duration::from_secs(30);
/// The caller's trace: its id and the id of its span that made the request.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SECRET: &str = "a-webhook-secret-that-must-stay-private-42";
const TENANT_NAME: &str = "Payload Name Never In Attributes";
const QUERY_MARK: &str = "query-mark-never-in-attributes";

/// A span with its service's resource attributes.
struct Exported {
    span: Span,
    resource: Vec<KeyValue>,
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv)))
        .collect()
}

fn spans(sink: &Receiver) -> Vec<Exported> {
    sink.received_on("v1/traces")
        .iter()
        .flat_map(|r: &Received| {
            let req = ExportTraceServiceRequest::decode(r.body.as_slice())
                .expect("an ExportTraceServiceRequest");
            req.resource_spans
                .into_iter()
                .flat_map(|rs| {
                    let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                    rs.scope_spans
                        .into_iter()
                        .flat_map(|ss| ss.spans)
                        .map(move |span| Exported {
                            span,
                            resource: resource.clone(),
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn otel_env(db: &TestDb, sink: &Receiver) -> Vec<(String, String)> {
    let mut env = default_env(db);
    for (k, v) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.base.as_str()),
        ("OTEL_SERVICE_NAME", "stratum-e2e"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ] {
        env.push((k.to_owned(), v.to_owned()));
    }
    env
}

async fn create_webhook(app: &Stratum, rx: &Receiver) {
    let (st, hook) = app
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("{}/hook", rx.base), "events": ["tenant.created"], "secret": SECRET})),
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{hook}");
}

/// `POST /tenants` as a traced caller would send it (with a query string the span must not
/// show).
async fn create_tenant(app: &Stratum, traceparent: Option<&str>) -> Value {
    let mut req = client()
        .post(format!("{}/api/v1/tenants?mark={QUERY_MARK}", app.base))
        .header("X-API-Key", ADMIN)
        .json(&json!({"name": TENANT_NAME, "slug": "traced"}));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    res.json().await.unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_is_traced_from_the_request_to_the_receiver() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let sink = Receiver::start();
    let env = otel_env(&db, &sink);
    let app = Stratum::start(&["serve", "--no-worker"], &env)
        .await
        .unwrap();
    let _worker = Stratum::start(&["worker"], &env).await.unwrap();

    create_webhook(&app, &rx).await;
    let tenant = create_tenant(&app, Some(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))).await;
    assert!(
        rx.wait_for(WAIT, |r| r.iter().any(|x| x.path == "hook"))
            .await,
        "the delivery arrives"
    );
    let delivered = rx.received_on("hook").remove(0);
    let body: Value = serde_json::from_slice(&delivered.body).unwrap();
    assert_eq!(body["data"]["id"], tenant["id"]);

    // The request's span, its transaction and journal write, and the attempt's span.
    let found = eventually(WAIT, || async {
        let all = spans(&sink);
        let request = all.iter().any(|e| {
            attrs(&e.span).get("http.route").map(String::as_str) == Some("/api/v1/tenants")
                && attrs(&e.span)
                    .get("http.request.method")
                    .map(String::as_str)
                    == Some("POST")
        });
        let attempt = all
            .iter()
            .any(|e| attrs(&e.span).contains_key("stratum.delivery.attempt"));
        request && attempt
    })
    .await;
    assert!(found, "the spans are exported");
    let all = spans(&sink);

    let request = all
        .iter()
        .map(|e| &e.span)
        .find(|s| {
            attrs(s).get("http.route").map(String::as_str) == Some("/api/v1/tenants")
                && attrs(s).get("http.request.method").map(String::as_str) == Some("POST")
        })
        .unwrap();
    let a = attrs(request);
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(request.name, "POST /api/v1/tenants");
    assert_eq!(a["http.response.status_code"], "201");
    // It continues the caller's trace.
    assert_eq!(hex(&request.trace_id), CALLER_TRACE);
    assert_eq!(hex(&request.parent_span_id), CALLER_SPAN);

    // request → transaction → journal write, in the caller's trace.
    let transaction = all
        .iter()
        .map(|e| &e.span)
        .find(|s| s.name == "transaction" && s.parent_span_id == request.span_id)
        .expect("a transaction span under the request");
    assert_eq!(transaction.trace_id, request.trace_id);
    assert_eq!(attrs(transaction)["db.system.name"], "postgresql");
    let journal = all
        .iter()
        .map(|e| &e.span)
        .find(|s| s.name == "journal write" && s.parent_span_id == transaction.span_id)
        .expect("a journal write span under the transaction");
    assert_eq!(journal.trace_id, request.trace_id);

    // The attempt (in the worker process) links to the request that made the event.
    let attempt = all
        .iter()
        .find(|e| attrs(&e.span).contains_key("stratum.delivery.attempt"))
        .unwrap();
    let service = attempt
        .resource
        .iter()
        .find(|kv| kv.key == "service.name")
        .map(text);
    assert_eq!(service.as_deref(), Some("stratum-e2e"));
    let attempt = &attempt.span;
    let a = attrs(attempt);
    assert_eq!(attempt.kind, SpanKind::Client as i32);
    assert_eq!(a["stratum.delivery.attempt"], "1");
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(a["http.response.status_code"], "200");
    assert!(attempt.parent_span_id.is_empty(), "the attempt is a root");
    assert!(
        attempt
            .links
            .iter()
            .any(|l| l.trace_id == request.trace_id && l.span_id == request.span_id),
        "the attempt links to the request's span: {:?}",
        attempt.links
    );
    // The receiver's trace continues the attempt's span.
    assert_eq!(
        delivered.headers.get("traceparent").map(String::as_str),
        Some(format!("00-{}-{}-01", hex(&attempt.trace_id), hex(&attempt.span_id)).as_str())
    );

    // No attribute anywhere holds the secret, the API key, the payload or the query.
    for e in &all {
        for kv in e.span.attributes.iter().chain(&e.resource) {
            let v = text(kv);
            for forbidden in [SECRET, ADMIN, TENANT_NAME, QUERY_MARK] {
                assert!(
                    !v.contains(forbidden) && !kv.key.contains(forbidden),
                    "span {:?} attribute {} = {v:?} holds {forbidden:?}",
                    e.span.name,
                    kv.key
                );
            }
        }
        assert!(!e.span.name.contains(QUERY_MARK));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_variables_nothing_is_exported_or_propagated() {
    let db = TestDb::new().await;
    let rx = Receiver::start();
    let app = Stratum::start(&["serve"], &default_env(&db)).await.unwrap();
    create_webhook(&app, &rx).await;
    create_tenant(&app, Some(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))).await;
    assert!(
        rx.wait_for(WAIT, |r| r.iter().any(|x| x.path == "hook"))
            .await
    );
    let delivered = rx.received_on("hook").remove(0);
    assert_eq!(delivered.headers.get("traceparent"), None);
    assert_eq!(
        stratum_e2e::count(
            &db.url,
            "SELECT count(*) AS n FROM webhook_events WHERE trace_context IS NOT NULL"
        )
        .await
        .unwrap(),
        0,
        "no trace context is kept"
    );
}
