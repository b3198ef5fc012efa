//! Logging and tracing set-up. Logs: human-readable on a terminal, JSON lines elsewhere (workers,
//! Lambda, CI), or as `SIGNALS_LOG_FORMAT=json|text` says; level from `RUST_LOG` (default `info`).
//!
//! Traces: one trace per run. The scheduler opens it with a `run` span when it opens the run; every
//! job carries the W3C trace context in its envelope (`traceparent`), its host's `job` span takes
//! that as parent, and the jobs it emits carry the job span's own context — so snapshot, merge,
//! batch and push spans form one tree whichever hosts and queues they crossed. Spans are exported
//! over OTLP/HTTP (protobuf, or JSON with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise no
//! exporter exists and the span layer is not installed.

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes exported spans when dropped: hold it until the process ends.
#[must_use = "spans are flushed when the guard is dropped"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown_with_timeout(std::time::Duration::from_secs(10)) {
                eprintln!("warning: could not flush traces to the OTLP endpoint: {e}");
            }
        }
    }
}

/// The exporting provider, for [`flush`].
#[cfg(feature = "otel")]
static PROVIDER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = std::sync::OnceLock::new();

/// Sends buffered spans now: a Lambda is frozen between invocations, so each one ends with this.
pub fn flush() {
    #[cfg(feature = "otel")]
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.force_flush() {
            tracing::warn!(error = %e, "could not flush traces to the OTLP endpoint");
        }
    }
}

/// Installs the global subscriber once (later calls only return an empty guard). `service` names
/// the process in traces unless `OTEL_SERVICE_NAME` does.
pub fn init(default_level: &str, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = match std::env::var("SIGNALS_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // `RUST_LOG` filters the log lines only: spans go to the exporter at `info` whatever it says.
    let fmt = if json {
        fmt.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        fmt.compact().with_filter(filter).boxed()
    };
    #[cfg(feature = "otel")]
    {
        let (provider, layer) = match otel::exporting(service) {
            Some((provider, layer)) => (Some(provider), Some(layer)),
            None => (None, None),
        };
        let installed = tracing_subscriber::registry().with(layer).with(fmt).try_init().is_ok();
        let provider = provider.filter(|_| installed);
        if let Some(p) = &provider {
            let _ = PROVIDER.set(p.clone());
        }
        Telemetry { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = service;
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        Telemetry {}
    }
}

/// Makes `span` a child of the trace context a job carried (no-op without an exporter).
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otel")]
    if let Some(cx) = traceparent.and_then(otel::parse) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(cx);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, traceparent);
}

/// The W3C trace context of `span`, when spans are exported (else `None`).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    #[cfg(feature = "otel")]
    {
        otel::traceparent(span)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        None
    }
}

/// Opens the trace of a new run: a root `run` span (linked to the scheduler job that opened it)
/// whose context the run's first job carries. Without an exporter, a fresh trace id only.
pub fn start_run_trace(tenant: &str, source: &str, run_id: &str, kind: &str) -> String {
    let span = tracing::info_span!(parent: None, "run", otel.name = "run", stage = "scheduler",
        tenant, source, run = run_id, kind);
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let opener = tracing::Span::current().context().span().span_context().clone();
        if opener.is_valid() {
            span.add_link(opener);
        }
    }
    traceparent(&span).unwrap_or_else(crate::domain::job::new_traceparent)
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use opentelemetry::Context;
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use std::sync::OnceLock;
    use std::time::Duration;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;

    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

    /// The exporter and span layer, when an OTLP endpoint is configured.
    pub(super) fn exporting(service: &str) -> Option<(opentelemetry_sdk::trace::SdkTracerProvider, Boxed)> {
        let configured = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        if !configured("OTEL_EXPORTER_OTLP_ENDPOINT") && !configured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return None;
        }
        let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Ok("http/json") => opentelemetry_otlp::Protocol::HttpJson,
            _ => opentelemetry_otlp::Protocol::HttpBinary,
        };
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_http_client(BlockingClient)
            .with_timeout(Duration::from_secs(10))
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("warning: traces are not exported: {e}");
                return None;
            }
        };
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !configured("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name(service.to_owned());
        }
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        use opentelemetry::trace::TracerProvider;
        let tracer = provider.tracer("signals-etl");
        let layer: Boxed = Box::new(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
        Some((provider, layer))
    }

    /// A `traceparent` header value as a remote parent context.
    pub(super) fn parse(tp: &str) -> Option<Context> {
        let mut parts = tp.split('-');
        let (_version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let sc = SpanContext::new(
            TraceId::from_hex(trace).ok()?,
            SpanId::from_hex(span).ok()?,
            TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
            true,
            TraceState::default(),
        );
        sc.is_valid().then(|| Context::new().with_remote_span_context(sc))
    }

    pub(super) fn traceparent(span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid()
            .then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
    }

    /// OTLP over the reqwest the crate already uses, blocking: the SDK exports from its own
    /// batch thread (no async runtime there), and one HTTP stack keeps the binaries small.
    #[derive(Debug)]
    struct BlockingClient;

    fn client() -> Result<&'static reqwest::blocking::Client, opentelemetry_http::HttpError> {
        static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
        if let Some(c) = CLIENT.get() {
            return Ok(c);
        }
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(CLIENT.get_or_init(|| c))
    }

    #[async_trait::async_trait]
    impl opentelemetry_http::HttpClient for BlockingClient {
        async fn send_bytes(
            &self,
            request: http::Request<bytes::Bytes>,
        ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
            let (parts, body) = request.into_parts();
            let response = client()?
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body.to_vec())
                .send()?;
            let mut out = http::Response::builder().status(response.status());
            for (k, v) in response.headers() {
                out = out.header(k, v);
            }
            Ok(out.body(response.bytes()?)?)
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn traceparents_parse_into_remote_parents() {
            use opentelemetry::trace::TraceContextExt;
            let cx = super::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
            let sc = cx.span().span_context().clone();
            assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
            assert!(sc.is_remote() && sc.is_sampled());
            for bad in [
                "",
                "00-xyz-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ] {
                assert!(super::parse(bad).is_none(), "{bad}");
            }
        }
    }
}
