//! `vigil verify`: audits a run end to end with set computations on frame ids.
//!
//! - frames: distinct frames in `images` (a frame's identity is its `frame_id`, or
//!   `images/<partition>/<offset>` for a record that is not a decodable `Frame`);
//! - results: distinct `frame_id`s in `detections` (read_committed);
//! - rows: rows in the sink database's `detections` table;
//! - dlq: distinct frames in `images.dlq` (identified by the original record's
//!   `frame_id`, else by its `vigil.source.partition`/`vigil.source.offset` headers);
//! - duplicates: frames with more than one final outcome (a second database row, or
//!   both a row and a dead letter);
//! - missing: frames with no outcome (neither a row nor a dead letter);
//! - unexpected: outcomes for frames that are not in `images` (e.g. a database reused
//!   from another run).
//!
//! The run is exact when `rows + dlq == frames`, `duplicates == 0`, `missing == 0` and
//! `unexpected == 0`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::codec::{dlq, DetectionResult, Frame};
use crate::kafka::{metadata_client, reader_config, watermarks, KafkaConfig, KafkaPlumbingError};
use crate::settings::Settings;
use crate::sink::store;

/// Why the audit could not be carried out (a mismatch is not an error: see
/// [`VerifyReport::exact`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Kafka(#[from] KafkaPlumbingError),
    #[error("reading {topic}: {reason}")]
    Read { topic: String, reason: String },
    #[error("database {url}: {reason}")]
    Database { url: String, reason: String },
    #[error("the audit was interrupted")]
    Interrupted,
}

/// `vigil verify` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Audit a run: every frame has exactly one outcome (a database row or a dead letter)",
    long_about = "Audit a run end to end. Reads images, detections and images.dlq to their end (read_committed) \
        and the sink database, then compares frame ids as sets and prints one JSON object on stdout:\n\n  \
        {\"frames\", \"results\", \"rows\", \"dlq\", \"duplicates\", \"missing\", ...}\n\n\
        frames: distinct frames in images; results: distinct frame ids in detections; rows: database rows; \
        dlq: distinct frames dead-lettered; duplicates: frames with more than one outcome (two rows, or a row \
        and a dead letter); missing: frames with neither; unexpected: outcomes for frames not in images (a \
        database left from another run?). Also reported: raw record counts and topic-level redeliveries \
        (expected in at-least-once mode and on the in-memory broker, which does not hide aborted \
        transactions; the database is the exactly-once output).\n\n\
        Exit status: 0 when rows + dlq == frames and duplicates, missing and unexpected are 0; 1 otherwise \
        (or when the audit could not run). Run it after the pipeline has drained (no frames in flight).",
    after_help = "Examples:\n  \
        vigil verify --database sqlite://vigil.sqlite\n  \
        vigil --bootstrap 127.0.0.1:9092 verify --database postgres://vigil@127.0.0.1:5432/vigil | jq .\n  \
        vigil verify --timeout-ms 60000          # wait longer for open transactions to end"
)]
pub struct VerifyArgs {
    /// Sink database URL, sqlite://PATH or postgres://… [config: sink.database_url].
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Longest time to read each topic to its end, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub timeout_ms: u64,
}

impl VerifyArgs {
    /// Config keys these flags set.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        self.database
            .iter()
            .map(|url| ("sink.database_url", url.clone()))
            .collect()
    }
}

/// Raw record counts and redeliveries, for diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopicCounts {
    /// Records read from `images`.
    pub images_records: u64,
    /// Records read from `detections`.
    pub detections_records: u64,
    /// Records read from `images.dlq`.
    pub dlq_records: u64,
    /// `detections` records beyond one per frame (redeliveries / aborted transactions seen).
    pub detections_redelivered: u64,
    /// `images.dlq` records beyond one per frame.
    pub dlq_redelivered: u64,
}

/// The audit's result (printed as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub frames: u64,
    pub results: u64,
    pub rows: u64,
    pub dlq: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub unexpected: u64,
    /// Results the sink could not decode and set aside (`sink_rejects`).
    pub sink_rejects: u64,
    pub topics: TopicCounts,
    /// Up to 10 missing frame ids, for diagnosis.
    pub missing_sample: Vec<String>,
    /// Up to 10 duplicated frame ids.
    pub duplicate_sample: Vec<String>,
    /// Whether the run is exact.
    pub exact: bool,
}

/// The set computation, separated from I/O so it can be tested.
pub fn audit(
    frames: &HashSet<String>,
    result_ids: &HashSet<String>,
    row_ids: &[String],
    dlq_ids: &HashSet<String>,
) -> VerifyReport {
    let mut row_counts: HashMap<&str, u64> = HashMap::new();
    for id in row_ids {
        *row_counts.entry(id.as_str()).or_default() += 1;
    }
    let mut duplicate_ids: Vec<String> = row_counts
        .iter()
        .filter(|(id, n)| **n > 1 || dlq_ids.contains(**id))
        .map(|(id, _)| id.to_string())
        .collect();
    duplicate_ids.sort();
    let duplicates: u64 = row_counts
        .iter()
        .map(|(id, n)| (n - 1) + u64::from(dlq_ids.contains(*id)))
        .sum();
    let mut missing_ids: Vec<String> = frames
        .iter()
        .filter(|id| !row_counts.contains_key(id.as_str()) && !dlq_ids.contains(*id))
        .cloned()
        .collect();
    missing_ids.sort();
    let unexpected = row_counts
        .keys()
        .filter(|id| !frames.contains(**id))
        .count()
        + dlq_ids.iter().filter(|id| !frames.contains(*id)).count();
    let mut report = VerifyReport {
        frames: frames.len() as u64,
        results: result_ids.len() as u64,
        rows: row_ids.len() as u64,
        dlq: dlq_ids.len() as u64,
        duplicates,
        missing: missing_ids.len() as u64,
        unexpected: unexpected as u64,
        missing_sample: missing_ids.into_iter().take(10).collect(),
        duplicate_sample: duplicate_ids.into_iter().take(10).collect(),
        ..Default::default()
    };
    report.exact = report.rows + report.dlq == report.frames
        && report.duplicates == 0
        && report.missing == 0
        && report.unexpected == 0;
    report
}

fn frame_identity(message: &BorrowedMessage<'_>) -> String {
    match message.payload().map(Frame::decode) {
        Some(Ok(frame)) => frame.frame_id,
        _ => format!("images/{}/{}", message.partition(), message.offset()),
    }
}

fn dlq_identity(message: &BorrowedMessage<'_>) -> String {
    if let Some(Ok(frame)) = message.payload().map(Frame::decode) {
        return frame.frame_id;
    }
    let header = |name: &str| -> Option<String> {
        message
            .headers()?
            .iter()
            .filter(|h| h.key == name)
            .last()
            .and_then(|h| {
                h.value
                    .and_then(|v| std::str::from_utf8(v).ok().map(str::to_string))
            })
    };
    match (
        header(dlq::HEADER_SOURCE_PARTITION),
        header(dlq::HEADER_SOURCE_OFFSET),
    ) {
        (Some(p), Some(o)) => format!("images/{p}/{o}"),
        _ => format!("dlq/{}/{}", message.partition(), message.offset()),
    }
}

/// Reads every partition of `topic` from the beginning to the high watermark seen at the
/// start (read_committed), calling `f` per record; returns the record count (blocking).
pub fn read_topic_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    stop: &CancellationToken,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, VerifyError> {
    let read_err = |reason: String| VerifyError::Read {
        topic: topic.to_string(),
        reason,
    };
    let meta = metadata_client(kafka)?;
    let marks = watermarks(&meta, kafka, topic)?;
    if marks.is_empty() {
        return Err(read_err("the topic does not exist".into()));
    }
    let mut pending: HashMap<i32, i64> = marks
        .iter()
        .filter(|(_, lo, hi)| hi > lo)
        .map(|(p, _, hi)| (*p, *hi))
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let mut config = reader_config(kafka, "verify");
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|cause| KafkaPlumbingError::Client {
            role: "verify",
            cause,
        })?;
    let mut assignment = TopicPartitionList::new();
    for p in pending.keys() {
        assignment
            .add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| read_err(e.to_string()))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| read_err(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let mut count = 0u64;
    while !pending.is_empty() {
        if stop.is_cancelled() {
            return Err(VerifyError::Interrupted);
        }
        if Instant::now() >= deadline {
            let positions = consumer.position().ok();
            let stuck: Vec<String> = pending
                .iter()
                .map(|(p, hi)| {
                    let at = positions
                        .as_ref()
                        .and_then(|l| l.find_partition(topic, *p))
                        .and_then(|e| e.offset().to_raw())
                        .unwrap_or(-1);
                    format!("partition {p} at {at} of {hi}")
                })
                .collect();
            return Err(read_err(format!(
                "not at the end after {timeout:?} ({}); an open transaction (a killed detector's, until \
                 transaction.timeout.ms) holds read_committed readers back",
                stuck.join(", ")
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                count += 1;
                f(&message);
                if let Some(hi) = pending.get(&message.partition()) {
                    if message.offset() + 1 >= *hi {
                        pending.remove(&message.partition());
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                // End of what read_committed may see; done if that is the starting high
                // watermark (transaction markers take offsets but are never delivered).
                if let Some(hi) = pending.get(&p).copied() {
                    let at = consumer
                        .position()
                        .ok()
                        .and_then(|l| l.find_partition(topic, p).and_then(|e| e.offset().to_raw()))
                        .unwrap_or(-1);
                    if at >= hi {
                        pending.remove(&p);
                    }
                }
            }
            Some(Err(e)) => warn!(%topic, error = %e, "consume error while auditing (retrying)"),
        }
    }
    Ok(count)
}

/// Runs the audit (blocking I/O off the runtime). `Ok` even when the run is not exact.
pub async fn verify(
    settings: &Settings,
    timeout: Duration,
    stop: CancellationToken,
) -> Result<VerifyReport, VerifyError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || verify_blocking(&settings, timeout, &stop))
        .await
        .map_err(|e| VerifyError::Read {
            topic: "*".into(),
            reason: format!("audit task failed: {e}"),
        })?
}

fn verify_blocking(
    settings: &Settings,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<VerifyReport, VerifyError> {
    let kafka = &settings.kafka;
    let topics = &kafka.topics;
    let url = settings.sink.database_url.clone();
    let db_err = |reason: String| VerifyError::Database {
        url: url.clone(),
        reason,
    };
    if let Ok(store::StoreUrl::Sqlite(path)) = store::parse_url(&url) {
        if path != ":memory:" && !std::path::Path::new(&path).exists() {
            return Err(db_err(format!("no database file at {path}")));
        }
    }

    let mut frames = HashSet::new();
    let images_records = read_topic_to_end(kafka, &topics.images.name, timeout, stop, |m| {
        frames.insert(frame_identity(m));
    })?;
    info!(records = images_records, frames = frames.len(), topic = %topics.images.name, "read");

    let mut results = HashSet::new();
    let mut undecodable_results = 0u64;
    let detections_records =
        read_topic_to_end(kafka, &topics.detections.name, timeout, stop, |m| {
            match m.payload().map(DetectionResult::decode) {
                Some(Ok(r)) => {
                    results.insert(r.frame_id);
                }
                _ => undecodable_results += 1,
            }
        })?;
    if undecodable_results > 0 {
        warn!(undecodable_results, topic = %topics.detections.name, "records that are not DetectionResults");
    }
    info!(records = detections_records, results = results.len(), topic = %topics.detections.name, "read");

    let mut dead = HashSet::new();
    let dlq_records = read_topic_to_end(kafka, &topics.dlq.name, timeout, stop, |m| {
        dead.insert(dlq_identity(m));
    })?;
    info!(records = dlq_records, frames = dead.len(), topic = %topics.dlq.name, "read");

    let mut db = store::open(&url).map_err(|e| db_err(e.to_string()))?;
    let stats = db.stats().map_err(|e| db_err(e.to_string()))?;
    let row_ids = db.frame_ids().map_err(|e| db_err(e.to_string()))?;

    let mut report = audit(&frames, &results, &row_ids, &dead);
    report.sink_rejects = stats.rejects;
    report.topics = TopicCounts {
        images_records,
        detections_records,
        dlq_records,
        detections_redelivered: (detections_records - undecodable_results)
            .saturating_sub(results.len() as u64),
        dlq_redelivered: dlq_records.saturating_sub(dead.len() as u64),
    };
    Ok(report)
}

/// Runs `vigil verify`: prints the JSON report on stdout; returns it (check `exact`).
pub async fn run(
    settings: &Settings,
    args: VerifyArgs,
    shutdown: CancellationToken,
) -> Result<VerifyReport, VerifyError> {
    let report = verify(settings, Duration::from_millis(args.timeout_ms), shutdown).await?;
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            return Err(VerifyError::Read {
                topic: "*".into(),
                reason: format!("cannot render the report: {e}"),
            })
        }
    }
    if !report.exact {
        warn!(
            frames = report.frames,
            rows = report.rows,
            dlq = report.dlq,
            duplicates = report.duplicates,
            missing = report.missing,
            unexpected = report.unexpected,
            "the run is NOT exact"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn rows(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_run() {
        let r = audit(
            &set(&["a", "b", "c"]),
            &set(&["a", "b"]),
            &rows(&["a", "b"]),
            &set(&["c"]),
        );
        assert_eq!(
            (
                r.frames,
                r.rows,
                r.dlq,
                r.duplicates,
                r.missing,
                r.unexpected
            ),
            (3, 2, 1, 0, 0, 0)
        );
        assert!(r.exact);
    }

    #[test]
    fn missing_duplicated_and_unexpected_are_sets() {
        // b is lost; a has a row and a dead letter; z is not a frame of this run.
        let r = audit(
            &set(&["a", "b", "c"]),
            &set(&["a"]),
            &rows(&["a", "z"]),
            &set(&["a", "c"]),
        );
        assert_eq!(r.missing, 1);
        assert_eq!(r.missing_sample, ["b"]);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.duplicate_sample, ["a"]);
        assert_eq!(r.unexpected, 1);
        assert!(!r.exact);
        // rows + dlq == frames by count, but not by identity: still not exact.
        let r = audit(&set(&["a", "b"]), &set(&[]), &rows(&["a", "x"]), &set(&[]));
        assert_eq!(r.rows + r.dlq, r.frames);
        assert!(!r.exact);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let json = serde_json::to_value(VerifyReport::default()).unwrap();
        for key in ["frames", "results", "rows", "dlq", "duplicates", "missing"] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    /// In process: the in-memory broker, real topics, a real SQLite database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audits_topics_and_database() {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};

        use crate::kafka::DevBroker;
        use crate::producer::{produce_frames, synthetic_frame, ProduceOptions};
        use crate::sink::store::{Batch, DetectionRow, PartitionOffset};

        let broker = DevBroker::start(1).unwrap();
        let mut settings = Settings::default();
        settings.kafka.bootstrap_servers = broker.bootstrap_servers().to_string();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        settings.kafka.topics.images.name = format!("images-{suffix}");
        settings.kafka.topics.detections.name = format!("detections-{suffix}");
        settings.kafka.topics.dlq.name = format!("dlq-{suffix}");
        for t in settings.kafka.topics.all() {
            broker
                .create_topic(&crate::kafka::TopicConfig {
                    partitions: 2,
                    ..t.clone()
                })
                .unwrap();
        }
        let db_path = std::env::temp_dir().join(format!("vigil-verify-{suffix}.sqlite"));
        settings.sink.database_url = format!("sqlite://{}", db_path.display());

        let inputs = (0..5).map(|i| Ok(synthetic_frame("cam-v", i)));
        let options = ProduceOptions {
            record_frame_ids: true,
            ..Default::default()
        };
        let summary = produce_frames(&settings, inputs, options, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(summary.delivered, 5);
        let ids = summary.frame_ids.clone();

        // Results for the first four frames (the second one twice: a redelivery), and a
        // dead letter for the fifth.
        let producer: FutureProducer = crate::kafka::client_config(&settings.kafka)
            .create()
            .unwrap();
        let result = |i: usize| DetectionResult {
            frame_id: ids[i].clone(),
            source: "cam-v".into(),
            seq: i as i64,
            captured_at_us: 1,
            width: 320,
            height: 240,
            model_name: "m".into(),
            model_version: "v".into(),
            detections: vec![],
            processed_at_us: 2,
            batch_size: 1,
            inference_ms: 1.0,
            source_partition: 0,
            source_offset: i as i64,
        };
        for i in [0, 1, 1, 2, 3] {
            let bytes = result(i).encode().unwrap();
            producer
                .send(
                    FutureRecord::to(&settings.kafka.topics.detections.name)
                        .key("cam-v")
                        .payload(&bytes),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
        }
        let fifth = crate::codec::Frame {
            frame_id: ids[4].clone(),
            source: "cam-v".into(),
            seq: 4,
            captured_at_us: 0,
            encoding: Default::default(),
            width: None,
            height: None,
            data: b"not an image".to_vec(),
            attributes: Default::default(),
        };
        let headers = dlq::error_headers("bad_image", "test", 0, 4).iter().fold(
            OwnedHeaders::new(),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                })
            },
        );
        producer
            .send(
                FutureRecord::to(&settings.kafka.topics.dlq.name)
                    .key("cam-v")
                    .payload(&fifth.encode().unwrap())
                    .headers(headers),
                Duration::from_secs(5),
            )
            .await
            .unwrap();

        let row = |i: usize| DetectionRow {
            frame_id: ids[i].clone(),
            source: "cam-v".into(),
            seq: i as i64,
            captured_at_us: 1,
            width: 320,
            height: 240,
            model_name: "m".into(),
            model_version: "v".into(),
            detection_count: 0,
            detections_json: "[]".into(),
            processed_at_us: 2,
            batch_size: 1,
            inference_us: 1000,
            source_partition: 0,
            source_offset: i as i64,
            result_partition: 0,
            result_offset: i as i64,
        };
        let write = |rows: Vec<DetectionRow>, next: i64| {
            let mut db = store::open(&settings.sink.database_url).unwrap();
            db.write_batch(&Batch {
                group_id: "g".into(),
                topic: settings.kafka.topics.detections.name.clone(),
                rows,
                rejects: vec![],
                offsets: vec![PartitionOffset {
                    partition: 0,
                    next_offset: next,
                }],
            })
            .unwrap();
        };
        write(vec![row(0), row(1), row(2)], 3);

        let report = verify(&settings, Duration::from_secs(10), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            (report.frames, report.results, report.rows, report.dlq),
            (5, 4, 3, 1),
            "{report:?}"
        );
        assert_eq!(
            (report.missing, report.duplicates, report.unexpected),
            (1, 0, 0),
            "{report:?}"
        );
        assert_eq!(report.missing_sample, [ids[3].clone()]);
        assert_eq!(report.topics.detections_redelivered, 1);
        assert!(!report.exact);

        write(vec![row(3)], 4);
        let report = verify(&settings, Duration::from_secs(10), CancellationToken::new())
            .await
            .unwrap();
        assert!(report.exact, "{report:?}");

        // The fifth frame both dead-lettered and stored: a duplicate outcome.
        write(vec![row(4)], 5);
        let report = verify(&settings, Duration::from_secs(10), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.duplicates, 1, "{report:?}");
        assert!(!report.exact);
        let _ = std::fs::remove_file(&db_path);
    }
}
