//! The detect stage: consumer group on `images`, dynamic batches through the model,
//! one Kafka transaction per batch to `detections` (and `images.dlq`).
//!
//! Structure (mini-redis style): one async loop ([`Detect::run`]) that `select!`s over
//! the consumer, the batch deadline, the model's answer and the shutdown token; the
//! model (Avro + image decode + inference) on its own thread ([`worker::ModelWorker`])
//! behind a bounded channel; blocking Kafka calls (`init_transactions`,
//! `send_offsets_to_transaction`, `commit_transaction`, `abort_transaction`, offset
//! commits, seeks) on blocking threads.
//!
//! Batching: a batch closes when it has `max_batch` frames or `max_wait_ms` after its
//! first frame. While the model works on one batch the loop keeps reading the next one;
//! once that is full it pauses the assigned partitions and keeps polling (so rebalances
//! and `max.poll.interval.ms` are served), and resumes after the commit.
//!
//! Delivery (`detector.delivery`):
//! - `exactly-once` (default): per batch `begin_transaction` → produce results and dead
//!   letters → `send_offsets_to_transaction(next offsets, consumer group metadata)` →
//!   `commit_transaction`. Retriable errors retry the call; abortable ones abort the
//!   transaction, seek back to the last committed offsets and process the records
//!   again; fatal ones (fenced) recreate the producer (same `transactional.id`), then
//!   seek back. `transactional.id = <group_id>-<instance_id>`.
//! - `at-least-once`: produce, wait for every delivery, then commit the offsets: a crash
//!   in between re-processes the batch, and the sink drops the duplicates by `frame_id`.
//!   For brokers whose transactional offsets do not work (librdkafka's mock, see
//!   DESIGN.md); never the default.
//!
//! Rebalances never meet an open transaction (see [`context`]); results of revoked
//! partitions still in the model are dropped. Shutdown (SIGTERM, Ctrl-C) lets the batch
//! in the model finish and commit, then leaves the group.
//!
//! Bad input never stops a partition: oversized, non-Avro, unknown-schema, empty,
//! undecodable or too-large images go to the dead-letter topic with their original
//! bytes, key and headers plus `vigil.error.*` headers, in the same transaction as the
//! offsets.

pub mod config;
pub mod context;
mod error;
pub mod worker;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::KeyValue;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use config::*;
pub use error::DetectorError;

use self::context::DetectorContext;
use self::worker::{InputLimits, InputRecord, ModelWorker, Processed, Verdict};
use crate::codec::dlq::error_headers;
use crate::kafka::{classify, consumer_config, ensure_topics, idempotent_producer_config, ErrorClass};
use crate::model::{Backend, Detector, NanoDet};
use crate::settings::Settings;
use crate::telemetry::{attributes as attr, extract_context, inject_context, spans, start_span};

/// Room for key and headers on top of the largest record, when a dead letter carries
/// the original bytes.
const DLQ_HEADROOM_BYTES: u32 = 1024 * 1024;

/// `vigil detect` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    about = "Run a detector worker: images -> NanoDet-g -> detections, one Kafka transaction per batch",
    long_about = "Run a detector worker in the consumer group detector.group_id (default vigil-detector).\n\n\
        Frames from the images topic are batched (detector.max_batch frames or detector.max_wait_ms), decoded \
        and run through NanoDet-g on a dedicated thread; every frame yields one DetectionResult on the \
        detections topic, or, if it cannot be processed (not Avro, unknown schema, oversized, empty, corrupt \
        or too large an image), a dead letter on images.dlq with its original bytes and vigil.error.* headers.\n\n\
        In exactly-once mode (default) each batch is one Kafka transaction holding the results, the dead \
        letters and the input offsets (send_offsets_to_transaction with the consumer's group metadata). \
        Abortable errors abort, rewind to the last committed offsets and redo the batch; a fenced producer \
        is recreated. In at-least-once mode results are produced, then offsets committed (the sink removes \
        duplicates); use it only where transactions do not work, such as the in-memory broker.\n\n\
        Start as many workers as there are cores/GPUs; partitions are shared through the consumer group. \
        SIGTERM or Ctrl-C finishes and commits the current batch, then leaves the group. On exit it prints \
        one `summary: {json}` line on stdout.",
    after_help = "Examples:\n  \
        vigil detect                                    # model on the GPU if there is one, else CPU\n  \
        vigil detect --backend cpu --instance-id det-1\n  \
        vigil detect --instance-id \"$POD_NAME\"          # stable id: a restart fences its predecessor at once\n  \
        vigil detect --delivery at-least-once           # for the in-memory broker (vigil broker)\n  \
        VIGIL__DETECTOR__MAX_BATCH=16 VIGIL__DETECTOR__MAX_WAIT_MS=100 vigil detect"
)]
pub struct DetectArgs {
    /// Where the model runs: auto (GPU via wgpu if present, else CPU), wgpu, cpu [config: detector.backend].
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<Backend>,
    /// Worker name; derives transactional.id = <group_id>-<instance_id>. Default: a fresh unique id
    /// per start [config: detector.instance_id].
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// exactly-once (Kafka transactions) or at-least-once [config: detector.delivery].
    #[arg(long, value_enum, value_name = "MODE")]
    pub delivery: Option<Delivery>,
}

impl DetectArgs {
    /// Config keys these flags set.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = Vec::new();
        if let Some(backend) = self.backend {
            o.push(("detector.backend", backend.to_string()));
        }
        if let Some(id) = &self.instance_id {
            o.push(("detector.instance_id", id.clone()));
        }
        if let Some(delivery) = self.delivery {
            o.push(("detector.delivery", delivery.to_string()));
        }
        o
    }
}

/// What a detector run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DetectSummary {
    /// `transactional.id` (exactly-once) or client id.
    pub instance_id: String,
    pub delivery: String,
    /// Batches committed.
    pub batches: u64,
    /// Results committed to `detections`.
    pub results: u64,
    /// Dead letters committed to the DLQ.
    pub dead_letters: u64,
    /// Transactions aborted (or, at-least-once, batches whose delivery failed) and redone.
    pub aborts: u64,
    /// Producers recreated after a fatal error.
    pub producer_restarts: u64,
    /// Records dropped because their partition was revoked while they were in the model.
    pub dropped_on_rebalance: u64,
    /// Rebalance events seen.
    pub rebalances: u64,
}

/// `vigil detect`: loads NanoDet-g, then runs until `shutdown`. Prints a `summary:` line.
pub async fn run(settings: &Settings, _args: DetectArgs, shutdown: CancellationToken) -> Result<DetectSummary, DetectorError> {
    // The flags already went through the settings overrides.
    let worker = start_nanodet(settings).await?;
    let summary = run_with_model(settings, worker, shutdown).await?;
    println!("summary: {}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(summary)
}

/// Starts the model thread with NanoDet-g on the configured backend.
pub async fn start_nanodet(settings: &Settings) -> Result<ModelWorker, DetectorError> {
    let model = settings.model.clone();
    let backend = settings.detector.backend;
    info!(backend = %backend, dir = %model.dir.display(), "loading NanoDet-g");
    ModelWorker::start(
        move || NanoDet::load(&model, backend).map(|m| Box::new(m) as Box<dyn Detector>),
        input_limits(&settings.detector),
    )
    .await
}

/// The limits the model thread applies to inputs.
pub fn input_limits(cfg: &DetectorConfig) -> InputLimits {
    InputLimits { max_record_bytes: cfg.max_record_bytes, decode: cfg.decode }
}

/// Runs the detector loop with a started model thread until `shutdown`.
pub async fn run_with_model(
    settings: &Settings,
    worker: ModelWorker,
    shutdown: CancellationToken,
) -> Result<DetectSummary, DetectorError> {
    let cfg = &settings.detector;
    let kafka = &settings.kafka;
    if cfg.max_record_bytes as u64 > u64::from(kafka.max_message_bytes) {
        return Err(DetectorError::Config {
            key: "detector.max_record_bytes".into(),
            reason: format!(
                "{} exceeds kafka.max_message_bytes ({}): such records could not even be dead-lettered",
                cfg.max_record_bytes, kafka.max_message_bytes
            ),
        });
    }
    let instance = cfg.instance_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let transactional_id = format!("{}-{}", cfg.group_id, instance);
    let topics = &kafka.topics;
    ensure_topics(kafka, &[&topics.images, &topics.detections, &topics.dlq]).await?;

    let mut consumer_cfg = consumer_config(kafka, &cfg.group_id, cfg.session_timeout_ms);
    consumer_cfg
        .set("max.poll.interval.ms", cfg.max_poll_interval_ms.to_string())
        .set("client.id", format!("vigil-detect-{instance}"));
    let consumer: StreamConsumer<DetectorContext> = consumer_cfg
        .create_with_context(DetectorContext::new(&topics.images.name))
        .map_err(|source| DetectorError::Client { role: "consumer", source })?;

    let producer_cfg = producer_config(settings, &transactional_id);
    let producer = create_producer(&producer_cfg, cfg.delivery, &transactional_id, kafka.operation_timeout()).await?;
    consumer.subscribe(&[&topics.images.name]).map_err(DetectorError::Consumer)?;
    info!(
        group = %cfg.group_id,
        instance = %instance,
        %transactional_id,
        delivery = %cfg.delivery,
        model = %worker.model_name,
        max_batch = cfg.max_batch,
        max_wait_ms = cfg.max_wait_ms,
        "detector started"
    );

    let mut detect = Detect {
        cfg: cfg.clone(),
        consumer: &consumer,
        producer,
        producer_cfg,
        worker: &worker,
        images: topics.images.name.clone(),
        detections: topics.detections.name.clone(),
        dlq: topics.dlq.name.clone(),
        transactional_id: transactional_id.clone(),
        timeout: kafka.operation_timeout().max(Duration::from_secs(10)),
        consecutive_failures: 0,
        summary: DetectSummary {
            instance_id: if cfg.delivery == Delivery::ExactlyOnce { transactional_id } else { instance },
            delivery: cfg.delivery.to_string(),
            ..DetectSummary::default()
        },
        last_report: Instant::now(),
    };
    let result = detect.run(&shutdown).await;
    let mut summary = detect.summary.clone();
    summary.rebalances = consumer.context().rebalances();
    let producer = detect.producer.clone();
    drop(detect);
    // Leave the group now (revocation runs in the close), then let the producer go.
    drop(consumer);
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    drop(worker);
    info!(
        batches = summary.batches,
        results = summary.results,
        dead_letters = summary.dead_letters,
        aborts = summary.aborts,
        producer_restarts = summary.producer_restarts,
        dropped_on_rebalance = summary.dropped_on_rebalance,
        "detector stopped"
    );
    result.map(|()| summary)
}

/// Producer settings: idempotent, room for dead letters as large as any record, and in
/// exactly-once mode the transactional id and timeout.
fn producer_config(settings: &Settings, transactional_id: &str) -> ClientConfig {
    let cfg = &settings.detector;
    let mut config = idempotent_producer_config(&settings.kafka);
    config
        .set("message.max.bytes", (settings.kafka.max_message_bytes + DLQ_HEADROOM_BYTES).to_string())
        .set("linger.ms", "5")
        .set("client.id", format!("vigil-detect-{transactional_id}"));
    if cfg.delivery == Delivery::ExactlyOnce {
        config
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", cfg.transaction_timeout_ms.to_string());
    }
    config
}

async fn create_producer(
    config: &ClientConfig,
    delivery: Delivery,
    transactional_id: &str,
    timeout: Duration,
) -> Result<FutureProducer, DetectorError> {
    let producer: FutureProducer =
        config.create().map_err(|source| DetectorError::Client { role: "producer", source })?;
    if delivery == Delivery::ExactlyOnce {
        let p = producer.clone();
        let timeout = timeout.max(Duration::from_secs(30));
        tokio::task::spawn_blocking(move || p.init_transactions(timeout))
            .await
            .map_err(|e| DetectorError::ModelThread(Some(e.to_string())))?
            .map_err(|source| DetectorError::InitTransactions { transactional_id: transactional_id.to_owned(), source })?;
        info!(%transactional_id, "transactions initialised (any predecessor with this id is fenced)");
    }
    Ok(producer)
}

/// Runs a blocking librdkafka call without stalling the runtime's other tasks.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Why a batch could not be committed.
enum Failure {
    /// Undo (abort) and redo from the last committed offsets.
    Abort(String),
    /// The producer is unusable: recreate it, then redo.
    Fatal(String),
}

fn failure(what: &str, e: &KafkaError) -> Failure {
    match classify(e) {
        ErrorClass::Fatal => Failure::Fatal(format!("{what}: {e}")),
        _ => Failure::Abort(format!("{what}: {e}")),
    }
}

struct Detect<'a> {
    cfg: DetectorConfig,
    consumer: &'a StreamConsumer<DetectorContext>,
    producer: FutureProducer,
    producer_cfg: ClientConfig,
    worker: &'a ModelWorker,
    images: String,
    detections: String,
    dlq: String,
    transactional_id: String,
    /// Timeout of each blocking transactional call.
    timeout: Duration,
    consecutive_failures: u32,
    summary: DetectSummary,
    last_report: Instant,
}

impl Detect<'_> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), DetectorError> {
        let max_batch = self.cfg.max_batch;
        let max_wait = self.cfg.max_wait();
        let mut pending: VecDeque<InputRecord> = VecDeque::new();
        let mut first_at: Option<tokio::time::Instant> = None;
        let mut in_flight: Option<tokio::sync::oneshot::Receiver<Processed>> = None;
        let mut paused = false;
        let mut stopping = false;
        loop {
            if in_flight.is_none() {
                self.drop_stale(&mut pending);
                if pending.is_empty() {
                    first_at = None;
                }
                if stopping {
                    break;
                }
                let due = first_at.is_some_and(|t| t.elapsed() >= max_wait);
                if !pending.is_empty() && (pending.len() >= max_batch || due) {
                    let n = pending.len().min(max_batch);
                    let batch: Vec<InputRecord> = pending.drain(..n).collect();
                    first_at = (!pending.is_empty()).then(tokio::time::Instant::now);
                    in_flight = Some(self.worker.submit(batch).await?);
                }
            }
            if in_flight.is_some() && pending.len() >= max_batch && !paused {
                paused = self.pause();
            }
            let deadline = first_at.map(|t| t + max_wait);
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    info!(in_flight = in_flight.is_some(), "stopping: finishing the batch in the model, then leaving the group");
                }
                processed = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    let processed = processed.map_err(|_| DetectorError::ModelThread(None))?;
                    self.complete(processed, &mut pending, shutdown).await?;
                    if paused {
                        self.resume();
                        paused = false;
                    }
                    self.report();
                }
                received = self.consumer.recv(), if !stopping && (pending.len() < max_batch || paused) => {
                    match received {
                        Ok(message) => {
                            let partition = message.partition();
                            let record = InputRecord {
                                partition,
                                offset: message.offset(),
                                key: message.key().map(<[u8]>::to_vec),
                                payload: message.payload().map(<[u8]>::to_vec),
                                headers: message
                                    .headers()
                                    .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
                                    .unwrap_or_default(),
                                epoch: self.consumer.context().epoch(partition),
                            };
                            pending.push_back(record);
                            first_at.get_or_insert_with(tokio::time::Instant::now);
                        }
                        Err(e) => match classify(&e) {
                            ErrorClass::Fatal => return Err(DetectorError::Consumer(e)),
                            _ => warn!(error = %e, "consumer error (librdkafka retries)"),
                        },
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if in_flight.is_none() && deadline.is_some() => {}
            }
        }
        Ok(())
    }

    /// Drops pending records whose partition has been revoked since they were read.
    fn drop_stale(&mut self, pending: &mut VecDeque<InputRecord>) {
        let ctx = self.consumer.context();
        let before = pending.len();
        pending.retain(|r| ctx.is_current(r.partition, r.epoch));
        let dropped = before - pending.len();
        if dropped > 0 {
            self.summary.dropped_on_rebalance += dropped as u64;
            debug!(dropped, "dropped pending records of revoked partitions");
        }
    }

    fn assignment(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in self.consumer.context().assigned() {
            tpl.add_partition(&self.images, p);
        }
        tpl
    }

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
        pending: &mut VecDeque<InputRecord>,
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
        let outcome = match self.cfg.delivery {
            Delivery::ExactlyOnce => self.commit_transactional(&records, &verdicts).await,
            Delivery::AtLeastOnce => self.commit_at_least_once(&records, &verdicts).await,
        };
        match outcome {
            Ok(()) => {
                self.consecutive_failures = 0;
                let dead = verdicts.iter().filter(|v| matches!(v, Verdict::DeadLetter { .. })).count() as u64;
                self.summary.batches += 1;
                self.summary.dead_letters += dead;
                self.summary.results += verdicts.len() as u64 - dead;
                debug!(
                    frames = records.len(),
                    dead_letters = dead,
                    inference_ms = processed.inference_ms as u64,
                    commit_ms = started.elapsed().as_millis() as u64,
                    "batch committed"
                );
                self.trace(&records, &verdicts);
                Ok(())
            }
            Err(failure) => {
                self.summary.aborts += 1;
                self.consecutive_failures += 1;
                match failure {
                    Failure::Abort(reason) => {
                        warn!(%reason, frames = records.len(), "batch aborted; rewinding to the last committed offsets to redo it");
                    }
                    Failure::Fatal(reason) => {
                        warn!(%reason, "producer unusable; recreating it, then redoing the batch");
                        self.recreate_producer(shutdown).await?;
                    }
                }
                if self.consecutive_failures % 5 == 0 && self.cfg.delivery == Delivery::ExactlyOnce {
                    // Aborts keep failing: start over with a fresh producer (same id, new epoch).
                    warn!(failures = self.consecutive_failures, "repeated failures; recreating the producer");
                    self.recreate_producer(shutdown).await?;
                }
                self.rewind(&records, pending);
                // Back off when failures repeat (broker down): 0.1 s doubling to 5 s.
                let backoff = Duration::from_millis(100u64 << self.consecutive_failures.min(6)).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => {}
                }
                Ok(())
            }
        }
    }

    /// Seeks every partition of the failed batch back to its first offset (the last
    /// committed position) and forgets the records read after it.
    fn rewind(&mut self, records: &[InputRecord], pending: &mut VecDeque<InputRecord>) {
        let mut from: BTreeMap<i32, i64> = BTreeMap::new();
        for r in records.iter().chain(pending.iter()) {
            let e = from.entry(r.partition).or_insert(r.offset);
            *e = (*e).min(r.offset);
        }
        pending.retain(|r| !from.contains_key(&r.partition));
        let ctx = self.consumer.context();
        for (&partition, &offset) in &from {
            if !ctx.assigned().contains(&partition) {
                continue; // revoked meanwhile: its next owner starts at the committed offset
            }
            let result = blocking(|| self.consumer.seek(&self.images, partition, Offset::Offset(offset), Duration::from_secs(10)));
            match result {
                Ok(()) => debug!(partition, offset, "rewound"),
                Err(e) => {
                    // Without the seek the records would be skipped: give the partition up
                    // instead, by leaving the decision to a fresh assignment.
                    error!(partition, offset, error = %e, "seek failed; re-reading from the committed offset after the next rebalance");
                }
            }
        }
    }

    async fn recreate_producer(&mut self, shutdown: &CancellationToken) -> Result<(), DetectorError> {
        let mut attempt = 0u32;
        loop {
            match create_producer(&self.producer_cfg, self.cfg.delivery, &self.transactional_id, self.timeout).await {
                Ok(p) => {
                    self.producer = p;
                    self.summary.producer_restarts += 1;
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

    /// The next offset to read per partition after this batch.
    fn next_offsets(&self, records: &[InputRecord]) -> TopicPartitionList {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for r in records {
            let e = next.entry(r.partition).or_insert(r.offset + 1);
            *e = (*e).max(r.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            let _ = tpl.add_partition_offset(&self.images, p, Offset::Offset(o));
        }
        tpl
    }

    /// Enqueues every output record; returns their delivery futures.
    async fn produce_all(&self, records: &[InputRecord], verdicts: &[Verdict]) -> Result<Vec<DeliveryFuture>, Failure> {
        let mut deliveries = Vec::with_capacity(records.len());
        for (record, verdict) in records.iter().zip(verdicts) {
            let (topic, key, payload, headers): (&str, Option<&[u8]>, Option<&[u8]>, OwnedHeaders) = match verdict {
                Verdict::Result { key, value, .. } => {
                    let parent = extract_context(Some(&owned_headers(&record.headers)));
                    let cx = start_span(
                        spans::IMAGES_PROCESS,
                        SpanKind::Consumer,
                        &parent,
                        vec![
                            KeyValue::new(attr::MESSAGING_OPERATION_TYPE, "process"),
                            KeyValue::new(attr::MESSAGING_DESTINATION_NAME, self.images.clone()),
                            KeyValue::new(attr::MESSAGING_DESTINATION_PARTITION_ID, record.partition.to_string()),
                            KeyValue::new(attr::MESSAGING_CONSUMER_GROUP_NAME, self.cfg.group_id.clone()),
                            KeyValue::new(attr::MESSAGING_KAFKA_OFFSET, record.offset),
                        ],
                    );
                    let headers = inject_context(&cx, OwnedHeaders::new());
                    cx.span().end();
                    (&self.detections, Some(key.as_bytes()), Some(value.as_slice()), headers)
                }
                Verdict::DeadLetter { kind, message } => {
                    let mut headers = owned_headers(&record.headers);
                    for (name, value) in error_headers(kind, message, record.partition, record.offset) {
                        headers = headers.insert(Header { key: name, value: Some(value.as_bytes()) });
                    }
                    (&self.dlq, record.key.as_deref(), record.payload.as_deref(), headers)
                }
            };
            let mut future_record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
            if let Some(key) = key {
                future_record = future_record.key(key);
            }
            if let Some(payload) = payload {
                future_record = future_record.payload(payload);
            }
            let mut attempts = 0;
            loop {
                match self.producer.send_result(future_record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back))
                        if attempts < 1000 =>
                    {
                        attempts += 1;
                        future_record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(failure("produce", &e)),
                }
            }
        }
        Ok(deliveries)
    }

    /// One transaction: results + dead letters + input offsets.
    async fn commit_transactional(&mut self, records: &[InputRecord], verdicts: &[Verdict]) -> Result<(), Failure> {
        if let Err(e) = self.producer.begin_transaction() {
            return Err(failure("begin_transaction", &e));
        }
        let result = self.transaction_body(records, verdicts).await;
        if let Err(Failure::Abort(_)) = &result {
            self.abort().await?;
        }
        result
    }

    async fn transaction_body(&self, records: &[InputRecord], verdicts: &[Verdict]) -> Result<(), Failure> {
        // Deliveries are settled by the commit (it flushes; a failed record fails the commit).
        let _deliveries = self.produce_all(records, verdicts).await?;
        let offsets = self.next_offsets(records);
        let Some(metadata) = self.consumer.group_metadata() else {
            return Err(Failure::Abort("no consumer group metadata (not in a group yet)".into()));
        };
        let timeout = self.timeout;
        let p = self.producer.clone();
        retry_call("send_offsets_to_transaction", move || p.send_offsets_to_transaction(&offsets, &metadata, timeout)).await?;
        let p = self.producer.clone();
        retry_call("commit_transaction", move || p.commit_transaction(timeout)).await
    }

    /// Aborts the open transaction; a failure to abort makes the producer unusable.
    async fn abort(&self) -> Result<(), Failure> {
        let p = self.producer.clone();
        let timeout = self.timeout;
        match retry_call("abort_transaction", move || p.abort_transaction(timeout)).await {
            Ok(()) => Ok(()),
            Err(Failure::Abort(reason) | Failure::Fatal(reason)) => Err(Failure::Fatal(reason)),
        }
    }

    /// Produce, wait for every delivery, then commit the offsets.
    async fn commit_at_least_once(&mut self, records: &[InputRecord], verdicts: &[Verdict]) -> Result<(), Failure> {
        let deliveries = self.produce_all(records, verdicts).await?;
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Failure::Abort(format!("delivery failed: {e}"))),
                Err(_) => return Err(Failure::Fatal("producer dropped a delivery".into())),
            }
        }
        let offsets = self.next_offsets(records);
        if let Err(e) = blocking(|| self.consumer.commit(&offsets, CommitMode::Sync)) {
            // The results are delivered; a lost commit only means these records may be
            // processed again (duplicates the sink drops).
            warn!(error = %e, "offset commit failed; the batch may be processed again");
        }
        Ok(())
    }

    fn trace(&self, records: &[InputRecord], verdicts: &[Verdict]) {
        for (record, verdict) in records.iter().zip(verdicts) {
            if let Verdict::DeadLetter { kind, message } = verdict {
                info!(partition = record.partition, offset = record.offset, kind, %message, "dead-lettered");
            }
        }
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

/// Runs a blocking transactional call, retrying it while librdkafka says it is
/// retriable (at most 5 times).
async fn retry_call<F>(what: &'static str, call: F) -> Result<(), Failure>
where
    F: Fn() -> rdkafka::error::KafkaResult<()> + Send + Sync + 'static,
{
    let call = std::sync::Arc::new(call);
    let mut attempt = 0u32;
    loop {
        let c = call.clone();
        let result = tokio::task::spawn_blocking(move || c())
            .await
            .map_err(|e| Failure::Fatal(format!("{what}: blocking task failed: {e}")))?;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if classify(&e) == ErrorClass::Retriable && attempt < 5 => {
                attempt += 1;
                warn!(attempt, error = %e, "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            }
            Err(e) => return Err(failure(what, &e)),
        }
    }
}

fn owned_headers(headers: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len() + 4), |h, (key, value)| {
        h.insert(Header { key, value: value.as_deref() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_override_config_keys() {
        let args = DetectArgs {
            backend: Some(Backend::Cpu),
            instance_id: Some("det-1".into()),
            delivery: Some(Delivery::AtLeastOnce),
        };
        assert_eq!(
            args.overrides(),
            vec![
                ("detector.backend", "cpu".to_string()),
                ("detector.instance_id", "det-1".to_string()),
                ("detector.delivery", "at-least-once".to_string()),
            ]
        );
        // The overrides load: the names and values are what the config layer accepts.
        let mut loader = Settings::loader().env(Default::default());
        for (k, v) in args.overrides() {
            loader = loader.set(k, v);
        }
        let settings = loader.load().unwrap();
        assert_eq!(settings.detector.delivery, Delivery::AtLeastOnce);
        assert_eq!(settings.detector.backend, Backend::Cpu);
        assert_eq!(settings.detector.instance_id.as_deref(), Some("det-1"));
    }

    #[test]
    fn transactional_settings_follow_the_mode() {
        let mut settings = Settings::default();
        let eos = producer_config(&settings, "vigil-detector-a");
        assert_eq!(eos.get("transactional.id"), Some("vigil-detector-a"));
        assert_eq!(eos.get("enable.idempotence"), Some("true"));
        assert_eq!(eos.get("acks"), Some("all"));
        settings.detector.delivery = Delivery::AtLeastOnce;
        let alo = producer_config(&settings, "x");
        assert_eq!(alo.get("transactional.id"), None);
        assert_eq!(alo.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn headers_round_trip() {
        let h = owned_headers(&[("traceparent".into(), Some(b"00-abc".to_vec())), ("null".into(), None)]);
        let got: Vec<(String, Option<Vec<u8>>)> =
            h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect();
        assert_eq!(got, vec![("traceparent".into(), Some(b"00-abc".to_vec())), ("null".into(), None)]);
    }
}

/// The detector loop against the in-memory broker, with a stand-in model (these tests
/// are about Kafka control flow; the product always runs NanoDet-g, which the
/// multi-process tests in `tests/` use).
#[cfg(test)]
mod loop_tests {
    use std::collections::HashSet;

    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::worker::preloaded;
    use super::worker::tests::{frame_bytes, png, FakeModel};
    use super::*;
    use crate::codec::DetectionResult;
    use crate::kafka::DevBroker;
    use crate::verify::read_topic_to_end;

    const GOOD: usize = 30;

    fn settings_for(broker: &DevBroker, delivery: Delivery) -> Settings {
        let mut s = Settings::default();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        s.kafka.bootstrap_servers = broker.bootstrap_servers().to_owned();
        s.kafka.topics.images.name = format!("images-{suffix}");
        s.kafka.topics.images.partitions = 3;
        s.kafka.topics.detections.name = format!("detections-{suffix}");
        s.kafka.topics.detections.partitions = 3;
        s.kafka.topics.dlq.name = format!("dlq-{suffix}");
        s.kafka.topics.dlq.partitions = 1;
        s.detector.group_id = format!("detector-{suffix}");
        s.detector.delivery = delivery;
        s.detector.session_timeout_ms = 6_000;
        s.detector.max_batch = 4;
        s.detector.max_wait_ms = 20;
        broker.create_topics(&s.kafka).unwrap();
        s
    }

    async fn produce_inputs(settings: &Settings) {
        produce_frames(settings, 0..GOOD, true).await;
    }

    async fn produce_frames(settings: &Settings, ids: std::ops::Range<usize>, junk: bool) {
        let producer: FutureProducer = idempotent_producer_config(&settings.kafka).create().unwrap();
        let topic = &settings.kafka.topics.images.name;
        for i in ids {
            let value = frame_bytes(&format!("frame-{i}"), png(8, 8, [0, 0, 255]));
            let key = format!("cam-{}", i % 3);
            producer.send(FutureRecord::to(topic).key(&key).payload(&value), Duration::from_secs(10)).await.unwrap();
        }
        if junk {
            let junk = b"not avro at all".to_vec();
            producer.send(FutureRecord::to(topic).key("junk").payload(&junk), Duration::from_secs(10)).await.unwrap();
        }
    }

    /// Distinct frame ids in `detections`, distinct sources in the DLQ.
    fn outputs(settings: &Settings) -> (HashSet<String>, HashSet<String>) {
        let stop = CancellationToken::new();
        let mut results = HashSet::new();
        let _ = read_topic_to_end(&settings.kafka, &settings.kafka.topics.detections.name, Duration::from_secs(10), &stop, |m| {
            results.insert(DetectionResult::decode(m.payload().unwrap()).unwrap().frame_id);
        });
        let mut dead = HashSet::new();
        let _ = read_topic_to_end(&settings.kafka, &settings.kafka.topics.dlq.name, Duration::from_secs(10), &stop, |m| {
            let h = m.headers().unwrap();
            let kind = h.iter().find(|h| h.key == "vigil.error.kind").and_then(|h| h.value).unwrap();
            assert_eq!(kind, b"not_avro");
            assert_eq!(m.payload(), Some(&b"not avro at all"[..]), "original bytes");
            let offset = h.iter().find(|h| h.key == "vigil.source.offset").and_then(|h| h.value).unwrap();
            dead.insert(String::from_utf8_lossy(offset).into_owned());
        });
        (results, dead)
    }

    /// Runs a detector until every input has an output (or `timeout`), then stops it.
    async fn run_until_done(settings: &Settings, timeout: Duration) -> DetectSummary {
        run_until(settings, GOOD, timeout).await
    }

    /// Runs a detector until `detections` holds `results` distinct frames and the DLQ one
    /// dead letter (or `timeout`), then stops it.
    async fn run_until(settings: &Settings, expected: usize, timeout: Duration) -> DetectSummary {
        let worker = ModelWorker::start(preloaded(Box::new(FakeModel { calls: 0 })), input_limits(&settings.detector))
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let task = {
            let settings = settings.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { run_with_model(&settings, worker, shutdown).await })
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let s = settings.clone();
            let (results, dead) = tokio::task::spawn_blocking(move || outputs(&s)).await.unwrap();
            if results.len() == expected && dead.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        shutdown.cancel();
        task.await.unwrap().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_once_commits_results_dead_letters_and_offsets() {
        let broker = DevBroker::start(1).unwrap();
        broker.group_initial_rebalance_delay(Duration::ZERO);
        let settings = settings_for(&broker, Delivery::ExactlyOnce);
        produce_inputs(&settings).await;
        let summary = run_until_done(&settings, Duration::from_secs(60)).await;
        let (results, dead) = outputs(&settings);
        assert_eq!((results.len(), dead.len()), (GOOD, 1), "{summary:?}");
        assert_eq!((summary.results, summary.dead_letters, summary.aborts), (GOOD as u64, 1, 0), "{summary:?}");
        assert!(summary.instance_id.starts_with(&settings.detector.group_id), "transactional.id: {summary:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_least_once_commits_offsets_so_a_restart_redoes_nothing() {
        let broker = DevBroker::start(1).unwrap();
        broker.group_initial_rebalance_delay(Duration::ZERO);
        let settings = settings_for(&broker, Delivery::AtLeastOnce);
        produce_inputs(&settings).await;
        let first = run_until_done(&settings, Duration::from_secs(60)).await;
        assert_eq!((first.results, first.dead_letters), (GOOD as u64, 1), "{first:?}");
        // Same group again, one new frame: the committed offsets are where the first run
        // ended, so only the new frame is processed.
        produce_frames(&settings, GOOD..GOOD + 1, false).await;
        let second = run_until(&settings, GOOD + 1, Duration::from_secs(60)).await;
        assert_eq!((second.results, second.dead_letters), (1, 0), "{second:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn injected_errors_abort_rewind_and_redo() {
        let broker = DevBroker::start(1).unwrap();
        broker.group_initial_rebalance_delay(Duration::ZERO);
        let settings = settings_for(&broker, Delivery::ExactlyOnce);
        produce_inputs(&settings).await;
        // A produce request of the first transaction fails permanently (abort), and so
        // does an offsets commit (abort): each batch is redone and committed once.
        broker.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]);
        broker.request_errors(RDKafkaApiKey::TxnOffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED]);
        let summary = run_until_done(&settings, Duration::from_secs(90)).await;
        let (results, dead) = outputs(&settings);
        assert_eq!((results.len(), dead.len()), (GOOD, 1), "{summary:?}");
        assert!(summary.aborts >= 2, "{summary:?}");
        assert_eq!(summary.results, GOOD as u64, "each frame committed once: {summary:?}");
    }
}
