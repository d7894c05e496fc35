//! Committing a batch: its results, dead letters and input offsets.
//!
//! - `exactly-once`: `begin_transaction` → produce every output → `send_offsets_to_transaction`
//!   with the consumer's group metadata → `commit_transaction`. Retriable errors retry the
//!   call (the commit until its outcome is known); abortable ones abort the transaction
//!   (the caller rewinds and redoes the batch); fatal ones make the producer unusable: the
//!   caller recreates it and rewinds to the group's committed offsets. Fenced means another
//!   producer owns this `transactional.id`: the worker stops.
//! - `at-least-once`: produce, wait for every delivery, then commit the offsets. A crash
//!   in between re-processes the batch; the sink drops the duplicates by `frame_id`.
//!
//! librdkafka's transactional calls block: they run on blocking threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{ClientConfig, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::context::DetectorContext;
use super::failpoint::{self, Point};
use super::judge::Verdict;
use super::model_thread::InputRecord;
use super::output::{DeadLetterForm, Destinations};
use super::{Delivery, DetectorError};
use crate::backoff::Backoff;
use crate::kafka::{classify, idempotent_producer_config, try_enqueue, Enqueued, ErrorClass, NextOffsets};
use crate::settings::Settings;

/// Why a batch could not be committed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Undone (aborted): redo from the last committed offsets.
    Abort(String),
    /// The producer is unusable: recreate it, then redo from the group's committed offsets.
    Fatal(String),
    /// A newer producer with this `transactional.id` exists (or the coordinator aborted a
    /// transaction that outlived its timeout). Re-initialising would fence that producer in
    /// turn, and two live workers would abort each other forever: the worker stops.
    Fenced(String),
}

fn failure(what: &str, e: &KafkaError) -> Failure {
    if is_fenced(e) {
        return Failure::Fenced(format!("{what}: {e}"));
    }
    match classify(e) {
        ErrorClass::Fatal => Failure::Fatal(format!("{what}: {e}")),
        _ => Failure::Abort(format!("{what}: {e}")),
    }
}

fn is_fenced(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::{Fenced, InvalidProducerEpoch, ProducerFenced};
    matches!(e.rdkafka_error_code(), Some(Fenced | ProducerFenced | InvalidProducerEpoch))
}

/// How long a transactional call is retried while librdkafka calls its error retriable.
#[derive(Debug, Clone)]
enum Retries {
    /// At most this many retries, then the transaction is aborted.
    Limited(u32),
    /// Until the outcome is known, or [`SHUTDOWN_RETRIES`] more attempts once the token is
    /// cancelled. For the commit: while it is retriable its outcome is open, an abort is
    /// refused, and a new producer would complete it while the batch is redone, committing
    /// the batch twice. On shutdown the worker may leave it open instead: the next
    /// `init_transactions` with its id, or the transaction timeout, settles it.
    UntilResolved(CancellationToken),
}

/// Retries of an unresolved commit left once shutdown is asked (about 15 s with the backoff).
const SHUTDOWN_RETRIES: u32 = 10;

impl Retries {
    /// Whether retry number `attempt` may go ahead; `after_shutdown` counts those made
    /// since the token was cancelled.
    fn allow(&self, attempt: u32, after_shutdown: &mut u32) -> bool {
        match self {
            Retries::Limited(limit) => attempt < *limit,
            Retries::UntilResolved(shutdown) if shutdown.is_cancelled() => {
                *after_shutdown += 1;
                *after_shutdown <= SHUTDOWN_RETRIES
            }
            Retries::UntilResolved(_) => true,
        }
    }
}

/// Wait between retries of a transactional call: 0.1 s doubling to 2 s.
#[cfg(not(test))]
const RETRY_BACKOFF: Backoff = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(2) };
#[cfg(test)]
const RETRY_BACKOFF: Backoff = Backoff { base: Duration::from_millis(1), cap: Duration::from_millis(1) };

/// librdkafka's first backoff before retrying a refused request, in exactly-once mode
/// (see [`producer_config`]).
const TXN_RETRY_BACKOFF_MS: u64 = 10;

/// How long a commit waits for its records' deliveries before it leaves them to
/// `commit_transaction` (see `Committer::await_deliveries`).
const DELIVERY_WAIT: Duration = Duration::from_secs(1);

/// Added to a transactional call's own timeout before it is given up as stuck.
const CALL_GRACE: Duration = Duration::from_secs(5);

/// The detector's producer and how it commits.
pub(crate) struct Committer {
    producer: FutureProducer,
    config: ClientConfig,
    delivery: Delivery,
    transactional_id: String,
    /// Timeout of each blocking transactional call.
    timeout: Duration,
    /// The worker's shutdown: bounds the retries of an unresolved commit.
    shutdown: CancellationToken,
}

impl Committer {
    /// Creates the producer; in exactly-once mode also initialises transactions, which
    /// fences any predecessor with the same `transactional.id`.
    pub(crate) async fn create(
        settings: &Settings,
        transactional_id: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, DetectorError> {
        let config = producer_config(settings, transactional_id);
        let delivery = settings.detector.delivery;
        let timeout = settings.kafka.operation_timeout().max(Duration::from_secs(10));
        let producer = new_producer(&config, delivery, transactional_id, timeout).await?;
        Ok(Committer { producer, config, delivery, transactional_id: transactional_id.to_owned(), timeout, shutdown })
    }

    /// Commits `batch` in the configured delivery mode. Whatever the outcome, the
    /// attempt's dead letters are settled with [`Destinations`]: forgotten once committed,
    /// one refusal more for each whose own delivery was refused for its size.
    pub(crate) async fn commit(
        &self,
        consumer: &StreamConsumer<DetectorContext>,
        batch: &Outputs<'_>,
    ) -> Result<(), Failure> {
        let mut pending = Vec::new();
        let result = match self.delivery {
            Delivery::ExactlyOnce => self.commit_transactional(consumer, batch, &mut pending).await,
            Delivery::AtLeastOnce => self.commit_at_least_once(consumer, batch, &mut pending).await,
        };
        match &result {
            Ok(()) => batch.dest.committed(batch.records),
            Err(_) => note_refusals(batch.dest, pending).await,
        }
        result
    }

    /// Replaces the producer with a fresh one (same id: a new epoch), retrying while the
    /// broker cannot be reached yet.
    pub(crate) async fn recreate(&mut self, shutdown: &CancellationToken) -> Result<(), DetectorError> {
        let mut attempt = 0u32;
        loop {
            match new_producer(&self.config, self.delivery, &self.transactional_id, self.timeout).await {
                Ok(p) => {
                    self.producer = p;
                    return Ok(());
                }
                Err(e) if !shutdown.is_cancelled() && attempt < 10 => {
                    attempt += 1;
                    warn!(attempt, error = %e, "cannot recreate the producer yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How long one transactional call may block before the producer is taken for wedged:
    /// its own timeout and a grace. librdkafka can overrun the timeout without bound when
    /// the coordinator's broker is gone (librdkafka issues #5456 and #5511:
    /// `send_offsets_to_transaction` waits for a broker state change that never comes).
    fn call_limit(&self) -> Duration {
        self.timeout + CALL_GRACE
    }

    /// The producer's `transactional.id` (the worker's identity towards the coordinator).
    pub(crate) fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// After the loop was given up at the shutdown deadline, perhaps inside a transaction:
    /// aborts it, waiting until `deadline` at most. Best effort: with the broker gone it
    /// cannot, and the coordinator aborts it after `transaction.timeout.ms`; until then
    /// `read_committed` readers of the output partitions wait.
    pub(crate) async fn abort_left_open(&self, deadline: tokio::time::Instant) {
        if self.delivery != Delivery::ExactlyOnce {
            return;
        }
        let within = deadline.saturating_duration_since(tokio::time::Instant::now());
        let p = self.producer.clone();
        let abort = tokio::task::spawn_blocking(move || p.abort_transaction(within));
        match tokio::time::timeout_at(deadline, abort).await {
            Ok(Ok(Ok(()))) => info!("aborted the transaction left open by the shutdown timeout"),
            // None open (the loop was in the model), or a commit still in progress.
            Ok(Ok(Err(e))) => info!(error = %e, "no transaction aborted on the shutdown timeout"),
            _ => warn!("could not abort a transaction left open before the shutdown deadline"),
        }
    }

    /// Waits (bounded) for what is still queued; for the way out.
    pub(crate) async fn flush(&self) {
        let p = self.producer.clone();
        match tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(5))).await {
            Ok(Ok(())) => {}
            // Nothing committed depends on it: an open transaction is aborted by the broker.
            Ok(Err(e)) => warn!(error = %e, "producer flush on exit failed"),
            Err(e) => warn!(error = %e, "producer flush on exit did not complete"),
        }
    }

    async fn commit_transactional(
        &self,
        consumer: &StreamConsumer<DetectorContext>,
        batch: &Outputs<'_>,
        pending: &mut Vec<Pending>,
    ) -> Result<(), Failure> {
        if let Err(e) = self.producer.begin_transaction() {
            return Err(failure("begin_transaction", &e));
        }
        failpoint::transaction_begun();
        let result = self.transaction_body(consumer, batch, pending).await;
        if let Err(Failure::Abort(_)) = &result {
            self.abort().await?;
        }
        result
    }

    async fn transaction_body(
        &self,
        consumer: &StreamConsumer<DetectorContext>,
        batch: &Outputs<'_>,
        pending: &mut Vec<Pending>,
    ) -> Result<(), Failure> {
        // Deliveries are settled by the commit (it flushes; a failed record fails the commit);
        // those of a failed attempt are read by [`note_refusals`].
        self.produce_all(batch, pending).await?;
        failpoint::kill_at(Point::KillAfterProduce);
        let offsets = batch.next_offsets();
        let Some(metadata) = consumer.group_metadata() else {
            return Err(Failure::Abort("no consumer group metadata (not in a group yet)".into()));
        };
        let timeout = self.timeout;
        let p = self.producer.clone();
        let send = move || p.send_offsets_to_transaction(&offsets, &metadata, timeout);
        retry_call("send_offsets_to_transaction", Retries::Limited(5), self.call_limit(), send).await?;
        failpoint::kill_at(Point::KillAfterOffsets);
        failpoint::pause_at(Point::PauseBeforeCommit);
        self.await_deliveries().await;
        failpoint::kill_soon(Point::KillDuringCommit, Duration::from_millis(2));
        let p = self.producer.clone();
        let lose_reply = AtomicBool::new(failpoint::reached(Point::CommitReplyLost));
        let retries = Retries::UntilResolved(self.shutdown.clone());
        retry_call("commit_transaction", retries, self.call_limit(), move || {
            let result = p.commit_transaction(timeout);
            if result.is_ok() && lose_reply.swap(false, Ordering::Relaxed) {
                // The broker committed; the detector only hears a timeout, as when the reply is lost.
                return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
            }
            result
        })
        .await
    }

    /// Waits, without blocking a thread, until librdkafka holds no undelivered record.
    ///
    /// rdkafka's `commit_transaction` flushes first, and its flush, when a record is still
    /// in flight, polls for a fixed 100 ms whatever arrives: at low load that added 100 ms
    /// to most batches on a cluster, whose produce reply often comes after the offsets'.
    /// Checked every millisecond here, the commit's own flush finds nothing left. Records
    /// still in flight after [`DELIVERY_WAIT`] (a broker in trouble, where 100 ms more do
    /// not matter) are left to the commit's flush and its timeout, as before.
    async fn await_deliveries(&self) {
        let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
        while let Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) = self.producer.flush(Duration::ZERO) {
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Aborts the open transaction; a failure to abort makes the producer unusable.
    async fn abort(&self) -> Result<(), Failure> {
        let p = self.producer.clone();
        let timeout = self.timeout;
        let abort = move || p.abort_transaction(timeout);
        match retry_call("abort_transaction", Retries::Limited(5), self.call_limit(), abort).await {
            Ok(()) => Ok(()),
            Err(Failure::Abort(reason) | Failure::Fatal(reason)) => Err(Failure::Fatal(reason)),
            Err(fenced @ Failure::Fenced(_)) => Err(fenced),
        }
    }

    /// Produce, wait for every delivery, then commit the offsets.
    async fn commit_at_least_once(
        &self,
        consumer: &StreamConsumer<DetectorContext>,
        batch: &Outputs<'_>,
        pending: &mut Vec<Pending>,
    ) -> Result<(), Failure> {
        failpoint::transaction_begun();
        self.produce_all(batch, pending).await?;
        let mut deliveries = std::mem::take(pending).into_iter();
        for delivery in deliveries.by_ref() {
            if let Err(failure) = settle(batch.dest, delivery).await {
                pending.extend(deliveries);
                return Err(failure);
            }
        }
        // The same crash points as a transaction's: delivered but not committed, during and
        // after the offset commit.
        failpoint::kill_at(Point::KillAfterProduce);
        failpoint::kill_soon(Point::KillDuringCommit, Duration::from_millis(2));
        if let Err(e) = blocking(|| consumer.commit(&batch.next_offsets(), CommitMode::Sync)) {
            // The results are delivered; a lost commit only means these records may be
            // processed again (duplicates the sink drops).
            warn!(error = %e, "offset commit failed; the batch may be processed again");
        }
        failpoint::kill_at(Point::KillAfterOffsets);
        Ok(())
    }

    /// Enqueues every output record (waiting while librdkafka's queue is full); adds their
    /// delivery futures to `pending` (those not settled here).
    ///
    /// Dead letters are sized to fit the DLQ one by one, but librdkafka may put several
    /// into one batch, and the broker applies `max.message.bytes` to the batch: a dead
    /// letter that would join others still in flight beyond the limit waits for their
    /// delivery first (rare: it takes several large dead letters in one batch).
    async fn produce_all(&self, batch: &Outputs<'_>, pending: &mut Vec<Pending>) -> Result<(), Failure> {
        let forms = batch.dest.forms(batch.records, batch.verdicts);
        if forms.iter().any(|f| *f != DeadLetterForm::Sized) {
            warn!(?forms, "dead letters refused repeatedly for their size go truncated");
        }
        let (mut dlq_in_flight, mut dlq_bytes) = (Vec::new(), 0usize);
        for ((record, verdict), form) in batch.records.iter().zip(batch.verdicts).zip(forms) {
            let output = batch.dest.output(record, verdict, form);
            let mut out = output.record;
            if let Some(bytes) = output.dead_letter_bytes {
                if !dlq_in_flight.is_empty() && dlq_bytes + bytes > batch.dest.dlq_limit {
                    let mut in_flight = std::mem::take(&mut dlq_in_flight).into_iter();
                    for delivery in in_flight.by_ref() {
                        if let Err(failure) = settle(batch.dest, delivery).await {
                            pending.extend(in_flight);
                            return Err(failure);
                        }
                    }
                    dlq_bytes = 0;
                }
                dlq_bytes += bytes;
            }
            let dead_letter = output.dead_letter_bytes.map(|_| (record.partition, record.offset));
            let mut waits = 0u32;
            let delivery = loop {
                let enqueued = try_enqueue(&self.producer, out).map_err(|e| {
                    if let Some(position) = dead_letter.filter(|_| is_size_refusal(&e)) {
                        batch.dest.refused(position);
                    }
                    failure("produce", &e)
                });
                match enqueued {
                    Err(failure) => {
                        pending.extend(dlq_in_flight);
                        return Err(failure);
                    }
                    Ok(Enqueued::Sent(delivery)) => break Pending { dead_letter, delivery },
                    Ok(Enqueued::Full(back)) if waits < 1000 => {
                        waits += 1;
                        out = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(Enqueued::Full(_)) => {
                        pending.extend(dlq_in_flight);
                        return Err(Failure::Abort("produce: librdkafka's queue stayed full".into()));
                    }
                }
            };
            match dead_letter {
                Some(_) => dlq_in_flight.push(delivery),
                None => pending.push(delivery),
            }
        }
        pending.extend(dlq_in_flight);
        Ok(())
    }
}

/// An output record's delivery; for a dead letter, the `images` record it is of.
pub(crate) struct Pending {
    dead_letter: Option<(i32, i64)>,
    delivery: DeliveryFuture,
}

/// Whether the producer or the broker refused a record for its size.
fn is_size_refusal(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::{InvalidRecord, MessageBatchTooLarge, MessageSizeTooLarge};
    matches!(e.rdkafka_error_code(), Some(MessageSizeTooLarge | MessageBatchTooLarge | InvalidRecord))
}

/// Waits for one delivery; a failed one fails the batch (and a dead letter refused for
/// its size counts as such, see [`Destinations::refused`]).
async fn settle(dest: &Destinations, pending: Pending) -> Result<(), Failure> {
    match pending.delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => {
            if let Some(position) = pending.dead_letter.filter(|_| is_size_refusal(&e)) {
                dest.refused(position);
            }
            Err(Failure::Abort(format!("delivery failed: {e}")))
        }
        Err(_) => Err(Failure::Fatal("producer dropped a delivery".into())),
    }
}

/// How long a failed attempt waits for its dead letters' delivery reports.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// After a failed attempt: the dead letters refused for their size (the commit or abort
/// has flushed or purged them, so their reports are in or about to be; waited for at most
/// [`REFUSAL_WAIT`] in all).
async fn note_refusals(dest: &Destinations, pending: Vec<Pending>) {
    let deadline = tokio::time::Instant::now() + REFUSAL_WAIT;
    for p in pending.into_iter().filter(|p| p.dead_letter.is_some()) {
        if tokio::time::timeout_at(deadline, settle(dest, p)).await.is_err() {
            break;
        }
    }
}

/// One batch to commit: the input records, one verdict each, and where outputs go.
pub(crate) struct Outputs<'a> {
    pub(crate) dest: &'a Destinations,
    pub(crate) records: &'a [InputRecord],
    pub(crate) verdicts: &'a [Verdict],
}

impl Outputs<'_> {
    /// The input positions this batch commits: one past its last record per partition.
    fn next_offsets(&self) -> TopicPartitionList {
        NextOffsets::after(self.records.iter().map(|r| (r.partition, r.offset))).to_list(&self.dest.images)
    }
}

/// Producer settings: idempotent, room for dead letters as large as any record, and in
/// exactly-once mode the transactional id and timeout.
fn producer_config(settings: &Settings, transactional_id: &str) -> ClientConfig {
    let cfg = &settings.detector;
    let mut config = idempotent_producer_config(&settings.kafka);
    config
        .set("message.max.bytes", settings.kafka.topic_max_message_bytes(&settings.kafka.topics.dlq).to_string())
        // A batch's records are all enqueued before its deliveries (or its commit) are
        // waited for, so lingering would only hold them back (7 ms of the 11 ms from
        // result to stored row at low load on the embedded broker).
        .set("linger.ms", "0")
        .set("client.id", format!("vigil-detect-{transactional_id}"));
    if cfg.delivery == Delivery::ExactlyOnce {
        config
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", cfg.transaction_timeout_ms.to_string());
        // The coordinator writes a commit's markers after it has answered EndTxn; a
        // transaction begun meanwhile is refused (CONCURRENT_TRANSACTIONS) and retried after
        // this backoff. librdkafka's 100 ms default added 100 ms to a batch that followed
        // another at once; the backoff still doubles on each retry, up to 1 s.
        if !settings.kafka.client.contains_key("retry.backoff.ms") {
            config.set("retry.backoff.ms", TXN_RETRY_BACKOFF_MS.to_string());
        }
    }
    config
}

async fn new_producer(
    config: &ClientConfig,
    delivery: Delivery,
    transactional_id: &str,
    timeout: Duration,
) -> Result<FutureProducer, DetectorError> {
    let producer: FutureProducer =
        config.create().map_err(|cause| DetectorError::Client { role: "producer", cause })?;
    if delivery == Delivery::ExactlyOnce {
        let p = producer.clone();
        let timeout = timeout.max(Duration::from_secs(30));
        tokio::task::spawn_blocking(move || p.init_transactions(timeout))
            .await
            .map_err(DetectorError::Blocking)?
            .map_err(|cause| DetectorError::InitTransactions {
                transactional_id: transactional_id.to_owned(),
                cause,
            })?;
        info!(%transactional_id, "transactions initialised (any predecessor with this id is fenced)");
    }
    Ok(producer)
}

/// Runs a blocking librdkafka call without stalling the runtime's other tasks.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs a blocking transactional call, retrying it while librdkafka says it is
/// retriable, as long as `retries` allows.
///
/// A call still blocked after `limit` is left behind on its thread and the producer is
/// reported unusable ([`Failure::Fatal`]): the loop then replaces it, and the new
/// producer's `init_transactions` fences the stuck one and settles its transaction.
async fn retry_call<F>(what: &'static str, retries: Retries, limit: Duration, call: F) -> Result<(), Failure>
where
    F: Fn() -> KafkaResult<()> + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let (mut attempt, mut after_shutdown) = (0u32, 0u32);
    loop {
        let c = call.clone();
        let result = match tokio::time::timeout(limit, tokio::task::spawn_blocking(move || c())).await {
            Ok(joined) => joined.map_err(|e| Failure::Fatal(format!("{what}: blocking task failed: {e}")))?,
            Err(_) => {
                let limit_ms = limit.as_millis();
                return Err(Failure::Fatal(format!("{what} still blocked after {limit_ms} ms (coordinator gone?)")));
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if classify(&e) == ErrorClass::Retriable && retries.allow(attempt, &mut after_shutdown) => {
                attempt += 1;
                warn!(attempt, error = %e, "{what} failed; retrying");
                tokio::time::sleep(RETRY_BACKOFF.delay(attempt)).await;
            }
            Err(e) => return Err(failure(what, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::DevBroker;
    use rdkafka::producer::{FutureRecord, PurgeConfig};

    /// An exactly-once committer on a 3-broker in-memory cluster, its transaction begun,
    /// and every partition of its `detections` led by broker 2 (the coordinator is 1).
    async fn committer_with_leader_2(broker: &DevBroker) -> (Committer, String) {
        let settings = super::super::loop_tests::settings_for(broker, Delivery::ExactlyOnce);
        let detections = &settings.kafka.topics.detections;
        let (topic, txid) = (detections.name.clone(), format!("tx-{}", detections.name));
        broker.transaction_coordinator(&txid, 1).unwrap();
        for partition in 0..detections.partitions {
            broker.partition_leader(&topic, partition, 2).unwrap();
        }
        let committer = Committer::create(&settings, &txid, CancellationToken::new()).await.unwrap();
        committer.producer.begin_transaction().unwrap();
        (committer, topic)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_starts_once_its_records_are_delivered() {
        let broker = DevBroker::start(3).unwrap();
        let (committer, topic) = committer_with_leader_2(&broker).await;
        broker.broker_rtt(2, Duration::from_millis(300)).unwrap();
        let delivery = committer.producer.send_result(FutureRecord::to(&topic).key("k").payload("v")).unwrap();
        assert!(committer.producer.flush(Duration::ZERO).is_err(), "in flight: the leader answers in 300 ms");
        committer.await_deliveries().await;
        // So the flush inside commit_transaction has nothing left to poll for.
        assert!(committer.producer.flush(Duration::ZERO).is_ok(), "returned before the delivery");
        assert!(delivery.await.unwrap().is_ok());
        let p = committer.producer.clone();
        tokio::task::spawn_blocking(move || p.commit_transaction(Duration::from_secs(10))).await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_that_cannot_be_delivered_are_left_to_the_commit() {
        let broker = DevBroker::start(3).unwrap();
        let (committer, topic) = committer_with_leader_2(&broker).await;
        broker.broker_down(2).unwrap();
        let _delivery = committer.producer.send_result(FutureRecord::to(&topic).key("k").payload("v")).unwrap();
        let waited = tokio::time::timeout(DELIVERY_WAIT * 10, committer.await_deliveries()).await;
        assert!(waited.is_ok(), "the wait for deliveries is bounded");
        assert!(committer.producer.flush(Duration::ZERO).is_err(), "the record is still in flight");
        committer.producer.purge(PurgeConfig::default().queue().inflight());
    }

    #[tokio::test]
    async fn a_commit_is_retried_until_its_outcome_is_known() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = calls.clone();
        // Retriable eight times (more than any limited budget), then resolved.
        let commit = move || match counted.fetch_add(1, Ordering::Relaxed) {
            0..=7 => Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut)),
            _ => Ok(()),
        };
        let shutdown = CancellationToken::new();
        let limit = Duration::from_secs(10);
        assert!(retry_call("commit_transaction", Retries::UntilResolved(shutdown.clone()), limit, commit)
            .await
            .is_ok());
        assert_eq!(calls.load(Ordering::Relaxed), 9);
        // Once shutdown is asked, a commit that never resolves is given up, boundedly.
        shutdown.cancel();
        let never = || Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        assert!(retry_call("commit_transaction", Retries::UntilResolved(shutdown), limit, never).await.is_err());
        let limited = retry_call("send_offsets_to_transaction", Retries::Limited(2), limit, || {
            Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut))
        });
        assert!(matches!(limited.await, Err(Failure::Abort(_))), "a limited call gives up and aborts");
    }

    #[tokio::test]
    async fn a_call_blocked_past_its_limit_makes_the_producer_unusable() {
        // As librdkafka's send_offsets_to_transaction does when the coordinator's broker is
        // decommissioned: it neither returns nor times out.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let blocked = std::sync::Mutex::new(blocked);
        let stuck = move || {
            blocked.lock().expect("one caller").recv().ok();
            Ok(())
        };
        let started = std::time::Instant::now();
        let result = retry_call("send_offsets_to_transaction", Retries::Limited(5), Duration::from_millis(200), stuck);
        match result.await {
            Err(Failure::Fatal(reason)) => assert!(reason.contains("still blocked after 200 ms"), "{reason}"),
            other => panic!("expected the producer to be given up, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "given up at the limit, not at the call's end");
        drop(release);
    }

    #[test]
    fn only_size_errors_count_against_a_dead_letter() {
        use RDKafkaErrorCode::*;
        for code in [MessageSizeTooLarge, MessageBatchTooLarge, InvalidRecord] {
            assert!(is_size_refusal(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        for code in [TopicAuthorizationFailed, MessageTimedOut, NotEnoughReplicas, BrokerTransportFailure, PurgeQueue] {
            assert!(!is_size_refusal(&KafkaError::MessageProduction(code)), "{code:?}");
        }
    }

    #[test]
    fn fencing_is_told_apart_from_other_fatal_errors() {
        let fenced = KafkaError::Global(RDKafkaErrorCode::ProducerFenced);
        assert!(matches!(failure("commit_transaction", &fenced), Failure::Fenced(_)));
        let fatal = KafkaError::Global(RDKafkaErrorCode::OutOfOrderSequenceNumber);
        assert!(matches!(failure("produce", &fatal), Failure::Fatal(_)));
    }

    #[test]
    fn transactional_settings_follow_the_mode() {
        let mut settings = Settings::default();
        let eos = producer_config(&settings, "vigil-detector-a");
        assert_eq!(eos.get("transactional.id"), Some("vigil-detector-a"));
        assert_eq!(eos.get("enable.idempotence"), Some("true"));
        assert_eq!(eos.get("acks"), Some("all"));
        assert_eq!(eos.get("retry.backoff.ms"), Some("10"));
        settings.kafka.client.insert("retry.backoff.ms".into(), "250".into());
        assert_eq!(producer_config(&settings, "a").get("retry.backoff.ms"), Some("250"), "the user's setting stays");
        settings.detector.delivery = Delivery::AtLeastOnce;
        let alo = producer_config(&settings, "x");
        assert_eq!(alo.get("transactional.id"), None);
        assert_eq!(alo.get("enable.idempotence"), Some("true"));
    }
}
