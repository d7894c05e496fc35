//! Logs, traces and the export of traces and metrics.
//!
//! Logs: `tracing` to stderr (stdout is reserved for command output such as
//! `bootstrap: …`, `tail` lines and `verify` JSON), filtered by `RUST_LOG`, else
//! `telemetry.log_filter`; a line logged inside a frame's span names its trace
//! (`log_format`).
//!
//! Traces: a frame's trace starts at the producer and its W3C context travels with every
//! record (`propagation`); span names and attributes live in `spans`. Export over OTLP
//! (`export`) is on only when an endpoint is configured.

mod export;
mod log_format;
mod propagation;
pub(crate) mod spans;

use serde::{Deserialize, Serialize};
use tracing_subscriber::fmt::format::Format;
use tracing_subscriber::EnvFilter;

pub use self::export::{install, OtlpProtocol, TelemetryGuard};
pub(crate) use self::propagation::{extract_context, extract_http, inject_context};
pub use self::spans::SEMCONV_VERSION;

/// `service.name` of each role (`OTEL_SERVICE_NAME`, when set, wins).
pub mod service {
    pub const PRODUCER: &str = "vigil-producer";
    pub const DETECTOR: &str = "vigil-detector";
    pub const SINK: &str = "vigil-sink";
    /// `vigil serve`: the HTTP API.
    pub const API: &str = "vigil-api";
    /// `vigil up`: broker, detector and sink in one process.
    pub const UP: &str = "vigil-up";
    /// One-off tools (`tail`, `verify`, `chaos`, `bench`, ...).
    pub const TOOLS: &str = "vigil-cli";
}

/// The `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log filter in `RUST_LOG` syntax (e.g. `info`, `vigil=debug,rdkafka=warn`);
    /// the `RUST_LOG` environment variable, when set, wins.
    pub log_filter: String,
    /// Base URL of an OTLP receiver (a collector, Jaeger) for traces and metrics, e.g.
    /// `http://localhost:4318` (HTTP) or `http://localhost:4317` (gRPC); unset: nothing is
    /// exported. `OTEL_EXPORTER_OTLP_ENDPOINT` (and the per-signal variables), when set, win.
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (the default); `OTEL_EXPORTER_OTLP_PROTOCOL` wins.
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Fraction of new traces recorded, 0.0..=1.0 (a frame's later stages follow its
    /// producer's decision); `OTEL_TRACES_SAMPLER`/`_ARG`, when set, win.
    pub trace_sample_ratio: f64,
    /// Address (`HOST:PORT`) of the HTTP port serving `/healthz`, `/readyz` and
    /// `/metrics` in `vigil detect`, `vigil sink` and `vigil up` (e.g. `127.0.0.1:9464`,
    /// or `0.0.0.0:9464` in a container); unset: no port.
    pub http_addr: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info,opentelemetry=warn,opentelemetry_sdk=warn".into(),
            otlp_endpoint: None,
            otlp_protocol: None,
            trace_sample_ratio: 1.0,
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
            let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !scheme_ok || endpoint.parse::<axum::http::Uri>().is_err() {
                return Err((
                    "telemetry.otlp_endpoint",
                    format!("{endpoint:?}: expected a URL such as http://localhost:4318 (HTTP) or http://localhost:4317 (gRPC)"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(("telemetry.trace_sample_ratio", format!("{}: expected 0.0 to 1.0", self.trace_sample_ratio)));
        }
        Ok(())
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised,
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL (or a per-signal one) is {0:?}: expected grpc or http/protobuf")]
    Protocol(String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Installs the log subscriber (stderr) and the W3C propagator. Call once, at start-up,
/// before anything logs; then [`install`] the providers inside the async runtime.
pub fn init(config: &TelemetryConfig) -> Result<(), TelemetryError> {
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
        .event_format(log_format::WithTraceIds(Format::default().with_target(true)))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    set_propagator();
    Ok(())
}

fn set_propagator() {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
}

/// The propagator and a tracer provider without exporters (no log subscriber): for tests
/// that need real span ids. Idempotent enough to call per test.
#[cfg(test)]
pub(crate) fn init_for_tests() -> TelemetryGuard {
    set_propagator();
    export::install_for_tests()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_settings_are_checked() {
        assert!(TelemetryConfig::default().validate().is_ok());
        let ok = TelemetryConfig { otlp_endpoint: Some("http://jaeger:4317".into()), ..Default::default() };
        assert!(ok.validate().is_ok());
        for bad in ["jaeger:4317", "ftp://x", "http://bad host"] {
            let cfg = TelemetryConfig { otlp_endpoint: Some(bad.into()), ..Default::default() };
            assert_eq!(cfg.validate().unwrap_err().0, "telemetry.otlp_endpoint", "{bad}");
        }
        let cfg = TelemetryConfig { trace_sample_ratio: 1.5, ..Default::default() };
        assert_eq!(cfg.validate().unwrap_err().0, "telemetry.trace_sample_ratio");
    }
}
