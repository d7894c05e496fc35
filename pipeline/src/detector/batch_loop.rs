//! The detector's async loop: a `select!` over the consumer, the batch deadline, the
//! model's answer and the shutdown token.
//!
//! One batch is in the model at a time while the next one fills ([`Batcher`]). A
//! finished batch is committed for the partitions still owned (epochs, see
//! [`super::context`]); a failed commit rewinds those partitions and redoes the records.
//!
//! A batch the model backend could not process (see `judge`) is not committed at all:
//! the worker is not ready ([`Health`]), rewinds and redoes it with backoff, and
//! stops with [`DetectorError::BackendUnavailable`] once the backend has failed for
//! `detector.backend_failure_limit_ms`, so that a restart or another worker takes over.
//! Until a batch succeeds again, every batch starts with a probe of the backend and gets
//! no overload verdict: the redone backlog ages during the outage, and would otherwise be
//! committed as `expired` without the model, while the worker says it is not ready.
//!
//! A rewind that fails stops the worker ([`DetectorError::Seek`]): the consumer's
//! position would stay past the uncommitted records and the next commit would skip
//! them. Giving the partitions to a fresh assignment, which starts from the committed
//! offsets, is the one way back that needs no further trust in this consumer's state.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::batcher::Batcher;
use super::context::DetectorContext;
use super::judge::Verdict;
use super::model_thread::{InputRecord, ModelThread, Processed};
use super::output::Destinations;
use super::transaction::{blocking, Committer, Failure, Outputs};
use super::{Delivery, DetectorConfig, DetectorError, DetectorSummary};
use crate::backoff::Backoff;
use crate::codec::kinds;
use crate::health::{Health, BEAT_EVERY};

/// A batch in the model for longer than this pauses the partitions while enough is held.
const PAUSE_AFTER: Duration = Duration::from_secs(2);
use crate::kafka::{classify, ErrorClass};
use crate::metrics::{self, metrics};

/// Wait before redoing a failed batch: 0.2 s doubling to 5 s.
const REDO_BACKOFF: Backoff = Backoff { base: Duration::from_millis(200), cap: Duration::from_secs(5) };

/// Where the loop is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading, batching, committing.
    Consuming,
    /// Shutdown asked: no more reading; the batch in the model finishes and commits.
    Draining,
    /// Nothing left in flight: leave.
    Done,
}

/// The loop's state: its dependencies and what it has done so far.
pub(crate) struct BatchLoop<'a> {
    pub(crate) cfg: &'a DetectorConfig,
    pub(crate) consumer: &'a StreamConsumer<DetectorContext>,
    pub(crate) committer: Committer,
    pub(crate) model: &'a ModelThread,
    pub(crate) dest: Destinations,
    pub(crate) summary: DetectorSummary,
    consecutive_failures: u32,
    last_report: Instant,
    health: Health,
    /// Since when every batch has been a backend failure (`None`: the backend works).
    backend_down_since: Option<Instant>,
    /// Backend failures in a row, for the backoff.
    backend_failures: u32,
}

impl<'a> BatchLoop<'a> {
    pub(crate) fn new(
        cfg: &'a DetectorConfig,
        consumer: &'a StreamConsumer<DetectorContext>,
        committer: Committer,
        model: &'a ModelThread,
        dest: Destinations,
        summary: DetectorSummary,
        health: Health,
    ) -> Self {
        BatchLoop {
            cfg,
            consumer,
            committer,
            model,
            dest,
            summary,
            consecutive_failures: 0,
            last_report: Instant::now(),
            health,
            backend_down_since: None,
            backend_failures: 0,
        }
    }

    /// Runs until `shutdown` fires and the batch in the model is committed (or undone).
    pub(crate) async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), DetectorError> {
        let mut batcher = Batcher::new(self.cfg.max_batch, self.cfg.max_wait());
        let mut in_flight: Option<oneshot::Receiver<Processed>> = None;
        let mut submitted_at = Instant::now();
        let mut phase = Phase::Consuming;
        let mut joined = false;
        self.health.set_not_ready("joining the consumer group");
        while phase != Phase::Done {
            self.health.beat();
            if !joined && self.consumer.context().rebalances() > 0 {
                // A first assignment (empty with more workers than partitions): a member.
                joined = true;
                if self.backend_down_since.is_none() {
                    self.health.set_ready();
                }
            }
            if let Some(reason) = self.consumer.context().ownership_uncertain() {
                error!(%reason, "partition ownership uncertain after a rebalance; stopping");
                return Err(DetectorError::Assignment(reason));
            }
            if in_flight.is_none() {
                self.drop_stale(&mut batcher);
                if phase == Phase::Draining {
                    phase = Phase::Done;
                    continue;
                }
                if batcher.due() {
                    let backend_down = self.backend_down_since.is_some();
                    in_flight = Some(self.model.submit(batcher.take(), backend_down)?);
                    submitted_at = Instant::now();
                }
            }
            // Enough is held: stop reading. Only a batch that runs long pauses the
            // partitions, so that polling (rebalances, `max.poll.interval.ms`) goes on
            // without more records; librdkafka's bounded prefetch holds the rest, and a
            // short batch does not pay for the fetch a resumed partition needs (about
            // 600 ms on the embedded broker).
            if in_flight.is_some() && batcher.brimming() && !batcher.paused() && submitted_at.elapsed() >= PAUSE_AFTER {
                batcher.set_paused(self.pause());
            }
            if batcher.paused() && batcher.running_low() {
                self.resume();
                batcher.set_paused(false);
            }
            let deadline = batcher.deadline();
            let reading = phase == Phase::Consuming && (!batcher.brimming() || batcher.paused());
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if phase == Phase::Consuming => {
                    phase = Phase::Draining;
                    info!(in_flight = in_flight.is_some(), "stopping: finishing the batch in the model, then leaving the group");
                }
                processed = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    let mut processed = processed.map_err(|_| DetectorError::ModelThread(None))?;
                    match processed.backend_failure.take() {
                        Some(reason) => self.backend_failed(processed.records, reason, &mut batcher, shutdown).await?,
                        None => {
                            // While the backend was down the batch was probed first (see
                            // `judge::process_while_backend_down`): judged means it works.
                            if processed.inferred > 0 {
                                let m = metrics();
                                m.batch_size.record(processed.inferred as u64, &[]);
                                m.inference_duration.record(processed.inference_ms / 1000.0, &[]);
                            }
                            if processed.inferred > 0 || self.backend_down_since.is_some() {
                                self.backend_works();
                            }
                            self.complete(processed, &mut batcher, shutdown).await?;
                        }
                    }
                    if batcher.paused() && batcher.running_low() {
                        self.resume();
                        batcher.set_paused(false);
                    }
                    self.report();
                }
                received = self.consumer.recv(), if reading => {
                    self.received(received, &mut batcher)?;
                    // What the consumer already holds joins the batch; an empty queue
                    // makes the batch due (see `Batcher`).
                    while !batcher.brimming() {
                        match self.consumer.recv().now_or_never() {
                            Some(received) => self.received(received, &mut batcher)?,
                            None => {
                                batcher.input_drained();
                                break;
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if in_flight.is_none() && deadline.is_some() => {}
                // Idle: the loop still turns, for /healthz.
                _ = tokio::time::sleep(BEAT_EVERY) => {}
            }
        }
        Ok(())
    }

    /// Adds a record read from the consumer to the batch; a fatal consumer error stops the
    /// worker, others are librdkafka's to retry.
    fn received(&self, received: KafkaResult<BorrowedMessage<'_>>, batcher: &mut Batcher) -> Result<(), DetectorError> {
        match received {
            Ok(message) => {
                metrics().frames_consumed.add(1, &[]);
                let epoch = self.consumer.context().epoch(rdkafka::Message::partition(&message));
                batcher.push(InputRecord::from_message(&message, epoch, &self.cfg.group_id));
            }
            Err(e) => match classify(&e) {
                ErrorClass::Fatal => return Err(DetectorError::Consumer(e)),
                _ => warn!(error = %e, "consumer error (librdkafka retries)"),
            },
        }
        Ok(())
    }

    /// A batch the backend could not process: commit nothing, say not ready, rewind and
    /// redo it after a backoff; stop once the backend has failed for longer than
    /// `detector.backend_failure_limit_ms`.
    async fn backend_failed(
        &mut self,
        records: Vec<InputRecord>,
        reason: String,
        batcher: &mut Batcher,
        shutdown: &CancellationToken,
    ) -> Result<(), DetectorError> {
        let limit = self.cfg.backend_failure_limit();
        let since = *self.backend_down_since.get_or_insert_with(|| {
            warn!(%reason, limit_ms = limit.as_millis() as u64, "model backend failing: not ready; nothing is committed, the batch is retried");
            Instant::now()
        });
        self.health.set_not_ready(format!("model backend failing: {reason}"));
        self.backend_failures += 1;
        if since.elapsed() >= limit {
            error!(%reason, failing_s = since.elapsed().as_secs(), "model backend failing for too long; stopping");
            return Err(DetectorError::BackendUnavailable { waited: since.elapsed(), last: reason });
        }
        if shutdown.is_cancelled() {
            return Err(DetectorError::Unfinished(format!("model backend failing: {reason}")));
        }
        let ctx = self.consumer.context();
        let owned: Vec<InputRecord> = records.into_iter().filter(|r| ctx.is_current(r.partition, r.epoch)).collect();
        let from = batcher.rewind_from(&owned);
        self.seek(from)?;
        let backoff = REDO_BACKOFF.delay(self.backend_failures);
        warn!(attempt = self.backend_failures, ?backoff, %reason, "batch not processed: model backend failing; redoing it");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => {}
        }
        Ok(())
    }

    /// A batch reached the model and came back judged: the backend works (again).
    fn backend_works(&mut self) {
        self.backend_failures = 0;
        if let Some(since) = self.backend_down_since.take() {
            info!(after_s = since.elapsed().as_secs(), "model backend answers again; ready");
            self.health.set_ready();
        }
    }

    /// Drops pending records whose partition has been revoked since they were read.
    fn drop_stale(&mut self, batcher: &mut Batcher) {
        let ctx = self.consumer.context();
        let dropped = batcher.retain(|r| ctx.is_current(r.partition, r.epoch));
        if dropped > 0 {
            self.summary.dropped_on_rebalance += dropped as u64;
            debug!(dropped, "dropped pending records of revoked partitions");
        }
    }

    fn assignment(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in self.consumer.context().assigned() {
            tpl.add_partition(&self.dest.images, p);
        }
        tpl
    }

    /// Pauses every assigned partition; whether that worked.
    fn pause(&self) -> bool {
        let tpl = self.assignment();
        match self.consumer.pause(&tpl) {
            Ok(()) => {
                debug!(partitions = tpl.count(), "paused while the model is busy");
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot pause partitions");
                false
            }
        }
    }

    /// Resumes every assigned partition (those assigned while paused were resumed by
    /// the rebalance callback already; resuming twice is harmless).
    fn resume(&self) {
        if let Err(e) = self.consumer.resume(&self.assignment()) {
            warn!(error = %e, "cannot resume partitions");
        }
    }

    /// Commits a processed batch (the part whose partitions are still ours), or undoes
    /// it and rewinds so that it is read and processed again.
    async fn complete(
        &mut self,
        processed: Processed,
        batcher: &mut Batcher,
        shutdown: &CancellationToken,
    ) -> Result<(), DetectorError> {
        let ctx = self.consumer.context();
        let (mut records, mut verdicts) = (Vec::new(), Vec::new());
        for (record, verdict) in processed.records.into_iter().zip(processed.verdicts) {
            if ctx.is_current(record.partition, record.epoch) {
                records.push(record);
                verdicts.push(verdict);
            } else {
                self.summary.dropped_on_rebalance += 1;
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let batch = Outputs { dest: &self.dest, records: &records, verdicts: &verdicts };
        match self.committer.commit(self.consumer, &batch).await {
            Ok(()) => {
                self.consecutive_failures = 0;
                let dead = verdicts.iter().filter(|v| matches!(v, Verdict::DeadLetter { .. })).count() as u64;
                self.summary.batches += 1;
                self.summary.dead_letters += dead;
                self.summary.results += verdicts.len() as u64 - dead;
                metrics().results_produced.add(verdicts.len() as u64 - dead, &[]);
                metrics::transaction("committed");
                debug!(
                    frames = records.len(),
                    inferred = processed.inferred,
                    dead_letters = dead,
                    inference_ms = processed.inference_ms as u64,
                    commit_ms = started.elapsed().as_millis() as u64,
                    "batch committed"
                );
                log_dead_letters(&records, &verdicts);
                Ok(())
            }
            Err(failure) => {
                self.summary.aborts += 1;
                metrics::transaction("aborted");
                self.consecutive_failures += 1;
                let mut new_producer = false;
                match failure {
                    Failure::Abort(reason) => {
                        warn!(%reason, frames = records.len(), "batch aborted; rewinding to the last committed offsets to redo it");
                    }
                    Failure::Fatal(reason) => {
                        warn!(%reason, "producer unusable; recreating it, then redoing the batch");
                        new_producer = true;
                    }
                    Failure::Fenced(reason) => {
                        let transactional_id = self.committer.transactional_id().to_owned();
                        error!(%reason, %transactional_id, "fenced by another producer with this transactional.id; stopping");
                        return Err(DetectorError::Fenced { transactional_id, reason });
                    }
                }
                if self.consecutive_failures % 5 == 0 && self.cfg.delivery == Delivery::ExactlyOnce {
                    // Aborts keep failing: start over with a fresh producer (same id, new epoch).
                    warn!(failures = self.consecutive_failures, "repeated failures; recreating the producer");
                    new_producer = true;
                }
                if shutdown.is_cancelled() {
                    // Leaving: the partitions' next owner starts from the committed offsets.
                    return Err(DetectorError::Unfinished(format!("{} frames not committed", records.len())));
                }
                let from = batcher.rewind_from(&records);
                if new_producer {
                    self.recreate_producer(shutdown).await?;
                    // The old producer's last commit may have gone through (its outcome was
                    // unknown, or the new producer's init completed it): the batch's first
                    // offsets are no longer a safe place to restart; the group's are.
                    let committed = self.committed_offsets(&from, shutdown).await?;
                    self.seek(from.into_iter().map(|(p, first)| (p, committed.get(&p).copied().unwrap_or(first))))?;
                } else {
                    self.seek(from)?;
                }
                // Back off when failures repeat (broker down).
                tokio::select! {
                    _ = tokio::time::sleep(REDO_BACKOFF.delay(self.consecutive_failures)) => {}
                    _ = shutdown.cancelled() => {}
                }
                Ok(())
            }
        }
    }

    async fn recreate_producer(&mut self, shutdown: &CancellationToken) -> Result<(), DetectorError> {
        self.committer.recreate(shutdown).await?;
        self.summary.producer_restarts += 1;
        Ok(())
    }

    /// The group's committed offsets of `partitions` (read_committed: librdkafka asks the
    /// coordinator for stable offsets, waiting out pending transactional commits). Retried
    /// for up to a minute while the coordinator cannot answer.
    async fn committed_offsets(
        &self,
        partitions: &BTreeMap<i32, i64>,
        shutdown: &CancellationToken,
    ) -> Result<HashMap<i32, i64>, DetectorError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions.keys() {
            tpl.add_partition(&self.dest.images, p);
        }
        let mut attempt = 0u32;
        let list = loop {
            match blocking(|| self.consumer.committed_offsets(tpl.clone(), Duration::from_secs(10))) {
                Ok(list) => break list,
                Err(e) if attempt < 10 && !shutdown.is_cancelled() => {
                    attempt += 1;
                    warn!(attempt, error = %e, "cannot read the committed offsets yet; retrying");
                    tokio::time::sleep(REDO_BACKOFF.delay(attempt)).await;
                }
                Err(e) => return Err(DetectorError::CommittedOffsets(e)),
            }
        };
        let committed: HashMap<i32, i64> = list
            .elements_for_topic(&self.dest.images)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None, // nothing committed yet: the batch's first offset is the start
            })
            .collect();
        info!(?committed, "rewinding to the group's committed offsets after recreating the producer");
        Ok(committed)
    }

    /// Seeks partitions (those still assigned) back to the given offsets, so that what
    /// was read after them is read and processed again. A failed seek of a partition
    /// still assigned stops the worker (see the module doc).
    fn seek(&self, targets: impl IntoIterator<Item = (i32, i64)>) -> Result<(), DetectorError> {
        let ctx = self.consumer.context();
        for (partition, offset) in targets {
            if !ctx.assigned().contains(&partition) {
                continue; // revoked meanwhile: its next owner starts at the committed offset
            }
            let images = &self.dest.images;
            let sought = blocking(|| {
                #[cfg(test)]
                if seek_faults::take(images) {
                    return Err(rdkafka::error::KafkaError::Seek("injected seek failure".into()));
                }
                self.consumer.seek(images, partition, Offset::Offset(offset), Duration::from_secs(10))
            });
            match sought {
                Ok(()) => debug!(partition, offset, "rewound"),
                // Revoked during the seek: its next owner starts at the committed offset.
                Err(e) if !ctx.assigned().contains(&partition) => {
                    debug!(partition, error = %e, "seek of a revoked partition failed")
                }
                Err(cause) => {
                    error!(partition, offset, error = %cause, "seek failed; stopping rather than skip the uncommitted records");
                    return Err(DetectorError::Seek { partition, offset, cause });
                }
            }
        }
        Ok(())
    }

    /// A progress line every 10 s.
    fn report(&mut self) {
        if self.last_report.elapsed() >= Duration::from_secs(10) {
            self.last_report = Instant::now();
            let s = &self.summary;
            info!(
                batches = s.batches,
                results = s.results,
                dead_letters = s.dead_letters,
                aborts = s.aborts,
                assigned = ?self.consumer.context().assigned(),
                "progress"
            );
        }
    }
}

/// One line per bad input (and its count in the metrics); overload outcomes (expired, shed) only at debug level, since
/// under overload they come by the thousand (the progress line counts every dead letter).
fn log_dead_letters(records: &[InputRecord], verdicts: &[Verdict]) {
    for (record, verdict) in records.iter().zip(verdicts) {
        if let Verdict::DeadLetter { kind, message } = verdict {
            metrics::dead_letter(kind);
            // The line names the frame's trace.
            let _attached = record.trace.clone().attach();
            if [kinds::EXPIRED, kinds::SHED].contains(kind) {
                debug!(partition = record.partition, offset = record.offset, kind, %message, "dead-lettered");
            } else {
                info!(partition = record.partition, offset = record.offset, kind, %message, "dead-lettered");
            }
        }
    }
}

/// Test-only: make the next seek on a topic fail (nothing outside the process can make
/// librdkafka refuse a seek on an assigned partition on demand). Keyed by topic, so that
/// tests running in parallel do not meet each other's faults.
#[cfg(test)]
pub(crate) mod seek_faults {
    use std::sync::Mutex;

    static TOPICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// The next seek on `topic` fails.
    pub(crate) fn fail_next(topic: &str) {
        TOPICS.lock().unwrap().push(topic.to_owned());
    }

    /// Whether a seek on `topic` is to fail now (consumes the fault).
    pub(super) fn take(topic: &str) -> bool {
        let mut topics = TOPICS.lock().unwrap();
        match topics.iter().position(|t| t == topic) {
            Some(i) => {
                topics.remove(i);
                true
            }
            None => false,
        }
    }
}
