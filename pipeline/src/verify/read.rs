//! Reading topics to their end (read_committed), and the topic and database side of the
//! audit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::report::{audit, dead_letter, image_record, result_outcome, Evidence, VerifyReport};
use super::{VerifyError, VerifyOptions};
use crate::kafka::{metadata_client, reader_config, watermarks, KafkaConfig, KafkaPlumbingError};
use crate::settings::Settings;
use crate::sink::store;

/// What reading a topic to its end found besides the records.
#[derive(Debug, Clone, Default)]
pub(super) struct TopicRead {
    /// Records read.
    pub records: u64,
    /// Low watermarks (log start offsets) seen at the start, of partitions that lost
    /// their head (low > 0).
    pub log_start: HashMap<i32, i64>,
    /// Partitions whose last stable offset stayed below the high watermark seen at the
    /// start until the timeout: a transaction left open holds read_committed readers there.
    pub open_partitions: Vec<i32>,
}

/// Reads every partition of `topic` from the beginning to the high watermark seen at the
/// start (read_committed), calling `f` per record; returns the record count (blocking).
/// An open transaction that does not end within `timeout` is an error here (tests).
#[cfg(test)]
pub(crate) fn read_topic_to_end(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    stop: &CancellationToken,
    f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, VerifyError> {
    let read = read_topic(kafka, topic, timeout, stop, f)?;
    match read.open_partitions.is_empty() {
        true => Ok(read.records),
        false => Err(VerifyError::Read {
            topic: topic.to_string(),
            reason: format!(
                "partitions {:?} not at the end after {timeout:?}: an open transaction holds read_committed readers back",
                read.open_partitions
            ),
        }),
    }
}

/// Reads every partition of `topic` from the beginning to the high watermark seen at the
/// start (read_committed), calling `f` per record (blocking). A partition whose reader sits
/// at the end of what read_committed may see (its last stable offset: the position at
/// end-of-partition) but below that high watermark waits for the transaction to end until
/// `timeout`, then is reported in [`TopicRead::open_partitions`]; a partition that is not
/// even there by then is an error.
pub(super) fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    stop: &CancellationToken,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<TopicRead, VerifyError> {
    let read_err = |reason: String| VerifyError::Read { topic: topic.to_string(), reason };
    let meta = metadata_client(kafka)?;
    let marks = watermarks(&meta, kafka, topic)?;
    if marks.is_empty() {
        return Err(read_err("the topic does not exist".into()));
    }
    let mut read = TopicRead {
        log_start: marks.iter().filter(|(_, lo, _)| *lo > 0).map(|(p, lo, _)| (*p, *lo)).collect(),
        ..TopicRead::default()
    };
    let mut pending: HashMap<i32, i64> =
        marks.iter().filter(|(_, lo, hi)| hi > lo).map(|(p, _, hi)| (*p, *hi)).collect();
    if pending.is_empty() {
        return Ok(read);
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
    let position = |p: i32| -> i64 {
        consumer
            .position()
            .ok()
            .and_then(|l| l.find_partition(topic, p).and_then(|e| e.offset().to_raw()))
            .unwrap_or(-1)
    };
    // Partitions at their last stable offset, below the starting high watermark.
    let mut held: HashMap<i32, i64> = HashMap::new();
    let deadline = Instant::now() + timeout;
    while !pending.is_empty() {
        if stop.is_cancelled() {
            return Err(VerifyError::Interrupted);
        }
        if Instant::now() >= deadline {
            if pending.keys().all(|p| held.contains_key(p)) {
                read.open_partitions = pending.into_keys().collect();
                read.open_partitions.sort_unstable();
                warn!(%topic, partitions = ?read.open_partitions, "a transaction is still open (last stable offset below the high watermark)");
                return Ok(read);
            }
            let stuck: Vec<String> =
                pending.iter().map(|(p, hi)| format!("partition {p} at {} of {hi}", position(*p))).collect();
            return Err(read_err(format!("not at the end after {timeout:?} ({})", stuck.join(", "))));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                read.records += 1;
                f(&message);
                held.remove(&message.partition());
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
                    let at = position(p);
                    if at >= hi {
                        pending.remove(&p);
                    } else if at >= 0 {
                        held.insert(p, at);
                    }
                }
            }
            Some(Err(e)) => warn!(%topic, error = %e, "consume error while auditing (retrying)"),
        }
    }
    Ok(read)
}

/// Reads the three topics and the sink database, then audits them (blocking).
pub(super) fn verify_blocking(
    settings: &Settings,
    options: &VerifyOptions,
    stop: &CancellationToken,
) -> Result<VerifyReport, VerifyError> {
    let kafka = &settings.kafka;
    let topics = &kafka.topics;
    let timeout = options.timeout;
    let url = settings.sink.database_url.clone();
    let db_err = |reason: String| VerifyError::Database { url: url.clone(), reason };
    if let Ok(store::StoreUrl::Sqlite(path)) = store::parse_url(&url) {
        if path != ":memory:" && !std::path::Path::new(&path).exists() {
            return Err(db_err(format!("no database file at {path}")));
        }
    }

    let mut evidence = Evidence::default();
    let images = read_topic(kafka, &topics.images.name, timeout, stop, |m| evidence.images.push(image_record(m)))?;
    info!(records = images.records, topic = %topics.images.name, "read");
    evidence.log_start = images.log_start;

    let mut undecodable_results = 0u64;
    let detections = read_topic(kafka, &topics.detections.name, timeout, stop, |m| match result_outcome(m) {
        Some(outcome) => evidence.results.push(outcome),
        None => undecodable_results += 1,
    })?;
    if undecodable_results > 0 {
        warn!(undecodable_results, topic = %topics.detections.name, "records that are not DetectionResults");
    }
    info!(records = detections.records, topic = %topics.detections.name, "read");

    let dlq = read_topic(kafka, &topics.dlq.name, timeout, stop, |m| evidence.dead_letters.push(dead_letter(m)))?;
    info!(records = dlq.records, topic = %topics.dlq.name, "read");
    evidence.open_transactions = (detections.open_partitions.len() + dlq.open_partitions.len()) as u64;

    let mut db = store::open(&url).map_err(|e| db_err(e.to_string()))?;
    let stats = db.stats().map_err(|e| db_err(e.to_string()))?;
    evidence.rows = db.frame_ids().map_err(|e| db_err(e.to_string()))?;

    let mut report = audit(&evidence, options.topics_exact);
    report.sink_rejects = stats.rejects;
    report.topics.detections_records = detections.records;
    report.topics.dlq_records = dlq.records;
    if !report.dead_letters_by_kind.is_empty() {
        info!(dlq = report.dlq, by_kind = ?report.dead_letters_by_kind, "dead letters by kind");
    }
    Ok(report)
}
