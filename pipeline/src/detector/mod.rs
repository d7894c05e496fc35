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
//! in the model finish and commit, then leaves the group, all within
//! `detector.shutdown_timeout_ms`: past it with a batch unfinished (a broker that is gone)
//! the worker stops waiting and fails with [`DetectorError::ShutdownTimeout`]; what it did
//! not commit is read again by the partitions' next owner. A clean drain whose group leave
//! outlasts the deadline only logs it (everything is committed). The loop is given up a little before the
//! deadline, and the time left aborts a transaction it may have left open (best effort),
//! so that `read_committed` readers need not wait for `transaction.timeout.ms`.
//!
//! A static member fenced by the broker (`FencedInstanceId`: librdkafka makes the consumer
//! unusable, also after the member's own rejoin following a session timeout) rejoins with
//! a new consumer; a fourth fence within 5 minutes means another worker runs under the
//! same instance id, and the worker stops with [`DetectorError::InstanceFenced`].
//!
//! A failing model backend (see `judge`) is not bad input: nothing is committed, the
//! worker is not ready ([`Health`]) and retries, and stops after
//! `detector.backend_failure_limit_ms`.
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

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::{Delivery, DetectorConfig, GroupProtocol};
pub use error::DetectorError;
pub use model_thread::ModelThread;

use self::batch_loop::BatchLoop;
use self::context::DetectorContext;
use self::output::Destinations;
use self::transaction::Committer;
use crate::health::Health;
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
    /// New consumers created after the static member was fenced (`FencedInstanceId`).
    pub rejoins: u64,
}

/// Runs a detector worker with a started model thread until `shutdown`, then commits the
/// batch in the model and leaves the group (within `detector.shutdown_timeout_ms`).
pub async fn run(
    settings: &Settings,
    model: ModelThread,
    shutdown: CancellationToken,
) -> Result<DetectorSummary, DetectorError> {
    run_with_health(settings, model, shutdown, Health::new()).await
}

/// [`run`], keeping `health` up to date for whoever serves it.
pub async fn run_with_health(
    settings: &Settings,
    model: ModelThread,
    shutdown: CancellationToken,
    health: Health,
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
    let detections = kafka.topics.detections.name.as_str();
    crate::kafka::use_schema_registry(kafka, &[(crate::codec::RecordType::DetectionResult, detections)]).await?;
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
    let mut committer = Committer::create(settings, &transactional_id, shutdown.clone()).await?;
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

    let mut dest = Destinations::new(settings).await;
    let mut summary = DetectorSummary {
        instance_id: if cfg.delivery == Delivery::ExactlyOnce { transactional_id } else { instance.clone() },
        delivery: cfg.delivery.to_string(),
        ..DetectorSummary::default()
    };
    let deadline = StopDeadline::start(&shutdown, cfg.shutdown_timeout());
    let mut rejoins = Rejoins::default();
    let (result, consumer) = loop {
        let consumer: StreamConsumer<DetectorContext> = consumer_cfg
            .create_with_context(DetectorContext::new(&topics.images.name, health.clone()))
            .map_err(|cause| DetectorError::Client { role: "consumer", cause })?;
        consumer.subscribe(&[&topics.images.name]).map_err(DetectorError::Consumer)?;
        let mut batch_loop = BatchLoop::new(cfg, &consumer, committer, &model, dest, summary, health.clone());
        let result = tokio::select! {
            result = batch_loop.run(&shutdown) => result,
            () = deadline.expired.cancelled() => {
                warn!(timeout_ms = cfg.shutdown_timeout_ms, "shutdown timed out with a batch in flight; leaving it uncommitted");
                Err(DetectorError::ShutdownTimeout {
                    timeout_ms: cfg.shutdown_timeout_ms,
                    waiting_for: "finishing the batch in flight",
                })
            }
        };
        health.set_not_ready("stopping");
        if matches!(result, Err(DetectorError::ShutdownTimeout { .. })) {
            batch_loop.committer.abort_left_open(deadline.at()).await;
        }
        BatchLoop { committer, dest, summary, .. } = batch_loop;
        summary.rebalances += consumer.context().rebalances();
        let Some(cause) = instance_fenced(cfg, &consumer, &result) else {
            break (result, consumer);
        };
        if shutdown.is_cancelled() {
            break (result, consumer);
        }
        if !rejoins.allow(std::time::Instant::now()) {
            let times = REJOIN_LIMIT + 1;
            error!(%instance, times, "static member fenced again and again; stopping");
            break (Err(DetectorError::InstanceFenced { instance: instance.clone(), times, cause }), consumer);
        }
        // librdkafka makes a fenced static member's consumer unusable (a fatal error), also
        // when what fenced it was its own rejoin after a session timeout (librdkafka #3437).
        // Nothing of the loop's batch is committed: a new consumer joins under the same
        // group.instance.id, takes the membership back and reads from the committed offsets.
        warn!(%instance, error = %cause, "static member fenced (FencedInstanceId); rejoining the group with a new consumer");
        summary.rejoins += 1;
        health.set_not_ready("rejoining the consumer group");
        drop_until(consumer, Instant::now() + REJOIN_CLOSE_TIMEOUT).await;
    };
    // Leave the group now (revocation runs in the close), then let the producer and the
    // model go; each on a thread of its own, waited for until the deadline only (closing
    // a consumer whose broker is gone blocks).
    let left = drop_until(consumer, deadline.at()).await;
    let flushed = tokio::time::timeout_at(deadline.at(), committer.flush()).await.is_ok();
    let released = drop_until(committer, deadline.at()).await && drop_until(model, deadline.at()).await;
    if !(left && flushed && released) {
        // After a clean drain every batch is committed: a close that outlasts the deadline
        // (a broker gone; a cooperative rebalance still running, seen on a real cluster)
        // loses nothing, so the exit stays clean; the partitions move when the session
        // times out.
        let waiting_for = if left { "flushing the producer" } else { "leaving the consumer group" };
        warn!(
            timeout_ms = cfg.shutdown_timeout_ms,
            waiting_for,
            drained = result.is_ok(),
            "shutdown timed out; not waiting any longer"
        );
    }
    info!(
        batches = summary.batches,
        results = summary.results,
        dead_letters = summary.dead_letters,
        aborts = summary.aborts,
        producer_restarts = summary.producer_restarts,
        dropped_on_rebalance = summary.dropped_on_rebalance,
        rejoins = summary.rejoins,
        "detector stopped"
    );
    result.map(|()| summary)
}

/// Rejoins after `FencedInstanceId` allowed within [`REJOIN_WINDOW`]; one more stops the
/// worker. A member fenced by its own rejoin needs one; two workers running with the same
/// instance id would fence each other without end.
const REJOIN_LIMIT: u64 = 3;
const REJOIN_WINDOW: Duration = Duration::from_secs(300);
/// Longest wait for a fenced consumer to close before the new one joins.
const REJOIN_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Recent rejoins, to tell a one-off fence from two workers sharing an instance id.
#[derive(Debug, Default)]
struct Rejoins(std::collections::VecDeque<std::time::Instant>);

impl Rejoins {
    /// Whether one more rejoin at `now` stays within [`REJOIN_LIMIT`] per [`REJOIN_WINDOW`].
    fn allow(&mut self, now: std::time::Instant) -> bool {
        while self.0.front().is_some_and(|t| now.duration_since(*t) >= REJOIN_WINDOW) {
            self.0.pop_front();
        }
        if self.0.len() as u64 >= REJOIN_LIMIT {
            return false;
        }
        self.0.push_back(now);
        true
    }
}

/// The consumer's error when the loop stopped because this static member was fenced
/// (`FencedInstanceId`, which librdkafka raises as a fatal consumer error).
fn instance_fenced(
    cfg: &DetectorConfig,
    consumer: &StreamConsumer<DetectorContext>,
    result: &Result<(), DetectorError>,
) -> Option<rdkafka::error::KafkaError> {
    use rdkafka::types::RDKafkaErrorCode::FencedInstanceId;
    let Err(DetectorError::Consumer(e)) = result else { return None };
    let fenced = e.rdkafka_error_code() == Some(FencedInstanceId)
        || consumer.client().fatal_error().is_some_and(|(code, _)| code == FencedInstanceId);
    (cfg.static_membership && fenced).then(|| e.clone())
}

/// Time kept from `detector.shutdown_timeout_ms` to abort a transaction the loop left open.
const ABORT_RESERVE: Duration = Duration::from_secs(1);

/// When a stopping worker gives up waiting: `limit` after shutdown was asked (measured
/// on a task of its own, so that a loop busy in a blocking call does not delay it).
struct StopDeadline {
    asked: std::sync::Arc<std::sync::OnceLock<Instant>>,
    /// Cancelled [`ABORT_RESERVE`] (at most a quarter of the limit) before the deadline:
    /// the loop is given up then, leaving that time to abort a transaction left open.
    expired: CancellationToken,
    limit: Duration,
    watchdog: tokio::task::JoinHandle<()>,
}

impl StopDeadline {
    fn start(shutdown: &CancellationToken, limit: Duration) -> Self {
        let asked = std::sync::Arc::new(std::sync::OnceLock::new());
        let expired = CancellationToken::new();
        let watchdog = tokio::spawn({
            let (shutdown, asked, expired) = (shutdown.clone(), asked.clone(), expired.clone());
            async move {
                shutdown.cancelled().await;
                let at = *asked.get_or_init(Instant::now) + limit - ABORT_RESERVE.min(limit / 4);
                tokio::time::sleep_until(at).await;
                expired.cancel();
            }
        });
        StopDeadline { asked, expired, limit, watchdog }
    }

    /// The deadline: `limit` after shutdown was asked or, when the loop ended on its own
    /// (an error), after now.
    fn at(&self) -> Instant {
        *self.asked.get_or_init(Instant::now) + self.limit
    }
}

impl Drop for StopDeadline {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

/// Drops `value` on a thread of its own and waits for that until `deadline`; whether it
/// was done by then. Past the deadline the thread is left to finish (or to end with the
/// process).
async fn drop_until<T: Send + 'static>(value: T, deadline: Instant) -> bool {
    let (done, finished) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("vigil-detector-close".into()).spawn(move || {
        drop(value);
        done.send(()).ok();
    });
    match spawned {
        Ok(_) => tokio::time::timeout_at(deadline, finished).await.is_ok(),
        Err(e) => {
            warn!(error = %e, "cannot start a thread to close a Kafka client; not waiting for it");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoins_are_limited_per_window() {
        let mut rejoins = Rejoins::default();
        let t0 = std::time::Instant::now();
        for i in 0..REJOIN_LIMIT {
            assert!(rejoins.allow(t0 + Duration::from_secs(i)), "rejoin {i} is allowed");
        }
        assert!(!rejoins.allow(t0 + Duration::from_secs(60)), "one more within the window stops the worker");
        // Once the first has left the window, one more fits.
        assert!(rejoins.allow(t0 + REJOIN_WINDOW));
        assert!(!rejoins.allow(t0 + REJOIN_WINDOW), "the next two are still within it");
    }
}
