//! The detector stage: a consumer group on `images`, dynamic batches through the model,
//! one Kafka transaction per batch to `detections` (and `images.dlq`).
//!
//! Files by role:
//! - `batch_loop`: the async loop (`select!` over the consumer, the batch deadline, the
//!   model's answer and the shutdown token) and its phases;
//! - `batcher`: which records wait for the model, when a batch is due, pausing;
//! - `model_thread` and `judge`: Avro and image decoding and inference off the async
//!   runtime, one verdict (result or dead letter) per record;
//! - `transaction`: committing a batch exactly-once (a Kafka transaction holding the
//!   outputs and the input offsets) or at-least-once;
//! - `output`: the output records and their headers;
//! - `context`: partition ownership epochs across rebalances.
//!
//! Rebalances never meet an open transaction (see `context`); results of revoked
//! partitions still in the model are dropped. Shutdown (SIGTERM, Ctrl-C) lets the batch
//! in the model finish and commit, then leaves the group.
//!
//! Bad input never stops a partition: oversized, non-Avro, unknown-schema, empty,
//! undecodable or too-large images go to the dead-letter topic with their original
//! bytes, key and headers plus `vigil.error.*` headers, in the same transaction as the
//! offsets. `at-least-once` delivery exists for brokers whose transactional offsets do
//! not work (the in-memory broker, see `docs/architecture.md`); it is never the default.

mod batch_loop;
mod batcher;
mod config;
mod context;
mod error;
mod failpoint;
mod judge;
mod model_thread;
mod output;
mod overload;
mod transaction;

#[cfg(test)]
mod loop_tests;
#[cfg(test)]
mod overload_tests;
#[cfg(test)]
mod test_support;

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{Delivery, DetectorConfig, GroupProtocol};
pub use error::DetectorError;
pub use model_thread::ModelThread;

use self::batch_loop::BatchLoop;
use self::context::DetectorContext;
use self::output::Destinations;
use self::transaction::Committer;
use crate::kafka::{consumer_config, ensure_topics};
use crate::settings::Settings;

/// What a detector run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DetectorSummary {
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

/// Runs a detector worker with a started model thread until `shutdown`, then commits the
/// batch in the model and leaves the group.
pub async fn run(
    settings: &Settings,
    model: ModelThread,
    shutdown: CancellationToken,
) -> Result<DetectorSummary, DetectorError> {
    let cfg = &settings.detector;
    let kafka = &settings.kafka;
    if cfg.max_record_bytes as u64 > u64::from(kafka.max_message_bytes) {
        return Err(DetectorError::Config {
            key: "detector.max_record_bytes",
            reason: format!(
                "{} exceeds kafka.max_message_bytes ({}): such records could not even be dead-lettered",
                cfg.max_record_bytes, kafka.max_message_bytes
            ),
        });
    }
    if cfg.static_membership && cfg.instance_id.is_none() {
        // Checked here, not with the settings: one file serves every stage, and the
        // instance id usually comes per worker (--instance-id, the pod name).
        return Err(DetectorError::Config {
            key: "detector.static_membership",
            reason: "needs an instance id (--instance-id or detector.instance_id): the static member's name".into(),
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
    cfg.apply_group_protocol(&mut consumer_cfg, &instance);
    let consumer: StreamConsumer<DetectorContext> = consumer_cfg
        .create_with_context(DetectorContext::new(&topics.images.name))
        .map_err(|cause| DetectorError::Client { role: "consumer", cause })?;
    let committer = Committer::create(settings, &transactional_id, shutdown.clone()).await?;
    consumer.subscribe(&[&topics.images.name]).map_err(DetectorError::Consumer)?;
    info!(
        group = %cfg.group_id,
        instance = %instance,
        %transactional_id,
        delivery = %cfg.delivery,
        group_protocol = ?cfg.group_protocol,
        static_membership = cfg.static_membership,
        model = %model.model_name(),
        max_batch = cfg.max_batch,
        max_wait_ms = cfg.max_wait_ms,
        "detector started"
    );

    let dest = Destinations {
        images: topics.images.name.clone(),
        detections: topics.detections.name.clone(),
        dlq: topics.dlq.name.clone(),
        group_id: cfg.group_id.clone(),
    };
    let summary = DetectorSummary {
        instance_id: if cfg.delivery == Delivery::ExactlyOnce { transactional_id } else { instance },
        delivery: cfg.delivery.to_string(),
        ..DetectorSummary::default()
    };
    let mut batch_loop = BatchLoop::new(cfg, &consumer, committer, &model, dest, summary);
    let result = batch_loop.run(&shutdown).await;
    let BatchLoop { mut summary, committer, .. } = batch_loop;
    summary.rebalances = consumer.context().rebalances();
    // Leave the group now (revocation runs in the close), then let the producer go.
    drop(consumer);
    committer.flush().await;
    drop(model);
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
