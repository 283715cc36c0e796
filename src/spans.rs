//! OpenTelemetry spans of an event's way through hookrelay, exported over
//! OTLP/HTTP with `--otlp-endpoint` (off by default): ingest's request, its
//! store write, and each attempt. The spans carry exactly the ids that were
//! propagated (ingest's span is the `traceparent` stored with the event,
//! an attempt's the one its request carried), so the CMS's, hookrelay's and
//! the handler's spans join in one trace. Made with the OpenTelemetry API
//! directly rather than through `tracing`: a `tracing` span cannot be given
//! its span id. No payload, header value or secret is an attribute.

use crate::trace_context::parse;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

/// Whether spans are exported: nothing is built otherwise.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The exporter, flushed and stopped when dropped (at shutdown).
pub struct Exporter(opentelemetry_sdk::trace::SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.0.shutdown() {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}

/// Exports spans of `service` (`hookrelay-ingest`, `hookrelay-controller`)
/// to the OTLP/HTTP collector at `endpoint` (`http://collector:4318`).
pub fn export(endpoint: &str, service: &'static str) -> anyhow::Result<Exporter> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let traces = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces.as_str())
        .with_headers(Default::default())
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", crate::VERSION))
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Exporter(provider))
}

/// Where spans are posted: `/v1/traces` under the endpoint, its own path
/// kept (as `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
fn traces_url(endpoint: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| anyhow::anyhow!("--otlp-endpoint: not an http(s) URL such as http://otel-collector:4318"))?;
    let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// A parent given by a `traceparent` (a remote span: another process's).
fn remote_parent(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let parent = parse(traceparent)?;
    let context = SpanContext::new(
        TraceId::from_hex(parent.trace_id).ok()?,
        SpanId::from_hex(parent.span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(parent.flags, 16).ok()?),
        true,
        tracestate
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default(),
    );
    Some(Context::new().with_remote_span_context(context))
}

/// One finished span.
pub struct Finished<'a> {
    pub name: &'static str,
    pub kind: SpanKind,
    /// Its own id and trace, as a `traceparent`.
    pub traceparent: &'a str,
    /// Its parent's `traceparent` (none: a root), and `tracestate`.
    pub parent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Why it failed, if it did (an attribute-safe text: no secrets).
    pub error: Option<String>,
}

/// Exports `span` when spans are exported.
pub fn record(span: Finished<'_>) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let Some(own) = parse(span.traceparent) else { return };
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(own.trace_id), SpanId::from_hex(own.span_id)) else {
        return;
    };
    let parent = span
        .parent
        .and_then(|p| remote_parent(p, span.tracestate))
        .unwrap_or_default();
    let tracer = opentelemetry::global::tracer("hookrelay");
    let mut built = tracer
        .span_builder(span.name)
        .with_kind(span.kind)
        .with_trace_id(trace_id)
        .with_span_id(span_id)
        .with_start_time(span.start)
        .with_attributes(span.attributes)
        .start_with_context(&tracer, &parent);
    if let Some(error) = span.error {
        built.set_status(Status::error(error));
    }
    built.end_with_timestamp(span.end);
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_go_to_v1_traces_under_the_endpoints_own_path() {
        for (endpoint, posted) in [
            ("http://otel-collector:4318", "http://otel-collector:4318/v1/traces"),
            ("http://otel-collector:4318/", "http://otel-collector:4318/v1/traces"),
            ("https://gateway.example/otlp", "https://gateway.example/otlp/v1/traces"),
            (
                "https://gateway.example/otlp/",
                "https://gateway.example/otlp/v1/traces",
            ),
        ] {
            assert_eq!(traces_url(endpoint).unwrap().as_str(), posted);
        }
        for wrong in ["otel-collector:4318", "ftp://otel-collector"] {
            assert!(traces_url(wrong).unwrap_err().to_string().contains("--otlp-endpoint"));
        }
    }
}
