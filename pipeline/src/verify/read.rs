//! Reading topics to their end (read_committed), and the topic and database side of the
//! audit.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::report::{audit, dlq_identity, frame_identity, TopicCounts, VerifyReport};
use super::VerifyError;
use crate::codec::DetectionResult;
use crate::kafka::{metadata_client, reader_config, watermarks, KafkaConfig, KafkaPlumbingError};
use crate::settings::Settings;
use crate::sink::store;

/// Reads every partition of `topic` from the beginning to the high watermark seen at the
/// start (read_committed), calling `f` per record; returns the record count (blocking).
pub(crate) fn read_topic_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    stop: &CancellationToken,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, VerifyError> {
    let read_err = |reason: String| VerifyError::Read { topic: topic.to_string(), reason };
    let meta = metadata_client(kafka)?;
    let marks = watermarks(&meta, kafka, topic)?;
    if marks.is_empty() {
        return Err(read_err("the topic does not exist".into()));
    }
    let mut pending: HashMap<i32, i64> =
        marks.iter().filter(|(_, lo, hi)| hi > lo).map(|(p, _, hi)| (*p, *hi)).collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let mut config = reader_config(kafka, "verify");
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer =
        config.create().map_err(|cause| KafkaPlumbingError::Client { role: "verify", cause })?;
    let mut assignment = TopicPartitionList::new();
    for p in pending.keys() {
        assignment.add_partition_offset(topic, *p, Offset::Beginning).map_err(|e| read_err(e.to_string()))?;
    }
    consumer.assign(&assignment).map_err(|e| read_err(e.to_string()))?;
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

/// Reads the three topics and the sink database, then audits them (blocking).
pub(super) fn verify_blocking(
    settings: &Settings,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<VerifyReport, VerifyError> {
    let kafka = &settings.kafka;
    let topics = &kafka.topics;
    let url = settings.sink.database_url.clone();
    let db_err = |reason: String| VerifyError::Database { url: url.clone(), reason };
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
    let detections_records = read_topic_to_end(kafka, &topics.detections.name, timeout, stop, |m| {
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
        detections_redelivered: (detections_records - undecodable_results).saturating_sub(results.len() as u64),
        dlq_redelivered: dlq_records.saturating_sub(dead.len() as u64),
    };
    Ok(report)
}
