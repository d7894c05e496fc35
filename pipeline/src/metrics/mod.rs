//! The stages' OpenTelemetry metrics, and the reader that serves them as Prometheus text
//! on `/metrics` (see `http`).
//!
//! Instruments come from the global meter provider, which `telemetry::install` sets up once
//! per process before any stage runs; before that (unit tests, embedders) they record into a
//! no-op meter. Names follow OpenTelemetry (`vigil.frames.consumed`, unit `s`) and read
//! the Prometheus way on `/metrics` (`vigil_frames_consumed_total`,
//! `vigil_inference_duration_seconds`). Labels stay low-cardinality: a dead letter's
//! kind, a transaction's outcome, a partition number.

mod prometheus;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};
use opentelemetry::{global, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

/// The instrumentation scope of every Vigil metric.
const METER_NAME: &str = "vigil";

/// Bucket bounds in seconds for durations from a millisecond to a minute.
const SECONDS_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// Bucket bounds for batch sizes.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Every instrument a stage records into.
pub(crate) struct Metrics {
    /// Frames read from `images` (detector).
    pub frames_consumed: Counter<u64>,
    /// Results committed to `detections` (detector).
    pub results_produced: Counter<u64>,
    /// Dead letters committed, by `kind` (detector).
    pub dead_letters: Counter<u64>,
    /// Batch commits by `outcome`: `committed` or `aborted` (detector).
    pub transactions: Counter<u64>,
    /// Frames per model call (detector).
    pub batch_size: Histogram<u64>,
    /// Time of one model call (detector).
    pub inference_duration: Histogram<f64>,
    /// Rebalances this member took part in (detector, sink).
    pub rebalances: Counter<u64>,
    /// Rows newly stored in the database (sink).
    pub rows_stored: Counter<u64>,
    /// Time to store one batch in the database, retries included (sink).
    pub db_write_duration: Histogram<f64>,
    /// From a frame's capture to its result being stored (sink).
    pub e2e_latency: Histogram<f64>,
    /// Time to answer an API request, by `http.route`, `http.request.method` and
    /// `http.response.status_code` (its count is the request count).
    pub http_duration: Histogram<f64>,
    /// Records behind the end of each partition this process consumes, by `topic` and
    /// `partition` (detector, sink), observed from [`consumer_lag`]'s table at each
    /// collection. Held only to keep its callback registered.
    _consumer_lag: ObservableGauge<i64>,
    /// Average round-trip time to each broker, by `broker` (node id), from [`broker_rtt`]'s
    /// table: a slow or overloaded broker shows here first.
    _broker_rtt: ObservableGauge<f64>,
}

/// The latest lag per (topic, partition) a consumer of this process reported, replaced
/// topic by topic, so that partitions it no longer owns disappear from `/metrics`.
static CONSUMER_LAG: Mutex<BTreeMap<(String, i32), i64>> = Mutex::new(BTreeMap::new());

/// Sets the lag of every partition of `topic` this process consumes now (librdkafka's
/// statistics); partitions left out are no longer reported.
pub(crate) fn consumer_lag(topic: &str, lags: impl IntoIterator<Item = (i32, i64)>) {
    let mut table = CONSUMER_LAG.lock().unwrap_or_else(|p| p.into_inner());
    table.retain(|(t, _), _| t != topic);
    table.extend(lags.into_iter().map(|(partition, lag)| ((topic.to_owned(), partition), lag)));
}

/// The latest round-trip time per broker node id, seconds (librdkafka's statistics).
static BROKER_RTT: Mutex<BTreeMap<i32, f64>> = Mutex::new(BTreeMap::new());

/// Sets each broker's average round-trip time, seconds; brokers left out are no longer
/// reported.
pub(crate) fn broker_rtt(rtts: impl IntoIterator<Item = (i32, f64)>) {
    let mut table = BROKER_RTT.lock().unwrap_or_else(|p| p.into_inner());
    table.clear();
    table.extend(rtts);
}

/// A copy of the consumer-lag table, for tests.
#[cfg(test)]
pub(crate) fn consumer_lags() -> BTreeMap<(String, i32), i64> {
    CONSUMER_LAG.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The process's instruments (no-op ones until `telemetry::install` ran).
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&global::meter(METER_NAME)))
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, description: &'static str| {
            meter.u64_counter(name).with_description(description).build()
        };
        Metrics {
            frames_consumed: counter("vigil.frames.consumed", "Frames read from the images topic"),
            results_produced: counter("vigil.results.produced", "Results committed to the detections topic"),
            dead_letters: counter("vigil.dead_letters", "Dead letters committed, by kind"),
            transactions: counter("vigil.transactions", "Batch commits by outcome (committed, aborted)"),
            batch_size: meter
                .u64_histogram("vigil.batch.size")
                .with_description("Frames per model call")
                .with_boundaries(BATCH_BUCKETS.to_vec())
                .build(),
            inference_duration: seconds("vigil.inference.duration", "Time of one model call"),
            rebalances: counter(
                "vigil.rebalances",
                "Consumer group rebalances this member took part in (assignments received)",
            ),
            rows_stored: counter("vigil.rows.stored", "Rows newly stored in the database"),
            db_write_duration: seconds("vigil.db.write.duration", "Time to store one batch, retries included"),
            e2e_latency: seconds("vigil.e2e.latency", "From a frame's capture to its result being stored"),
            http_duration: seconds("http.server.request.duration", "Time to answer an API request"),
            _consumer_lag: meter
                .i64_observable_gauge("vigil.consumer.lag")
                .with_description("Records behind the end of each partition this process consumes")
                .with_callback(|observer| {
                    let table = CONSUMER_LAG.lock().unwrap_or_else(|p| p.into_inner());
                    for ((topic, partition), lag) in table.iter() {
                        let labels =
                            [KeyValue::new("topic", topic.clone()), KeyValue::new("partition", i64::from(*partition))];
                        observer.observe(*lag, &labels);
                    }
                })
                .build(),
            _broker_rtt: meter
                .f64_observable_gauge("vigil.kafka.broker.rtt")
                .with_unit("s")
                .with_description("Average round-trip time of requests to each broker (librdkafka's statistics)")
                .with_callback(|observer| {
                    let table = BROKER_RTT.lock().unwrap_or_else(|p| p.into_inner());
                    for (broker, rtt) in table.iter() {
                        observer.observe(*rtt, &[KeyValue::new("broker", i64::from(*broker))]);
                    }
                })
                .build(),
        }
    }
}

/// Records one answered API request.
pub(crate) fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let labels = [
        KeyValue::new("http.route", route.to_owned()),
        KeyValue::new("http.request.method", method.to_owned()),
        KeyValue::new("http.response.status_code", i64::from(status)),
    ];
    metrics().http_duration.record(elapsed.as_secs_f64(), &labels);
}

/// Records a dead letter of `kind`.
pub(crate) fn dead_letter(kind: &'static str) {
    metrics().dead_letters.add(1, &[KeyValue::new("kind", kind)]);
}

/// Records a batch commit's outcome (`committed` or `aborted`).
pub(crate) fn transaction(outcome: &'static str) {
    metrics().transactions.add(1, &[KeyValue::new("outcome", outcome)]);
}

/// Records a duration into a seconds histogram.
pub(crate) fn seconds(histogram: &Histogram<f64>, elapsed: Duration) {
    histogram.record(elapsed.as_secs_f64(), &[]);
}

static READER: OnceLock<SharedReader> = OnceLock::new();

/// The reader [`render_prometheus`] collects from, for the process's meter provider
/// (`telemetry::install`). Once per process: later calls get `None`.
pub(crate) fn prometheus_reader() -> Option<impl MetricReader> {
    let reader = SharedReader(Arc::new(ManualReader::builder().build()));
    READER.set(reader.clone()).ok()?;
    Some(reader)
}

/// Every metric of this process as Prometheus text exposition (format 0.0.4); empty
/// before `telemetry::install`.
pub fn render_prometheus() -> Result<String, OTelSdkError> {
    let Some(reader) = READER.get() else {
        return Ok(String::new());
    };
    let mut collected = ResourceMetrics::default();
    reader.0.collect(&mut collected)?;
    Ok(prometheus::encode(&collected))
}

/// A [`ManualReader`] the provider owns and `/metrics` shares.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}
