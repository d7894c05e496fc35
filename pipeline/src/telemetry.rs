//! Logging and trace-context propagation.
//!
//! Logs: `tracing` to stderr (stdout is reserved for command output such as
//! `bootstrap: …`, `tail` lines and `verify` JSON), filtered by `RUST_LOG`, else
//! `telemetry.log_filter`.
//!
//! Traces: an OpenTelemetry SDK tracer provider (no exporter yet: spans get real trace and
//! span ids, which travel with every record as a W3C `traceparent` Kafka header, so a
//! frame's trace id is the same in every stage). Span names and attribute keys follow the
//! OpenTelemetry messaging semantic conventions and live here, in one place.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log filter in `RUST_LOG` syntax (e.g. `info`, `vigil=debug,rdkafka=warn`);
    /// the `RUST_LOG` environment variable, when set, wins.
    pub log_filter: String,
    /// Reserved for the OTLP trace exporter, which is not implemented yet: setting it is
    /// rejected at start-up rather than silently ignored.
    pub otlp_endpoint: Option<String>,
    /// Address (`HOST:PORT`) of the HTTP port serving `/healthz`, `/readyz` and
    /// `/metrics` in `vigil detect` and `vigil sink` (e.g. `127.0.0.1:9464`, or
    /// `0.0.0.0:9464` in a container); unset: no port.
    pub http_addr: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info,opentelemetry=warn,opentelemetry_sdk=warn".into(),
            otlp_endpoint: None,
            http_addr: None,
        }
    }
}

impl TelemetryConfig {
    /// Checks values; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = EnvFilter::try_new(&self.log_filter) {
            return Err(("telemetry.log_filter", format!("{:?}: {e}", self.log_filter)));
        }
        if let Some(addr) = &self.http_addr {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err((
                    "telemetry.http_addr",
                    format!("{addr:?}: expected HOST:PORT with an IP address, e.g. 127.0.0.1:9464"),
                ));
            }
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            return Err((
                "telemetry.otlp_endpoint",
                format!("{endpoint:?}: OTLP export is not implemented yet; remove the setting"),
            ));
        }
        Ok(())
    }
}

/// Span names (`{operation} {destination}` per the messaging conventions, default topics).
pub(crate) mod spans {
    /// Producer: one frame sent to `images`.
    pub(crate) const IMAGES_PUBLISH: &str = "images publish";
    /// Detector: one frame consumed from `images` and turned into a result or dead letter.
    pub(crate) const IMAGES_PROCESS: &str = "images process";
    /// Sink: one result consumed from `detections` and stored.
    pub(crate) const DETECTIONS_PROCESS: &str = "detections process";
}

/// Attribute keys (OpenTelemetry messaging semantic conventions) and fixed values.
pub(crate) mod attributes {
    pub(crate) const MESSAGING_SYSTEM: &str = "messaging.system";
    pub(crate) const MESSAGING_SYSTEM_KAFKA: &str = "kafka";
    pub(crate) const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    pub(crate) const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
    pub(crate) const MESSAGING_DESTINATION_PARTITION_ID: &str = "messaging.destination.partition.id";
    pub(crate) const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
    pub(crate) const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
    pub(crate) const MESSAGING_KAFKA_MESSAGE_KEY: &str = "messaging.kafka.message.key";
    pub(crate) const MESSAGING_KAFKA_OFFSET: &str = "messaging.kafka.offset";
}

/// The instrumentation scope name of every Vigil span.
pub(crate) const TRACER_NAME: &str = "vigil";

/// Name of the W3C trace-context header carried by every record.
#[cfg(test)]
pub(crate) const TRACEPARENT_HEADER: &str = "traceparent";

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised,
}

/// Keeps the tracer provider alive; flushes and shuts it down on drop.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("vigil: cannot flush traces on exit: {e}");
        }
    }
}

/// Installs the log subscriber (stderr), the W3C propagator and the tracer provider.
/// Call once, at start-up, before any stage runs.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.trim().is_empty() => filter,
        _ => config.log_filter.clone(),
    };
    let env_filter = EnvFilter::try_new(&filter)
        .map_err(|e| TelemetryError::Filter { filter: filter.clone(), reason: e.to_string() })?;
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(init_tracing_context())
}

/// Installs only the propagator and tracer provider (no log subscriber): for tests and
/// embedders that manage logging themselves. Idempotent enough to call per test.
pub(crate) fn init_tracing_context() -> TelemetryGuard {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    global::set_tracer_provider(provider.clone());
    TelemetryGuard { provider }
}

/// Starts a span of `kind` named `name` as a child of `parent`, with the Kafka messaging
/// attributes, and returns the context holding it (end it by dropping the context's span
/// or calling `cx.span().end()`).
pub(crate) fn start_span(name: &'static str, kind: SpanKind, parent: &Context, attributes: Vec<KeyValue>) -> Context {
    let tracer = global::tracer(TRACER_NAME);
    let mut attrs = vec![KeyValue::new(attributes::MESSAGING_SYSTEM, attributes::MESSAGING_SYSTEM_KAFKA)];
    attrs.extend(attributes);
    let span = tracer.span_builder(name).with_kind(kind).with_attributes(attrs).start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Starts a consumer-side `process` span for one record read from `topic`, as a child of
/// the context that record carried (one shape for every stage that consumes).
pub(crate) fn start_process_span(
    name: &'static str,
    parent: &Context,
    topic: &str,
    partition: i32,
    group_id: &str,
    offset: i64,
) -> Context {
    start_span(
        name,
        SpanKind::Consumer,
        parent,
        vec![
            KeyValue::new(attributes::MESSAGING_OPERATION_TYPE, "process"),
            KeyValue::new(attributes::MESSAGING_DESTINATION_NAME, topic.to_owned()),
            KeyValue::new(attributes::MESSAGING_DESTINATION_PARTITION_ID, partition.to_string()),
            KeyValue::new(attributes::MESSAGING_CONSUMER_GROUP_NAME, group_id.to_owned()),
            KeyValue::new(attributes::MESSAGING_KAFKA_OFFSET, offset),
        ],
    )
}

/// The trace id of `cx` as 32 hex digits, or `None` when it carries no valid span
/// (for log lines that link to the trace).
#[cfg(test)]
pub(crate) fn trace_id(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Writes `cx`'s trace context (`traceparent`, `tracestate`) into Kafka headers,
/// replacing nothing (call it on headers that do not yet carry them).
pub(crate) fn inject_context(cx: &Context, headers: OwnedHeaders) -> OwnedHeaders {
    let mut fields = HeaderMap::default();
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut fields));
    fields.0.iter().fold(headers, |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_bytes()) }))
}

/// Reads the trace context from a record's headers (an empty context when there is none
/// or it is malformed: tracing never fails a record).
pub(crate) fn extract_context<H: Headers>(headers: Option<&H>) -> Context {
    match headers {
        Some(headers) => {
            let extractor = KafkaHeaders(headers);
            global::get_text_map_propagator(|p| p.extract(&extractor))
        }
        None => Context::new(),
    }
}

#[derive(Default)]
struct HeaderMap(HashMap<String, String>);

impl Injector for HeaderMap {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// Read-only view of Kafka headers for the propagator (UTF-8 values only).
struct KafkaHeaders<'a, H: Headers>(&'a H);

impl<H: Headers> Extractor for KafkaHeaders<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        // Last one wins, like Kafka clients' `lastHeader`.
        self.0
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(key))
            .filter_map(|h| h.value.and_then(|v| std::str::from_utf8(v).ok()))
            .last()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_roundtrips_through_kafka_headers() {
        let _guard = init_tracing_context();
        let cx = start_span(spans::IMAGES_PUBLISH, SpanKind::Producer, &Context::new(), vec![]);
        let id = trace_id(&cx).expect("sdk spans are valid");
        let headers = inject_context(&cx, OwnedHeaders::new().insert(Header { key: "other", value: Some("x") }));
        assert!(headers.iter().any(|h| h.key == TRACEPARENT_HEADER));
        let extracted = extract_context(Some(&headers));
        assert_eq!(trace_id(&extracted).as_deref(), Some(id.as_str()));
        // A child span in the next stage shares the trace id.
        let child = start_span(spans::IMAGES_PROCESS, SpanKind::Consumer, &extracted, vec![]);
        assert_eq!(trace_id(&child), Some(id));
    }

    #[test]
    fn missing_or_garbage_headers_give_an_empty_context() {
        let _guard = init_tracing_context();
        assert!(trace_id(&extract_context::<OwnedHeaders>(None)).is_none());
        let junk = OwnedHeaders::new().insert(Header { key: TRACEPARENT_HEADER, value: Some("not-a-traceparent") });
        assert!(trace_id(&extract_context(Some(&junk))).is_none());
    }

    #[test]
    fn otlp_endpoint_is_rejected_not_ignored() {
        let cfg = TelemetryConfig { otlp_endpoint: Some("http://x:4317".into()), ..Default::default() };
        assert_eq!(cfg.validate().unwrap_err().0, "telemetry.otlp_endpoint");
        assert!(TelemetryConfig::default().validate().is_ok());
    }
}
