//! Detector configuration (the `[detector]` section).

use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::model::{Backend, DecodeLimits};

/// How the detector hands results downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// One Kafka transaction per batch: results, dead letters and input offsets commit
    /// together (`send_offsets_to_transaction`); readers use `read_committed`.
    #[default]
    ExactlyOnce,
    /// Produce results, wait for delivery, then commit input offsets: a crash between the
    /// two re-processes the batch (duplicates, never loss); the sink de-duplicates on
    /// `frame_id`. For brokers without working transactional offsets (the mock).
    AtLeastOnce,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Delivery::ExactlyOnce => "exactly-once",
            Delivery::AtLeastOnce => "at-least-once",
        })
    }
}

/// How the detector group moves partitions between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupProtocol {
    /// Classic protocol with librdkafka's eager assignors (`range,roundrobin`): every
    /// rebalance revokes all partitions of every member, then assigns anew.
    #[default]
    Eager,
    /// Classic protocol, `cooperative-sticky`: only the partitions that move are revoked;
    /// the others keep working through the rebalance.
    CooperativeSticky,
    /// KIP-848's protocol (`group.protocol=consumer`): the broker computes incremental
    /// assignments. The session timeout is then the broker's
    /// `group.consumer.session.timeout.ms`; `session_timeout_ms` does not apply.
    Consumer,
}

/// The detect stage: consumer group on `images`, batches, model, results to `detections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Consumer group shared by all detector workers.
    pub group_id: String,
    /// Worker name; derives `transactional.id` (`<group_id>-<instance_id>`). Unset: a fresh
    /// unique id per start (workers never fence each other). Set it to a stable per-pod name
    /// (e.g. the StatefulSet pod name) so a restart fences and aborts its predecessor's open
    /// transaction at once.
    pub instance_id: Option<String>,
    /// `eager`, `cooperative-sticky` or `consumer` (KIP-848); see [`GroupProtocol`].
    pub group_protocol: GroupProtocol,
    /// Static membership: `group.instance.id` = `instance_id` (which must then be set). A
    /// restart within the session timeout gets its partitions back without a rebalance; a
    /// stopped worker's partitions wait for the session timeout before they move.
    pub static_membership: bool,
    /// Where the model runs: `auto` (GPU through wgpu if present, else CPU), `wgpu`, `cpu`.
    pub backend: Backend,
    /// `exactly-once` (transactions) or `at-least-once` (see [`Delivery`]).
    pub delivery: Delivery,
    /// Most frames per inference batch.
    pub max_batch: usize,
    /// Longest wait for a batch to fill after its first frame arrived, milliseconds, while
    /// more keep arriving: a batch goes as soon as the consumer has nothing more to give.
    pub max_wait_ms: u64,
    /// Kafka `transaction.timeout.ms`, milliseconds. A transaction spans only producing a
    /// finished batch's outputs and committing (inference happens before it begins), so a
    /// few seconds are ample; keep it at least twice the slowest produce-and-commit. It is
    /// also how long the broker keeps a dead worker's open transaction, which holds back
    /// the partitions' next owner and every read_committed reader (the sink).
    pub transaction_timeout_ms: u64,
    /// Kafka `session.timeout.ms` of the consumer: how soon a dead worker's partitions move
    /// (the bound on failover after a kill -9, docs/reliability.md). The default is the
    /// lowest a stock broker accepts (`group.min.session.timeout.ms`, 6 s); 3 s halves the
    /// failover again where the brokers allow it. Heartbeats go every third of it.
    pub session_timeout_ms: u64,
    /// Kafka `max.poll.interval.ms`: longest gap between polls before the worker is evicted.
    pub max_poll_interval_ms: u64,
    /// How long the model backend may keep failing (every batch, and a known-good probe
    /// image, fail: a lost or broken device) before the worker exits 1, milliseconds.
    /// Meanwhile it commits nothing, says it is not ready and retries the batch with
    /// backoff; after the exit a restart, or another worker, takes the partitions.
    pub backend_failure_limit_ms: u64,
    /// Longest wait, after SIGTERM or Ctrl-C, for the batch in flight to commit (or abort)
    /// and for the consumer to leave the group, milliseconds. Past it the worker exits 1
    /// without waiting further (a broker that is gone): the uncommitted batch is read
    /// again by the partitions' next owner.
    pub shutdown_timeout_ms: u64,
    /// Records larger than this go to the dead-letter topic undecoded, bytes.
    pub max_record_bytes: usize,
    /// Image decoding limits (decompression-bomb guard) applied before any pixel is decoded.
    pub decode: DecodeLimits,
    /// A record whose Kafka timestamp is older than this when its batch reaches the model
    /// is dead-lettered as `expired` instead of inferred, milliseconds; 0: off. For live
    /// cameras; keep it off for replays and backfills (see `overload`).
    pub max_frame_age_ms: u64,
    /// Most records of one source (record key) inferred per batch: the oldest extras are
    /// dead-lettered as `shed`, so one busy camera cannot crowd the others out; 0: off.
    pub max_frames_per_source: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            group_id: "vigil-detector".into(),
            instance_id: None,
            group_protocol: GroupProtocol::Eager,
            static_membership: false,
            backend: Backend::Auto,
            delivery: Delivery::ExactlyOnce,
            max_batch: 8,
            max_wait_ms: 50,
            transaction_timeout_ms: 10_000,
            session_timeout_ms: 6_000,
            max_poll_interval_ms: 300_000,
            backend_failure_limit_ms: 60_000,
            shutdown_timeout_ms: 10_000,
            max_record_bytes: 20 * 1024 * 1024,
            decode: DecodeLimits::default(),
            max_frame_age_ms: 0,
            max_frames_per_source: 0,
        }
    }
}

impl DetectorConfig {
    /// Sets the group protocol's consumer properties (`instance`: this worker's name).
    pub(crate) fn apply_group_protocol(&self, config: &mut ClientConfig, instance: &str) {
        match self.group_protocol {
            GroupProtocol::Eager => {}
            GroupProtocol::CooperativeSticky => {
                config.set("partition.assignment.strategy", "cooperative-sticky");
            }
            GroupProtocol::Consumer => {
                // librdkafka refuses classic-only properties with the consumer protocol.
                config.set("group.protocol", "consumer").remove("session.timeout.ms").remove("heartbeat.interval.ms");
            }
        }
        if self.static_membership {
            config.set("group.instance.id", instance);
        }
    }

    /// `backend_failure_limit_ms` as a duration.
    pub fn backend_failure_limit(&self) -> Duration {
        Duration::from_millis(self.backend_failure_limit_ms)
    }

    /// `shutdown_timeout_ms` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// `max_wait_ms` as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// Checks values and their relations; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.group_id.trim().is_empty() {
            return Err(("detector.group_id", "must not be empty".into()));
        }
        if let Some(id) = &self.instance_id {
            if id.trim().is_empty() || id.chars().any(char::is_whitespace) {
                return Err(("detector.instance_id", format!("{id:?} must be non-empty, without whitespace")));
            }
        }
        if !(1..=4096).contains(&self.max_batch) {
            return Err(("detector.max_batch", format!("{} is outside 1..=4096", self.max_batch)));
        }
        if self.session_timeout_ms < 1_000 {
            return Err(("detector.session_timeout_ms", format!("{} is below 1000", self.session_timeout_ms)));
        }
        if self.max_poll_interval_ms < self.session_timeout_ms {
            return Err((
                "detector.max_poll_interval_ms",
                format!(
                    "{} must be >= detector.session_timeout_ms ({})",
                    self.max_poll_interval_ms, self.session_timeout_ms
                ),
            ));
        }
        if self.transaction_timeout_ms <= self.max_wait_ms {
            return Err((
                "detector.transaction_timeout_ms",
                format!("{} must exceed detector.max_wait_ms ({})", self.transaction_timeout_ms, self.max_wait_ms),
            ));
        }
        if self.backend_failure_limit_ms == 0 {
            return Err(("detector.backend_failure_limit_ms", "must be > 0".into()));
        }
        if self.shutdown_timeout_ms == 0 {
            return Err(("detector.shutdown_timeout_ms", "must be > 0".into()));
        }
        if self.max_record_bytes == 0 {
            return Err(("detector.max_record_bytes", "must be > 0".into()));
        }
        if self.decode.max_dimension_px == 0 || self.decode.max_pixels == 0 || self.decode.max_alloc_bytes == 0 {
            return Err(("detector.decode", "limits must be > 0".into()));
        }
        // The overload verdicts depend on the clock and on the batch a frame is in, and
        // at-least-once redoes delivered work: a redo could give a frame that already has a
        // result an `expired` or `shed` dead letter too (or the other way round).
        if self.delivery == Delivery::AtLeastOnce && (self.max_frame_age_ms > 0 || self.max_frames_per_source > 0) {
            let key =
                if self.max_frame_age_ms > 0 { "detector.max_frame_age_ms" } else { "detector.max_frames_per_source" };
            return Err((
                key,
                "detector.max_frame_age_ms and detector.max_frames_per_source need detector.delivery = \"exactly-once\": \
                 with at-least-once a batch redone after a failure may judge a frame differently (the clock moved on, \
                 the batch holds other frames) and give it both a result and a dead letter"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer_settings(cfg: &DetectorConfig) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("session.timeout.ms", "6000");
        cfg.apply_group_protocol(&mut config, "pod-0");
        config
    }

    /// At-least-once redoes delivered work, and the overload verdicts depend on the clock and
    /// the batch: one frame could get a result and a dead letter.
    #[test]
    fn overload_policies_need_exactly_once() {
        for (age, per_source) in [(1_000, 0), (0, 2)] {
            let mut cfg =
                DetectorConfig { max_frame_age_ms: age, max_frames_per_source: per_source, ..Default::default() };
            assert_eq!(cfg.validate(), Ok(()), "exactly-once (the default)");
            cfg.delivery = Delivery::AtLeastOnce;
            let (key, message) = cfg.validate().expect_err("refused with at-least-once");
            assert!(key.starts_with("detector.max_frame"), "{key}");
            for named in ["max_frame_age_ms", "max_frames_per_source", "at-least-once", "exactly-once"] {
                assert!(message.contains(named) || key.contains(named), "{key}: {message}");
            }
        }
        let alo = DetectorConfig { delivery: Delivery::AtLeastOnce, ..Default::default() };
        assert_eq!(alo.validate(), Ok(()), "both off: at-least-once is fine");
    }

    #[test]
    fn group_protocols_set_their_properties() {
        let mut cfg = DetectorConfig::default();
        let eager = consumer_settings(&cfg);
        assert_eq!((eager.get("partition.assignment.strategy"), eager.get("group.protocol")), (None, None));
        cfg.group_protocol = GroupProtocol::CooperativeSticky;
        assert_eq!(consumer_settings(&cfg).get("partition.assignment.strategy"), Some("cooperative-sticky"));
        cfg.group_protocol = GroupProtocol::Consumer;
        let kip848 = consumer_settings(&cfg);
        assert_eq!(kip848.get("group.protocol"), Some("consumer"));
        assert_eq!(kip848.get("session.timeout.ms"), None, "librdkafka refuses it with the consumer protocol");
        assert_eq!(kip848.get("heartbeat.interval.ms"), None, "the broker sets it with the consumer protocol");
        assert_eq!(kip848.get("group.instance.id"), None);
        cfg.static_membership = true;
        assert_eq!(consumer_settings(&cfg).get("group.instance.id"), Some("pod-0"));
    }
}
