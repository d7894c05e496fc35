//! The in-memory dev/test broker: librdkafka's mock cluster, driven through rdkafka's safe
//! [`MockCluster`] (its gaps: no CreateTopics, transactional offsets not stored, no
//! read_committed filtering, partitions that delete their oldest records beyond 5 MiB, read
//! or not, which the producer guards against in `producer/backpressure.rs`; see
//! docs/architecture.md, "The in-memory broker (librdkafka's mock) and its gaps").
//!
//! [`DevBroker`] owns the cluster for as long as it lives (keep it alive for the process
//! lifetime in `vigil broker` / `vigil up`), creates topics through the mock's own API,
//! and exposes the fault-injection knobs tests need (`faults`). With a fixed port, each
//! broker is reached through a TCP forwarder on `host:port+i` and advertised there
//! (`forward`), so the bootstrap list is stable across runs. The two settings
//! [`MockCluster`] has no method for go through librdkafka's C API (`raw`, the only
//! unsafe code here).

mod faults;
mod forward;
mod raw;

use std::time::Duration;

use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaType;
use rdkafka::ClientConfig;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use self::raw::RawCluster;
use super::{KafkaConfig, KafkaPlumbingError, TopicConfig};

/// How to start a [`DevBroker`].
#[derive(Debug, Clone)]
pub struct DevBrokerOptions {
    /// Number of brokers (ids 1..=brokers).
    pub brokers: i32,
    /// First fixed port (broker i listens on `port + i - 1`); `None`: random ports.
    pub port: Option<u16>,
    /// Host the fixed-port forwarders bind to and advertise (only with `port`).
    pub host: String,
}

impl Default for DevBrokerOptions {
    fn default() -> Self {
        Self { brokers: 3, port: None, host: "127.0.0.1".into() }
    }
}

/// A running in-memory Kafka cluster. Dropping it shuts the cluster down.
pub struct DevBroker {
    brokers: i32,
    bootstrap: String,
    forwarders: Vec<JoinHandle<()>>,
    // The librdkafka handle the cluster runs in: created with `test.mock.num.brokers`, it
    // creates the cluster and destroys it when it drops (after `Drop` stopped the forwarders).
    owner: Client<OwnerContext>,
}

/// The owner handle's context. The handle keeps one idle connection to its cluster (librdkafka
/// keeps at least one per handle), so its own connection errors (while brokers are down) and
/// the "mock cluster enabled" notice are debug output; the cluster's warnings and errors keep
/// their level.
struct OwnerContext;

impl ClientContext for OwnerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "MOCK" && level as i32 <= RDKafkaLogLevel::Warning as i32 {
            DefaultClientContext.log(level, fac, log_message);
        } else {
            debug!(?level, fac, "librdkafka (mock cluster owner): {log_message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(%error, "librdkafka (mock cluster owner): {reason}");
    }
}

impl DevBroker {
    /// Starts `brokers` brokers on random loopback ports.
    pub fn start(brokers: i32) -> Result<DevBroker, KafkaPlumbingError> {
        if !(1..=64).contains(&brokers) {
            return Err(KafkaPlumbingError::Mock {
                what: format!("{brokers} brokers (1..=64)"),
                cause: KafkaError::MockCluster(RDKafkaErrorCode::InvalidArgument),
            });
        }
        let mut config = ClientConfig::new();
        config.set("test.mock.num.brokers", brokers.to_string());
        let native = config
            .create_native_config()
            .map_err(|cause| KafkaPlumbingError::Mock { what: "client config".into(), cause })?;
        let owner = Client::new(&config, native, RDKafkaType::RD_KAFKA_PRODUCER, OwnerContext)
            .map_err(|cause| KafkaPlumbingError::Mock { what: "client".into(), cause })?;
        let Some(cluster) = owner.mock_cluster() else {
            return Err(KafkaPlumbingError::Mock {
                what: "rd_kafka_mock_cluster_new".into(),
                cause: KafkaError::MockCluster(RDKafkaErrorCode::Fail),
            });
        };
        let bootstrap = cluster.bootstrap_servers();
        drop(cluster);
        info!(%bootstrap, brokers, "in-memory Kafka cluster started");
        Ok(DevBroker { brokers, bootstrap, forwarders: Vec::new(), owner })
    }

    /// The cluster at `bootstrap` or, without one, `brokers` embedded brokers started
    /// here, where groups form at once (no initial rebalance delay): the broker to keep
    /// alive (if any) and the bootstrap list to use. For tools that run stages as child
    /// processes on either (`vigil chaos`, `vigil bench pipeline`).
    pub(crate) fn unless_cluster(
        bootstrap: Option<&str>,
        brokers: i32,
    ) -> Result<(Option<DevBroker>, String), KafkaPlumbingError> {
        if let Some(bootstrap) = bootstrap {
            return Ok((None, bootstrap.to_string()));
        }
        let broker = DevBroker::start(brokers)?;
        broker.group_initial_rebalance_delay(Duration::ZERO);
        let bootstrap = broker.bootstrap_servers().to_string();
        Ok((Some(broker), bootstrap))
    }

    /// Starts a cluster per `options`; with a fixed port, binds the forwarders (needs a
    /// Tokio runtime) and advertises them, so clients only ever see `host:port..`.
    pub async fn start_with(options: &DevBrokerOptions) -> Result<DevBroker, KafkaPlumbingError> {
        let mut broker = DevBroker::start(options.brokers)?;
        if let Some(first_port) = options.port {
            broker.forward_from(&options.host, first_port).await?;
        }
        Ok(broker)
    }

    /// The `bootstrap.servers` list clients should use.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (replication factor -1 becomes min(3, brokers)).
    pub fn create_topic(&self, topic: &TopicConfig) -> Result<(), KafkaPlumbingError> {
        let rf =
            if topic.replication_factor < 1 { self.brokers.min(3) } else { topic.replication_factor.min(self.brokers) };
        self.cluster()
            .create_topic(&topic.name, topic.partitions, rf)
            .map_err(|cause| KafkaPlumbingError::Mock { what: format!("create topic {:?}", topic.name), cause })?;
        debug!(topic = %topic.name, partitions = topic.partitions, replication_factor = rf, "mock topic created");
        Ok(())
    }

    /// Creates the three configured topics (`kafka.topics`).
    pub fn create_topics(&self, kafka: &KafkaConfig) -> Result<(), KafkaPlumbingError> {
        kafka.topics.all().into_iter().try_for_each(|t| self.create_topic(t))
    }

    /// How long a new group waits for more members before its first rebalance (the mock's
    /// `group.initial.rebalance.delay.ms`, 3 s by default); lower it to speed tests up.
    pub fn group_initial_rebalance_delay(&self, delay: Duration) {
        let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        self.raw().group_initial_rebalance_delay_ms(ms);
    }

    /// The cluster, through rdkafka's safe API (borrowing the owner handle).
    fn cluster(&self) -> MockCluster<'_, OwnerContext> {
        self.owner.mock_cluster().expect("the owner handle was created with a mock cluster (checked in `start`)")
    }

    /// The cluster, for the settings [`MockCluster`] lacks.
    fn raw(&self) -> RawCluster<'_> {
        RawCluster::of(&self.owner).expect("the owner handle was created with a mock cluster (checked in `start`)")
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        for f in &self.forwarders {
            f.abort();
        }
        // `owner` drops next and destroys the cluster.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::ensure_topics;

    /// A client configuration for `bootstrap` with topic names of its own.
    pub(super) fn kafka_for(bootstrap: &str) -> KafkaConfig {
        let mut kafka = KafkaConfig { bootstrap_servers: bootstrap.to_string(), ..Default::default() };
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        kafka.topics.images.name = format!("images-{suffix}");
        kafka.topics.detections.name = format!("detections-{suffix}");
        kafka.topics.dlq.name = format!("images-{suffix}.dlq");
        kafka
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_configured_topics_and_ensure_topics_carries_on() {
        let broker = DevBroker::start(3).unwrap();
        let kafka = kafka_for(broker.bootstrap_servers());
        broker.create_topics(&kafka).unwrap();
        let report = ensure_topics(&kafka, &kafka.topics.all()).await.unwrap();
        assert!(report.created.is_empty(), "{report:?}");
        assert_eq!(report.existing[0], (kafka.topics.images.name.clone(), 12));
        assert_eq!(report.existing[2], (kafka.topics.dlq.name.clone(), 3));

        // A topic the mock does not have cannot be created through the admin API: a clear error.
        let kafka = KafkaConfig { operation_timeout_ms: 2_000, ..kafka };
        let missing =
            TopicConfig { name: format!("missing-{}", uuid::Uuid::new_v4()), partitions: 2, replication_factor: -1 };
        let err = ensure_topics(&kafka, &[&missing]).await.unwrap_err().to_string();
        assert!(err.contains(&missing.name), "{err}");
    }
}
