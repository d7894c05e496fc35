//! `vigil bench pipeline`: the whole pipeline under a measured load, as separate
//! processes like a deployment: `sources` producers (`vigil produce --loop` over an image
//! directory, one source each), `workers` detectors and one sink writing SQLite, children
//! of this process; the embedded broker runs inside this process unless a cluster is named.
//! Each source id is picked to land in a partition of its own: frames spread over the
//! partitions evenly, and on the embedded broker each partition has one producer, which
//! its backpressure needs (see `producer::backpressure`: the mock drops what a partition
//! holds beyond 5 MiB).
//!
//! Throughput is rows over the span from the first frame's capture to the last row's
//! storage; latency is each row's `stored_at_us - captured_at_us` (the producer stamps the
//! capture when it reads the file). CPU seconds and peak RSS come from the kernel: the
//! children's from `/proc` (sampled every 100 ms for the producers, which exit on their
//! own; read just before they are stopped for the detectors and the sink), this process's
//! (the embedded broker and the bench's own polling) likewise, over the run. The model's own speed is timed by the caller, in a process of its own, so that
//! none of these figures include it.

mod usage;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::chaos::{env_key, percentile};
use crate::detector::Delivery;
use crate::fleet::{owns_partitions, Fleet, FleetError, ProcId};
use crate::kafka::{DevBroker, KafkaPlumbingError};
use crate::settings::Settings;

use self::usage::{proc_usage, self_usage, Usage};

/// Partitions of the bench's `images` and `detections` topics: room for 12 workers.
const PARTITIONS: i32 = 12;
/// How long a worker may take to load the model and join the group.
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);
/// The run fails when no row arrives for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchPipelineConfig {
    /// Frames to send in all.
    pub frames: u64,
    /// Detector processes.
    pub workers: u32,
    /// Producer processes, one source id each.
    pub sources: u32,
    pub delivery: Delivery,
    /// Offered frames per second in all (open loop); `None`: as fast as the producers go.
    pub rate: Option<f64>,
    /// A Kafka cluster; `None`: the embedded broker.
    pub bootstrap: Option<String>,
    /// Images the producers cycle through.
    pub images: PathBuf,
    /// The `vigil` binary the children run.
    pub vigil_bin: PathBuf,
    /// Logs and the database.
    pub work_dir: PathBuf,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Kafka(Box<KafkaPlumbingError>),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Interrupted,
}

impl From<KafkaPlumbingError> for BenchError {
    fn from(e: KafkaPlumbingError) -> Self {
        BenchError::Kafka(Box::new(e))
    }
}

impl BenchError {
    /// A wrong command line: exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(self, BenchError::Usage(_))
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Latency {
    /// Percentiles of the spans `end - start`, microseconds in, milliseconds out.
    fn of(spans: impl Iterator<Item = (i64, i64)>) -> Latency {
        let mut us: Vec<u64> = spans.map(|(start, end)| (end - start).max(0) as u64).collect();
        us.sort_unstable();
        let ms = |p: f64| percentile(&us, p).unwrap_or_default() as f64 / 1e3;
        Latency { p50: ms(50.0), p95: ms(95.0), p99: ms(99.0) }
    }
}

/// Where the capture-to-stored time goes: up to the detector's result (the source's
/// producer, the broker, the detector's queue and the model), then on to the row (the
/// detector's produce and commit, the broker, the sink's batch and write).
#[derive(Debug, Clone, Serialize)]
pub struct LatencySplit {
    pub capture_to_processed: Latency,
    pub processed_to_stored: Latency,
}

/// Per stage: CPU seconds (user + system) and the largest resident set of its processes.
#[derive(Debug, Clone, Serialize)]
pub struct StageUsage {
    pub producer: Usage,
    /// This process: the embedded broker (idle with a cluster) and the bench's polling.
    pub broker: Usage,
    pub detector: Usage,
    pub sink: Usage,
}

/// What `vigil bench pipeline` prints (`--json`: this object).
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub frames: u64,
    pub seconds: f64,
    pub frames_per_s: f64,
    /// The model alone on the same backend and images, measured in the same run.
    pub model_frames_per_s: f64,
    /// `frames_per_s / model_frames_per_s`.
    pub efficiency: f64,
    pub latency_ms: Latency,
    /// `latency_ms` in two parts, at the detector's `processed_at_us` stamp.
    pub latency_split_ms: LatencySplit,
    /// Mean batch size per frame (each row's batch, averaged over rows).
    pub batch_mean: f64,
    pub workers: u32,
    pub delivery: String,
    /// Offered frames per second (`null`: as fast as the producers go).
    pub rate: Option<f64>,
    pub broker: String,
    pub usage: StageUsage,
    pub dead_letters: u64,
    pub dir: String,
}

/// Runs the pipeline until every frame has a row (or a dead letter); `model_frames_per_s`
/// is the model's own speed, measured by the caller. Blocking: call it off the runtime.
pub fn run(
    settings: &Settings,
    config: &BenchPipelineConfig,
    model_frames_per_s: f64,
    stop: &CancellationToken,
    progress: &dyn Fn(u64, u64),
) -> Result<PipelineReport, BenchError> {
    validate(config)?;
    std::fs::create_dir_all(&config.work_dir).map_err(|e| io(&config.work_dir, e))?;
    let (broker, bootstrap) = DevBroker::unless_cluster(config.bootstrap.as_deref(), 1)?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let database = config.work_dir.join(format!("bench-{id}.sqlite"));
    let database_url = format!("sqlite://{}", database.display());
    let (vars, kafka) = child_env(settings, config, &id, &bootstrap, &database_url);
    match &broker {
        Some(b) => b.create_topics(&kafka)?,
        None => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| io("a runtime", e))?;
            runtime.block_on(crate::kafka::ensure_topics(&kafka, &kafka.topics.all()))?;
        }
    }

    let mut fleet = Fleet::new(&config.vigil_bin, &config.work_dir, vars);
    let sink = fleet.spawn("sink", &["sink"], &[])?;
    let mut detectors = Vec::new();
    for i in 1..=config.workers {
        let instance = format!("bench-{id}-det-{i}");
        detectors.push(fleet.spawn(&format!("det-{i}"), &["detect", "--instance-id", &instance], &[])?);
    }
    for &det in &detectors {
        if !fleet.wait_for_log(det, owns_partitions, JOIN_TIMEOUT, stop) {
            return Err(failed_or_interrupted(stop, format!("a detector got no partitions:\n{}", fleet.tails(15))));
        }
    }

    let self_before = self_usage();
    let producers = spawn_producers(&mut fleet, config)?;
    let mut watched: Vec<ProcId> = detectors.clone();
    watched.push(sink);
    let mut producer_usage: Vec<Usage> = vec![Usage::default(); producers.len()];
    let mut last_rows = 0;
    let mut last_progress = Instant::now();
    let (rows, dead_letters) = loop {
        if stop.is_cancelled() {
            return Err(BenchError::Interrupted);
        }
        for (seen, &p) in producer_usage.iter_mut().zip(&producers) {
            if fleet.is_running(p) {
                *seen = proc_usage(fleet.pid(p));
            }
        }
        let (rows, dead) = outcomes(&database);
        progress(rows + dead, config.frames);
        if rows + dead >= config.frames {
            break (rows, dead);
        }
        if rows + dead != last_rows {
            last_rows = rows + dead;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_TIMEOUT {
            return Err(BenchError::Failed(format!(
                "no progress for {} s at {} of {} frames:\n{}",
                STALL_TIMEOUT.as_secs(),
                rows + dead,
                config.frames,
                fleet.tails(15)
            )));
        }
        if let Some(&gone) = watched.iter().find(|&&p| !fleet.is_running(p)) {
            return Err(BenchError::Failed(format!(
                "{} exited during the run:\n{}",
                fleet.label(gone),
                fleet.tails(15)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for &p in &producers {
        if fleet.wait(p, Duration::from_secs(30)).is_none_or(|s| !s.success()) {
            return Err(BenchError::Failed(format!(
                "producer {} did not finish cleanly:\n{}",
                fleet.label(p),
                fleet.log(p)
            )));
        }
    }
    let producer = Usage::sum(producer_usage);
    let broker_usage = self_usage().since(&self_before);
    let detector = Usage::sum(detectors.iter().map(|&d| proc_usage(fleet.pid(d))));
    let sink_usage = proc_usage(fleet.pid(sink));
    for p in watched {
        fleet.terminate(p, Duration::from_secs(30));
    }

    let stored = stored_rows(&database)?;
    let first_capture = stored.iter().map(|r| r.captured_at_us).min().unwrap_or_default();
    let last_store = stored.iter().map(|r| r.stored_at_us).max().unwrap_or_default();
    let seconds = (last_store - first_capture).max(1) as f64 / 1e6;
    let batch_mean = stored.iter().map(|r| r.batch_size as f64).sum::<f64>() / stored.len().max(1) as f64;
    let frames_per_s = rows as f64 / seconds;
    Ok(PipelineReport {
        frames: rows,
        seconds,
        frames_per_s,
        model_frames_per_s,
        efficiency: frames_per_s / model_frames_per_s,
        latency_ms: Latency::of(stored.iter().map(|r| (r.captured_at_us, r.stored_at_us))),
        latency_split_ms: LatencySplit {
            capture_to_processed: Latency::of(stored.iter().map(|r| (r.captured_at_us, r.processed_at_us))),
            processed_to_stored: Latency::of(stored.iter().map(|r| (r.processed_at_us, r.stored_at_us))),
        },
        batch_mean,
        workers: config.workers,
        delivery: config.delivery.to_string(),
        rate: config.rate,
        broker: if broker.is_some() { "embedded".into() } else { bootstrap },
        usage: StageUsage { producer, broker: broker_usage, detector, sink: sink_usage },
        dead_letters,
        dir: config.work_dir.display().to_string(),
    })
}

/// Refuses a configuration that cannot run (a usage error), before anything starts.
pub fn validate(config: &BenchPipelineConfig) -> Result<(), BenchError> {
    let usage = |m: String| Err(BenchError::Usage(m));
    if config.frames == 0 {
        return usage("--frames must be at least 1".into());
    }
    if !(1..=PARTITIONS as u32).contains(&config.workers) {
        return usage(format!("--workers must be 1..={PARTITIONS} (the bench's partitions)"));
    }
    if config.sources == 0 || config.sources > PARTITIONS as u32 || u64::from(config.sources) > config.frames {
        return usage(format!(
            "--sources must be 1..={PARTITIONS} (one partition each) and at most --frames ({})",
            config.frames
        ));
    }
    if config.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return usage("--rate must be a positive number of frames per second".into());
    }
    if config.bootstrap.is_none() && config.delivery == Delivery::ExactlyOnce {
        return usage(
            "the embedded broker cannot run exactly-once (librdkafka's mock keeps no transactional offsets): \
             use --delivery at-least-once, or --bootstrap HOST:PORT for a Kafka cluster"
                .into(),
        );
    }
    Ok(())
}

/// The children's settings, as `VIGIL__…` variables, and the Kafka settings they name.
fn child_env(
    settings: &Settings,
    config: &BenchPipelineConfig,
    id: &str,
    bootstrap: &str,
    database_url: &str,
) -> (Vec<(String, String)>, crate::kafka::KafkaConfig) {
    let mut kafka = settings.kafka.clone();
    kafka.bootstrap_servers = bootstrap.to_string();
    kafka.topics.images.name = format!("bench-{id}-images");
    kafka.topics.images.partitions = PARTITIONS;
    kafka.topics.detections.name = format!("bench-{id}-detections");
    kafka.topics.detections.partitions = PARTITIONS;
    kafka.topics.dlq.name = format!("bench-{id}-images.dlq");
    kafka.topics.dlq.partitions = 1;
    let d = &settings.detector;
    let mut vars: Vec<(String, String)> = [
        ("kafka.bootstrap_servers", bootstrap.to_string()),
        ("kafka.topics.images.name", kafka.topics.images.name.clone()),
        ("kafka.topics.images.partitions", PARTITIONS.to_string()),
        ("kafka.topics.detections.name", kafka.topics.detections.name.clone()),
        ("kafka.topics.detections.partitions", PARTITIONS.to_string()),
        ("kafka.topics.dlq.name", kafka.topics.dlq.name.clone()),
        ("kafka.topics.dlq.partitions", "1".to_string()),
        ("detector.group_id", format!("bench-{id}-detector")),
        ("detector.delivery", config.delivery.to_string()),
        ("detector.backend", d.backend.to_string()),
        ("detector.max_batch", d.max_batch.to_string()),
        ("detector.max_wait_ms", d.max_wait_ms.to_string()),
        ("sink.group_id", format!("bench-{id}-sink")),
        ("sink.database_url", database_url.to_string()),
        ("sink.max_batch", settings.sink.max_batch.to_string()),
        ("sink.max_wait_ms", settings.sink.max_wait_ms.to_string()),
        ("model.dir", settings.model.dir.display().to_string()),
        ("model.precision", settings.model.precision.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (env_key(k), v))
    .collect();
    if config.bootstrap.is_none() {
        vars.push((env_key("kafka.fetch_wait_max_ms"), crate::up::EMBEDDED_FETCH_WAIT_MS.to_string()));
    }
    if std::env::var_os("RUST_LOG").is_none() {
        vars.push(("RUST_LOG".into(), "info,librdkafka=warn,rdkafka=warn".into()));
    }
    (vars, kafka)
}

/// One producer per source, each sending its share of the frames at its share of the rate,
/// cycling through the JPEG and PNG files of `config.images` (what `vigil bench model`
/// times, so the model's speed is measured on the same images).
fn spawn_producers(fleet: &mut Fleet, config: &BenchPipelineConfig) -> Result<Vec<ProcId>, BenchError> {
    let images = image_files(&config.images)?;
    let sources = u64::from(config.sources);
    (0..sources)
        .map(|i| {
            let count = config.frames / sources + u64::from(i < config.frames % sources);
            let fps = config.rate.map_or(0.0, |r| r / sources as f64);
            let (source, count, fps) = (source_for_partition(i as i32), count.to_string(), fps.to_string());
            let mut args = vec!["produce", "--loop", "--count", &count, "--fps", &fps, "--source", &source];
            args.extend(images.iter().map(String::as_str));
            let id = fleet.spawn(&format!("producer-{i}"), &args, &[])?;
            // Staggered by one inter-arrival time, so that together they send evenly
            // spaced frames at the rate rather than a burst from every source at once.
            if let Some(rate) = config.rate {
                std::thread::sleep(Duration::from_secs_f64(1.0 / rate));
            }
            Ok(id)
        })
        .collect()
}

/// A source id whose frames go to `partition` of the bench's `images`.
fn source_for_partition(partition: i32) -> String {
    (0..)
        .map(|n| format!("bench-p{partition}-{n}"))
        .find(|source| crate::producer::partition_for(source.as_bytes(), PARTITIONS) == partition)
        .expect("murmur2 reaches every partition")
}

/// The `.jpg`, `.jpeg` and `.png` files of `dir`, sorted.
fn image_files(dir: &Path) -> Result<Vec<String>, BenchError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_string_lossy().to_lowercase().as_str()))
        })
        .filter_map(|p| p.to_str().map(str::to_owned))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(BenchError::Usage(format!("no .jpg/.jpeg/.png images in --images {}", dir.display())));
    }
    Ok(files)
}

/// One stored row's times.
struct StoredRow {
    captured_at_us: i64,
    processed_at_us: i64,
    stored_at_us: i64,
    batch_size: i64,
}

/// Rows and dead letters in the sink's database now (0 while it does not exist yet).
fn outcomes(database: &Path) -> (u64, u64) {
    let count = |table: &str| -> Option<u64> {
        let conn = open_read_only(database)?;
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get::<_, i64>(0)).ok().map(|n| n as u64)
    };
    (count("detections").unwrap_or(0), count("dead_letters").unwrap_or(0))
}

fn stored_rows(database: &Path) -> Result<Vec<StoredRow>, BenchError> {
    let failed = |e: rusqlite::Error| BenchError::Failed(format!("reading {}: {e}", database.display()));
    let conn =
        open_read_only(database).ok_or_else(|| BenchError::Failed(format!("cannot open {}", database.display())))?;
    let mut stmt = conn
        .prepare("SELECT captured_at_us, processed_at_us, stored_at_us, batch_size FROM detections")
        .map_err(failed)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(StoredRow {
                captured_at_us: r.get(0)?,
                processed_at_us: r.get(1)?,
                stored_at_us: r.get(2)?,
                batch_size: r.get(3)?,
            })
        })
        .map_err(failed)?;
    rows.collect::<Result<_, _>>().map_err(failed)
}

fn open_read_only(database: &Path) -> Option<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(conn)
}

fn failed_or_interrupted(stop: &CancellationToken, why: String) -> BenchError {
    if stop.is_cancelled() {
        BenchError::Interrupted
    } else {
        BenchError::Failed(why)
    }
}

fn io(what: impl AsRef<Path>, cause: std::io::Error) -> BenchError {
    BenchError::Io { what: what.as_ref().display().to_string(), cause }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_lands_in_its_own_partition() {
        let partitions: Vec<i32> = (0..PARTITIONS)
            .map(|p| crate::producer::partition_for(source_for_partition(p).as_bytes(), PARTITIONS))
            .collect();
        assert_eq!(partitions, (0..PARTITIONS).collect::<Vec<_>>());
    }
}
