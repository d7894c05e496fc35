//! Where traces and metrics go: the process's tracer and meter providers, with OTLP
//! exporters when an endpoint is configured and none otherwise.
//!
//! The standard variables win over the config file, as `RUST_LOG` wins over
//! `telemetry.log_filter`: an operator's `OTEL_EXPORTER_OTLP_ENDPOINT` in a pod spec must
//! not be shadowed by a file baked into the image. Nothing configured means nothing is
//! exported and nothing is said about it: a laptop run has no collector to complain
//! about. Metrics are always readable on `/metrics`; OTLP is an extra reader.

use std::time::Duration;

use opentelemetry::global;
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

use super::{TelemetryConfig, TelemetryError};
use crate::metrics;

/// OTLP transports (`telemetry.otlp_protocol`, `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, port 4317 by convention.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies, port 4318 by convention (the specification's default).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// One signal's export: over which protocol, and to which endpoint when the config file
/// names it (`None`: the exporter reads the standard variables itself, which also
/// appends `/v1/traces` or `/v1/metrics` to a base HTTP endpoint as the spec says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) protocol: OtlpProtocol,
    pub(crate) endpoint: Option<String>,
}

/// The two signals OTLP carries here.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The signal's part of the standard variable names (`OTEL_EXPORTER_OTLP_TRACES_…`).
    fn env_part(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }
}

/// Where `signal` goes, from the standard variables (read through `env`) and `config`;
/// `None`: not exported.
pub(crate) fn target(
    signal: Signal,
    config: &TelemetryConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Target>, TelemetryError> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let part = signal.env_part();
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var(&format!("OTEL_{part}_EXPORTER")).is_some_and(|v| v.trim() == "none")
    {
        return Ok(None);
    }
    let protocol =
        match var(&format!("OTEL_EXPORTER_OTLP_{part}_PROTOCOL")).or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            Some(value) => OtlpProtocol::parse(&value).ok_or(TelemetryError::Protocol(value))?,
            None => config.otlp_protocol.unwrap_or(OtlpProtocol::HttpProtobuf),
        };
    let from_env =
        var(&format!("OTEL_EXPORTER_OTLP_{part}_ENDPOINT")).is_some() || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let endpoint = match (&config.otlp_endpoint, protocol) {
        _ if from_env => None,
        (None, _) => return Ok(None),
        (Some(base), OtlpProtocol::Grpc) => Some(base.clone()),
        (Some(base), OtlpProtocol::HttpProtobuf) => {
            Some(format!("{}{}", base.trim_end_matches('/'), signal.http_path()))
        }
    };
    Ok(Some(Target { protocol, endpoint }))
}

/// Keeps the providers alive; flushes what is buffered and shuts them down on drop.
/// Drop it while the async runtime still runs: the gRPC exporter's connection lives there.
pub struct TelemetryGuard {
    tracer: SdkTracerProvider,
    meter: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.tracer.shutdown() {
            tracing::warn!(error = %e, "cannot flush traces on exit");
        }
        if let Some(meter) = &self.meter {
            if let Err(e) = meter.shutdown() {
                tracing::warn!(error = %e, "cannot flush metrics on exit");
            }
        }
    }
}

/// Installs the process's tracer and meter providers, their resource naming the process
/// (`service.name` = `service` unless `OTEL_SERVICE_NAME` says otherwise), with OTLP
/// exporters where `target` finds one. Call once, inside the async runtime (the gRPC
/// exporter's connection is spawned on it), before any stage runs.
pub fn install(service: &'static str, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let env = |name: &str| std::env::var(name).ok();
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none_or(|v| v.trim().is_empty()) {
        resource = resource.with_service_name(service);
    }
    let resource = resource.build();

    let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone());
    if env("OTEL_TRACES_SAMPLER").is_none() {
        tracer =
            tracer.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.trace_sample_ratio))));
    }
    let traces = target(Signal::Traces, config, env)?;
    if let Some(target) = &traces {
        tracer = tracer.with_batch_exporter(span_exporter(target)?);
    }
    let tracer = tracer.build();
    global::set_tracer_provider(tracer.clone());

    let metrics_target = target(Signal::Metrics, config, env)?;
    let meter = metrics::prometheus_reader().map(|reader| {
        let mut meter = SdkMeterProvider::builder().with_resource(resource).with_reader(reader);
        if let Some(target) = &metrics_target {
            match metric_exporter(target) {
                Ok(exporter) => meter = meter.with_reader(PeriodicReader::builder(exporter).build()),
                Err(e) => return Err(e),
            }
        }
        Ok(meter.build())
    });
    let meter = meter.transpose()?;
    if let Some(meter) = &meter {
        global::set_meter_provider(meter.clone());
    }
    for (signal, target) in [("traces", &traces), ("metrics", &metrics_target)] {
        if let Some(target) = target {
            let endpoint = target.endpoint.as_deref().unwrap_or("from OTEL_EXPORTER_OTLP_* variables");
            tracing::info!(signal, protocol = ?target.protocol, endpoint, service, "exporting over OTLP");
        }
    }
    Ok(TelemetryGuard { tracer, meter })
}

/// Installs a tracer provider without exporters, for tests that only need real span ids.
#[cfg(test)]
pub(crate) fn install_for_tests() -> TelemetryGuard {
    let tracer = SdkTracerProvider::builder().build();
    global::set_tracer_provider(tracer.clone());
    TelemetryGuard { tracer, meter: None }
}

const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `builder` with the export timeout and, when the config file names one, the endpoint.
fn configured<B: WithExportConfig>(builder: B, target: &Target) -> B {
    let builder = builder.with_timeout(EXPORT_TIMEOUT);
    match &target.endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint),
        None => builder,
    }
}

fn span_exporter(target: &Target) -> Result<SpanExporter, TelemetryError> {
    let built = match target.protocol {
        OtlpProtocol::Grpc => configured(SpanExporter::builder().with_tonic(), target).build(),
        OtlpProtocol::HttpProtobuf => {
            configured(SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary), target).build()
        }
    };
    built.map_err(|e| TelemetryError::Exporter(e.to_string()))
}

fn metric_exporter(target: &Target) -> Result<MetricExporter, TelemetryError> {
    let built = match target.protocol {
        OtlpProtocol::Grpc => configured(MetricExporter::builder().with_tonic(), target).build(),
        OtlpProtocol::HttpProtobuf => {
            configured(MetricExporter::builder().with_http().with_protocol(Protocol::HttpBinary), target).build()
        }
    };
    built.map_err(|e| TelemetryError::Exporter(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(
        signal: Signal,
        config: &TelemetryConfig,
        vars: &[(&str, &str)],
    ) -> Result<Option<Target>, TelemetryError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        target(signal, config, |name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_configured_exports_nothing() {
        let config = TelemetryConfig::default();
        assert_eq!(resolve(Signal::Traces, &config, &[]).unwrap(), None);
        assert_eq!(resolve(Signal::Metrics, &config, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap(), None);
    }

    #[test]
    fn the_config_file_names_a_base_endpoint() {
        let config = TelemetryConfig { otlp_endpoint: Some("http://jaeger:4318/".into()), ..Default::default() };
        let http = resolve(Signal::Traces, &config, &[]).unwrap().unwrap();
        assert_eq!(
            http,
            Target { protocol: OtlpProtocol::HttpProtobuf, endpoint: Some("http://jaeger:4318/v1/traces".into()) }
        );
        let metrics = resolve(Signal::Metrics, &config, &[]).unwrap().unwrap();
        assert_eq!(metrics.endpoint.as_deref(), Some("http://jaeger:4318/v1/metrics"));
        let grpc = TelemetryConfig { otlp_protocol: Some(OtlpProtocol::Grpc), ..config };
        assert_eq!(
            resolve(Signal::Traces, &grpc, &[]).unwrap().unwrap().endpoint.as_deref(),
            Some("http://jaeger:4318/")
        );
    }

    #[test]
    fn standard_variables_win_over_the_file() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://file:4318".into()),
            otlp_protocol: Some(OtlpProtocol::HttpProtobuf),
            ..Default::default()
        };
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        let t = resolve(Signal::Traces, &config, &vars).unwrap().unwrap();
        assert_eq!(
            t,
            Target { protocol: OtlpProtocol::Grpc, endpoint: None },
            "the exporter reads the variable itself"
        );
        // A per-signal variable alone turns that signal on, and only that one.
        let vars = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/v1/traces")];
        let none = TelemetryConfig::default();
        assert!(resolve(Signal::Traces, &none, &vars).unwrap().is_some());
        assert!(resolve(Signal::Metrics, &none, &vars).unwrap().is_none());
    }

    #[test]
    fn exporters_can_be_switched_off() {
        let config = TelemetryConfig { otlp_endpoint: Some("http://x:4318".into()), ..Default::default() };
        assert!(resolve(Signal::Traces, &config, &[("OTEL_SDK_DISABLED", "true")]).unwrap().is_none());
        assert!(resolve(Signal::Metrics, &config, &[("OTEL_METRICS_EXPORTER", "none")]).unwrap().is_none());
        assert!(resolve(Signal::Traces, &config, &[("OTEL_METRICS_EXPORTER", "none")]).unwrap().is_some());
    }

    /// The gRPC exporter dials the configured endpoint and speaks HTTP/2 there (no gRPC
    /// server runs in the tests: the receiver reads the client's connection preface, which
    /// every HTTP/2 connection opens with, then hangs up).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_grpc_exporter_sends_to_the_endpoint() {
        use std::io::Read;

        use opentelemetry::trace::{Tracer, TracerProvider};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let preface = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 24];
            stream.read_exact(&mut buf).unwrap();
            buf
        });
        let target = Target { protocol: OtlpProtocol::Grpc, endpoint: Some(endpoint) };
        let provider = SdkTracerProvider::builder().with_batch_exporter(span_exporter(&target).unwrap()).build();
        provider.tracer("test").in_span("exported", |_| {});
        // Fails (the receiver hangs up), after sending.
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await.unwrap();
        assert!(flushed.is_err(), "nothing answered, yet the export succeeded");
        assert_eq!(&preface.join().unwrap(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }

    #[test]
    fn an_unknown_protocol_is_an_error_that_names_it() {
        let config = TelemetryConfig { otlp_endpoint: Some("http://x:4318".into()), ..Default::default() };
        let err = resolve(Signal::Traces, &config, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert!(err.to_string().contains("http/json"), "{err}");
    }
}
