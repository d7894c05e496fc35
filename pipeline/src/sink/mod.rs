//! The sink stage: `detections` (read_committed) into a database, rows and offsets in
//! one database transaction; and, by a second loop of its own consumer group
//! (`sink.group_id` + `.dead-letters`), the dead-letter topic into `dead_letters`, so that
//! the API can say what became of a frame that has no result.
//!
//! Exactly-once into the database, whatever the broker does:
//! - every batch is ONE database transaction: rows (`ON CONFLICT (frame_id) DO
//!   NOTHING`), undecodable records and rows the database refuses (`sink_rejects`,
//!   `write::store`) and
//!   `consumer_offsets(group, topic, partition) → next_offset`;
//! - on assignment the consumer starts at the stored offsets (`consumer::SinkContext`),
//!   so a sink killed at any point re-reads at most its uncommitted batch;
//! - a result delivered twice (an at-least-once detector, or an aborted transaction
//!   that a broker without read_committed filtering — the mock — still delivers) is
//!   the same `frame_id` and is skipped, so the table never holds a frame twice.
//!
//! Kafka offset commits happen only after the database commit, asynchronously, for lag
//! monitoring; the sink never reads them.
//!
//! Database I/O runs on a dedicated thread (`db::DbWorker`); the async loop is a
//! `select!` over the consumer, the batch deadline and the shutdown token.

mod config;
mod consumer;
mod db;
mod error;
mod failpoint;
pub(crate) mod store;
mod write;

#[cfg(test)]
mod loop_tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::SinkConfig;
pub use error::{SinkError, StoreError};

use self::consumer::SinkContext;
use self::db::DbWorker;
use self::store::{Batch, DeadLetterRow, DetectionRow, PartitionOffset, RejectRow};
use self::write::Outgoing;
use crate::codec::{dlq, DetectedObject, DetectionResult, Frame};
use crate::health::{Health, BEAT_EVERY};
use crate::kafka::{classify, consumer_config, ensure_topics, ErrorClass, NextOffsets};
use crate::metrics::{self, metrics};
use crate::settings::Settings;
use crate::telemetry::{extract_context, spans};

/// What a sink run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Database transactions committed.
    pub batches: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Results skipped because their frame was already stored.
    pub duplicates: u64,
    /// Records stored in `sink_rejects`: undecodable, or refused by the database.
    pub rejected: u64,
    /// Dead letters stored in `dead_letters`.
    pub dead_letters: u64,
}

/// Runs the sink until `shutdown`, then stores what it has read and leaves the group.
/// `observer`, when given, receives every newly stored result (for `vigil up`'s live
/// view); it is fed with `try_send`, so a slow observer never slows the sink.
pub async fn run(
    settings: &Settings,
    observer: Option<mpsc::Sender<DetectionResult>>,
    shutdown: CancellationToken,
) -> Result<SinkSummary, SinkError> {
    run_with_health(settings, observer, shutdown, Health::new()).await
}

/// [`run`], keeping `health` up to date for whoever serves it: ready once the database
/// is migrated and the consumer subscribed, not ready while the database is unavailable.
pub async fn run_with_health(
    settings: &Settings,
    observer: Option<mpsc::Sender<DetectionResult>>,
    shutdown: CancellationToken,
    health: Health,
) -> Result<SinkSummary, SinkError> {
    health.set_not_ready("opening the database");
    let cfg = &settings.sink;
    let topic = settings.kafka.topics.detections.name.clone();
    let db = Arc::new(DbWorker::start(&cfg.database_url).await?);
    info!(database = %redact_url(&cfg.database_url), kind = db.kind(), "database ready (schema migrated)");

    ensure_topics(&settings.kafka, &[&settings.kafka.topics.detections, &settings.kafka.topics.dlq]).await?;
    crate::kafka::use_schema_registry(&settings.kafka, &[]).await?;

    let dlq_topic = settings.kafka.topics.dlq.name.clone();
    let dlq_group = format!("{}{DEAD_LETTER_GROUP_SUFFIX}", cfg.group_id);
    let results = subscribe(settings, &db, &cfg.group_id, &topic, &health)?;
    let dead_letters = subscribe(settings, &db, &dlq_group, &dlq_topic, &health)?;
    health.set_ready();

    // Either loop failing stops the other: the sink is one stage.
    let stop = shutdown.child_token();
    let new_loop = |consumer, group_id: &str, topic: String, reads, observer| SinkLoop {
        db: &db,
        consumer,
        group_id: group_id.to_owned(),
        topic,
        reads,
        pending: Vec::new(),
        observer,
        summary: SinkSummary::default(),
        db_outage_limit: cfg.db_outage_limit(),
        health: health.clone(),
        idle_check: IdleCheck::default(),
    };
    let mut sink = new_loop(&results, &cfg.group_id, topic, Reads::Results, observer);
    let mut dlq_sink = new_loop(&dead_letters, &dlq_group, dlq_topic, Reads::DeadLetters, None);
    let (result, dlq_result) = tokio::join!(sink.run_then_stop(cfg, &stop), dlq_sink.run_then_stop(cfg, &stop));
    health.set_not_ready("stopping");
    let summary = SinkSummary { dead_letters: dlq_sink.summary.dead_letters, ..sink.summary };
    // Leaves the groups (the revoke callbacks run during the close).
    drop(results);
    drop(dead_letters);
    info!(
        batches = summary.batches,
        inserted = summary.inserted,
        duplicates = summary.duplicates,
        rejected = summary.rejected,
        dead_letters = summary.dead_letters,
        "sink stopped"
    );
    result.and(dlq_result).map(|()| summary)
}

/// Appended to `sink.group_id` for the consumer group of the dead-letter loop.
pub const DEAD_LETTER_GROUP_SUFFIX: &str = ".dead-letters";

/// A consumer of `topic` in `group_id` that starts at the offsets stored in the database.
fn subscribe(
    settings: &Settings,
    db: &Arc<DbWorker>,
    group_id: &str,
    topic: &str,
    health: &Health,
) -> Result<StreamConsumer<SinkContext>, SinkError> {
    let context = SinkContext::new(db.clone(), group_id, topic, health.clone());
    let consumer: StreamConsumer<SinkContext> =
        consumer_config(&settings.kafka, group_id, settings.sink.session_timeout_ms)
            .create_with_context(context)
            .map_err(SinkError::Consumer)?;
    consumer.subscribe(&[topic]).map_err(SinkError::Consumer)?;
    info!(%topic, group = %group_id, "sink consuming (read_committed)");
    Ok(consumer)
}

/// What a sink loop reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// `detections`: results become rows.
    Results,
    /// The dead-letter topic: each becomes a `dead_letters` row.
    DeadLetters,
}

/// A record read but not yet stored.
struct Pending {
    partition: i32,
    offset: i64,
    item: Item,
    trace: Context,
}

enum Item {
    /// A decoded result, with the record's bytes for `sink_rejects` should the database
    /// refuse the row.
    Row {
        row: DetectionRow,
        result: Box<DetectionResult>,
        payload: Vec<u8>,
    },
    Reject(RejectRow),
    DeadLetter(DeadLetterRow),
}

struct SinkLoop<'a> {
    db: &'a DbWorker,
    consumer: &'a StreamConsumer<SinkContext>,
    group_id: String,
    topic: String,
    reads: Reads,
    pending: Vec<Pending>,
    observer: Option<mpsc::Sender<DetectionResult>>,
    summary: SinkSummary,
    /// How long a batch waits for an unavailable database before the sink stops.
    db_outage_limit: Duration,
    health: Health,
    /// The database check while idle (see [`SinkLoop::check_idle_database`]).
    idle_check: IdleCheck,
}

/// While no batch writes, the sink still asks the database every [`IDLE_CHECK_EVERY`], so
/// that `/readyz` shows a lost database before the next frame finds it.
struct IdleCheck {
    last: Instant,
    /// This check made the sink not ready (only it makes it ready again).
    failing: bool,
}

impl Default for IdleCheck {
    fn default() -> Self {
        IdleCheck { last: Instant::now(), failing: false }
    }
}

const IDLE_CHECK_EVERY: Duration = Duration::from_secs(5);
const IDLE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

impl SinkLoop<'_> {
    /// [`SinkLoop::run`], then stops the other loop too (by `stop`), whatever the outcome.
    async fn run_then_stop(&mut self, cfg: &SinkConfig, stop: &CancellationToken) -> Result<(), SinkError> {
        let result = self.run(cfg.max_batch, cfg.max_wait(), stop).await;
        stop.cancel();
        result
    }

    async fn run(
        &mut self,
        max_batch: usize,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), SinkError> {
        let mut deadline: Option<tokio::time::Instant> = None;
        // The consumer had nothing more to give after the last record: write now.
        let mut drained = false;
        loop {
            self.health.beat();
            if let Some(reason) = self.consumer.context().failure() {
                return Err(SinkError::AssignOffsets(reason));
            }
            self.drop_revoked();
            self.check_idle_database().await;
            if self.pending.is_empty() {
                // Nothing left to wait for (a revocation may have emptied the batch): a
                // deadline kept past its time would make the loop spin without polling.
                deadline = None;
            }
            let due = drained || deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if self.pending.len() >= max_batch || (due && !self.pending.is_empty()) {
                self.flush(shutdown).await?;
                deadline = None;
                drained = false;
                continue;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {}
                received = self.consumer.recv() => {
                    self.received(received)?;
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_wait);
                    // What the consumer already holds joins the batch; an empty queue
                    // closes it early (`max_wait` bounds the wait while results keep
                    // arriving, it is not a fixed delay).
                    drained = loop {
                        if self.pending.len() >= max_batch {
                            break false;
                        }
                        match self.consumer.recv().now_or_never() {
                            Some(received) => self.received(received)?,
                            None => break true,
                        }
                    };
                }
                // Idle: the loop still turns, for /healthz.
                _ = tokio::time::sleep(BEAT_EVERY) => {}
            }
        }
        // Store what was read: it is ours until the group is left.
        if !self.pending.is_empty() {
            self.flush(shutdown).await?;
        }
        Ok(())
    }

    /// Adds a result read from the consumer to the batch; a fatal consumer error stops the
    /// sink, others are librdkafka's to retry.
    fn received(&mut self, received: KafkaResult<BorrowedMessage<'_>>) -> Result<(), SinkError> {
        match received {
            Ok(message) => {
                // A revocation served in this poll came before this record.
                self.drop_revoked();
                let item = self.read(&message);
                self.pending.push(item);
            }
            Err(e) => match classify(&e) {
                ErrorClass::Fatal => return Err(SinkError::Consumer(e)),
                _ => warn!(error = %e, "consumer error (librdkafka retries)"),
            },
        }
        Ok(())
    }

    /// Asks the database whether it answers, when nothing is waiting to be written and
    /// the last check is [`IDLE_CHECK_EVERY`] old: not ready while it does not.
    async fn check_idle_database(&mut self) {
        if !self.pending.is_empty() || self.idle_check.last.elapsed() < IDLE_CHECK_EVERY {
            return;
        }
        self.idle_check.last = Instant::now();
        let checked = tokio::time::timeout(IDLE_CHECK_TIMEOUT, self.db.check(&self.group_id, &self.topic)).await;
        let failure = match checked {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {} s", IDLE_CHECK_TIMEOUT.as_secs())),
        };
        match failure {
            Some(failure) => {
                if !self.idle_check.failing {
                    warn!(%failure, "database unavailable while idle: not ready");
                }
                self.idle_check.failing = true;
                self.health.set_not_ready(format!("database unavailable: {failure}"));
            }
            None if self.idle_check.failing => {
                info!("database answers again; ready");
                self.idle_check.failing = false;
                self.health.set_ready();
            }
            None => {}
        }
    }

    /// Forgets the records read from partitions revoked since the last call: their next
    /// owner reads them again from the stored offset, and storing them late would write
    /// for a partition this member no longer owns.
    fn drop_revoked(&mut self) {
        let revoked = self.consumer.context().take_revoked();
        if revoked.is_empty() {
            return;
        }
        let before = self.pending.len();
        self.pending.retain(|p| !revoked.contains(&p.partition));
        let dropped = before - self.pending.len();
        if dropped > 0 {
            info!(dropped, partitions = ?revoked, "partitions revoked; their unstored records are left to the next owner");
        }
    }

    /// Turns a record into a row, or a reject when it does not decode.
    fn read(&self, message: &BorrowedMessage<'_>) -> Pending {
        let partition = message.partition();
        let offset = message.offset();
        let parent = extract_context(message.headers());
        let trace = spans::process(
            &parent,
            spans::Consumed { topic: &self.topic, partition, offset, group_id: &self.group_id, key: message.key() },
        );
        // Lines about this record name its trace.
        let _attached = trace.clone().attach();
        let payload = message.payload().unwrap_or_default();
        if self.reads == Reads::DeadLetters {
            let item = match dead_letter_row(message) {
                Ok(row) => Item::DeadLetter(row),
                Err(reason) => {
                    warn!(partition, offset, %reason, "not a dead letter; storing it in sink_rejects");
                    Item::Reject(RejectRow {
                        topic: self.topic.clone(),
                        partition,
                        offset,
                        kind: "not_dead_letter".to_owned(),
                        message: reason,
                        payload: payload.to_vec(),
                    })
                }
            };
            return Pending { partition, offset, item, trace };
        }
        let item = match DetectionResult::decode(payload) {
            Ok(result) => Item::Row {
                row: to_row(&result, partition, offset),
                result: Box::new(result),
                payload: payload.to_vec(),
            },
            Err(e) => {
                spans::fail(&trace, e.kind(), &e.to_string());
                warn!(partition, offset, kind = e.kind(), error = %e, "undecodable result; storing it in sink_rejects");
                Item::Reject(RejectRow {
                    topic: self.topic.clone(),
                    partition,
                    offset,
                    kind: e.kind().to_owned(),
                    message: e.to_string(),
                    payload: payload.to_vec(),
                })
            }
        };
        Pending { partition, offset, item, trace }
    }

    /// Writes the pending records in one database transaction (retrying transient
    /// database errors, reconnecting, until it works, shutdown or the outage limit), then commits the same offsets to
    /// Kafka for lag monitoring.
    async fn flush(&mut self, shutdown: &CancellationToken) -> Result<(), SinkError> {
        self.drop_revoked();
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let batch_len = pending.len();
        let mut next = NextOffsets::default();
        let mut outgoing =
            Outgoing::new(Batch { group_id: self.group_id.clone(), topic: self.topic.clone(), ..Batch::default() });
        let system = match self.db.kind() {
            "postgres" => "postgresql",
            other => other,
        };
        let mut traces = Vec::with_capacity(pending.len());
        for p in pending {
            next.record(p.partition, p.offset);
            let table = match p.item {
                Item::Row { .. } => "detections",
                Item::Reject(_) => "sink_rejects",
                Item::DeadLetter(_) => "dead_letters",
            };
            traces.push((spans::db_write(&p.trace, system, table, batch_len), p.trace));
            match p.item {
                Item::Row { row, result, payload } => outgoing.push_row(row, result, payload),
                Item::Reject(reject) => outgoing.batch.rejects.push(reject),
                Item::DeadLetter(dead) => outgoing.batch.dead_letters.push(dead),
            }
        }
        outgoing.batch.offsets =
            next.iter().map(|(partition, next_offset)| PartitionOffset { partition, next_offset }).collect();

        let started = Instant::now();
        let outcome = match write::store(self.db, &mut outgoing, self.db_outage_limit, &self.health, shutdown).await {
            Ok(outcome) => outcome,
            Err(e) => {
                for (write, _) in &traces {
                    spans::fail(write, "db_write_failed", &e.to_string());
                }
                return Err(e);
            }
        };
        let m = metrics();
        metrics::seconds(&m.db_write_duration, started.elapsed());
        m.rows_stored.add(outcome.inserted, &[]);
        if outcome.duplicates == 0 {
            // (A batch with redelivered rows is left out: those were stored before.)
            let now_us = crate::codec::now_us();
            for row in &outgoing.batch.rows {
                let latency = Duration::from_micros(now_us.saturating_sub(row.captured_at_us).max(0) as u64);
                metrics::seconds(&m.e2e_latency, latency);
            }
        }
        self.summary.batches += 1;
        self.summary.inserted += outcome.inserted;
        self.summary.duplicates += outcome.duplicates;
        self.summary.rejected += outcome.rejected;
        self.summary.dead_letters += outcome.dead_letters;
        debug!(
            rows = outgoing.batch.rows.len(),
            inserted = outcome.inserted,
            duplicates = outcome.duplicates,
            rejected = outcome.rejected,
            offsets = ?next,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch stored"
        );
        if outcome.duplicates > 0 {
            info!(duplicates = outcome.duplicates, "skipped results whose frames were already stored (redelivery)");
        }
        for (write, process) in traces {
            write.span().end();
            process.span().end();
        }

        // Lag monitoring only: never read back, so failures are harmless.
        if let Err(e) = self.consumer.commit(&next.to_list(&self.topic), CommitMode::Async) {
            debug!(error = %e, "Kafka offset commit (lag monitoring) failed");
        }

        if let Some(observer) = &self.observer {
            for result in outgoing.into_results() {
                // Full or gone: the observer misses a line, the sink never waits for it.
                if observer.try_send(*result).is_err() {
                    debug!("observer not keeping up; result not shown");
                }
            }
        }
        Ok(())
    }
}

/// The `dead_letters` row of a record of the dead-letter topic: the error from its
/// headers, the frame's id and source from the original record when it decodes.
fn dead_letter_row(message: &BorrowedMessage<'_>) -> Result<DeadLetterRow, String> {
    let header = |name: &str| {
        let headers = message.headers()?;
        headers.iter().filter(|h| h.key == name).filter_map(|h| std::str::from_utf8(h.value?).ok()).last()
    };
    let kind = header(dlq::HEADER_ERROR_KIND).ok_or("no vigil.error.kind header")?;
    let number = |name: &str| header(name).and_then(|v| v.parse::<i64>().ok()).ok_or(format!("no {name} header"));
    let source_partition = i32::try_from(number(dlq::HEADER_SOURCE_PARTITION)?).map_err(|e| e.to_string())?;
    let source_offset = number(dlq::HEADER_SOURCE_OFFSET)?;
    let key = message.key().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_owned);
    let (frame_id, source) = match message.payload().map(Frame::decode) {
        Some(Ok(frame)) => (Some(frame.frame_id), Some(frame.source)),
        _ => (None, key),
    };
    Ok(DeadLetterRow {
        source_partition,
        source_offset,
        frame_id,
        source,
        kind: kind.to_owned(),
        message: header(dlq::HEADER_ERROR_MESSAGE).unwrap_or_default().to_owned(),
        dlq_partition: message.partition(),
        dlq_offset: message.offset(),
    })
}

/// A stored row from a decoded result and its position in `detections`.
pub(crate) fn to_row(result: &DetectionResult, partition: i32, offset: i64) -> DetectionRow {
    DetectionRow {
        frame_id: result.frame_id.clone(),
        source: result.source.clone(),
        seq: result.seq,
        captured_at_us: result.captured_at_us,
        width: result.width,
        height: result.height,
        model_name: result.model_name.clone(),
        model_version: result.model_version.clone(),
        detection_count: result.detections.len() as i32,
        detections_json: detections_json(&result.detections),
        processed_at_us: result.processed_at_us,
        batch_size: result.batch_size,
        inference_us: (result.inference_ms * 1000.0).round() as i64,
        source_partition: result.source_partition,
        source_offset: result.source_offset,
        result_partition: partition,
        result_offset: offset,
    }
}

/// `[{"label","class_id","score","box":[x_min,y_min,x_max,y_max]}, …]`.
fn detections_json(detections: &[DetectedObject]) -> String {
    let list: Vec<serde_json::Value> = detections
        .iter()
        .map(|d| {
            serde_json::json!({
                "label": d.label,
                "class_id": d.class_id,
                "score": d.score,
                "box": [d.x_min, d.y_min, d.x_max, d.y_max],
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// The URL with any password replaced by `***`, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn rows_carry_positions_and_json() {
        let result = DetectionResult {
            frame_id: "f".into(),
            source: "cam".into(),
            seq: 3,
            captured_at_us: 10,
            width: 640,
            height: 480,
            model_name: "nanodet-g".into(),
            model_version: "v".into(),
            detections: vec![DetectedObject {
                label: "dog".into(),
                class_id: 16,
                score: 0.5,
                x_min: 1.0,
                y_min: 2.0,
                x_max: 3.0,
                y_max: 4.0,
            }],
            processed_at_us: 20,
            batch_size: 2,
            inference_ms: 1.5,
            source_partition: 4,
            source_offset: 40,
        };
        let row = to_row(&result, 1, 7);
        assert_eq!((row.result_partition, row.result_offset, row.source_partition, row.source_offset), (1, 7, 4, 40));
        assert_eq!(row.inference_us, 1500);
        assert_eq!(row.detection_count, 1);
        let json: serde_json::Value = serde_json::from_str(&row.detections_json).unwrap();
        assert_eq!(json[0]["label"], "dog");
        assert_eq!(json[0]["box"][3], 4.0);
    }
}
