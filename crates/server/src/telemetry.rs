//! Logs: pretty on a terminal, JSON lines otherwise; `RUST_LOG` filters.
//!
//! Traces (the `otel` feature): OTLP over HTTP/protobuf when the standard variables ask for
//! it (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the SDK also
//! reads `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`(`_ARG`),
//! `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_*HEADERS`/`TIMEOUT`). The spans are those of the
//! `stratum::trace` target: one per request, its database transactions and journal writes,
//! one per delivery attempt. Without those variables no trace layer is installed, the spans
//! are disabled at their call sites (the logs never show them) and no context propagates.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of every span made for trace export.
pub const TRACE_TARGET: &str = "stratum::trace";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (then queues read the events' trace contexts).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[must_use = "call shutdown before exiting so the last spans are exported"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing the last spans failed");
            }
        }
    }
}

/// Installs the global subscriber: the log layer and, when asked for, the trace exporter.
pub fn init() -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // The trace spans are for the exporter, not the log.
        .add_directive(format!("{TRACE_TARGET}=off").parse()?);
    let json = match std::env::var("STRATUM_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let registry = tracing_subscriber::registry().with(logs);

    #[cfg(feature = "otel")]
    {
        let provider = otel::provider()?;
        let traces = provider.as_ref().map(otel::layer);
        registry.with(traces).init();
        if provider.is_some() {
            EXPORTING.store(true, Ordering::Relaxed);
            tracing::info!("exporting traces over OTLP (HTTP/protobuf)");
        }
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        if otel_requested() {
            tracing::warn!("OTEL_EXPORTER_OTLP_ENDPOINT is set but this build has no trace export (the `otel` feature)");
        }
        Ok(Telemetry {})
    }
}

/// Whether the environment asks for OTLP trace export.
fn otel_requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

#[cfg(feature = "otel")]
mod otel {
    use anyhow::Context as _;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::Layer;

    use super::TRACE_TARGET;

    /// The tracer provider the environment asks for, if any.
    pub(super) fn provider() -> anyhow::Result<Option<SdkTracerProvider>> {
        if !super::otel_requested() {
            return Ok(None);
        }
        if let Ok(p) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            if p != "http/protobuf" {
                eprintln!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={p}: only http/protobuf is supported; using it"
                );
            }
        }
        // An https endpoint needs a rustls provider; ring is the process's one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .context("building the OTLP span exporter (OTEL_EXPORTER_OTLP_*)")?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("stratum");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        Ok(Some(provider))
    }

    /// The layer that turns the `stratum::trace` spans into OpenTelemetry spans.
    pub(super) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("stratum"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(TRACE_TARGET, tracing::Level::TRACE))
    }
}
