//! The in-memory dev/test broker: librdkafka's mock cluster (see DESIGN.md for its gaps:
//! no CreateTopics, transactional offsets not stored, no read_committed filtering).
//!
//! [`DevBroker`] owns the cluster for as long as it lives (keep it alive for the process
//! lifetime in `vigil broker` / `vigil up`), creates topics through the mock's own API,
//! and exposes the fault-injection knobs tests need. With a fixed port, each broker is
//! reached through a TCP forwarder on `host:port+i` and advertised there, so the
//! bootstrap list is stable across runs.

use std::ffi::{CStr, CString};
use std::os::raw::c_int;
use std::time::Duration;

use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr, RDKafkaType};
use rdkafka::ClientConfig;
use rdkafka_sys as rdsys;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info};

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
        Self {
            brokers: 3,
            port: None,
            host: "127.0.0.1".into(),
        }
    }
}

/// A running in-memory Kafka cluster. Dropping it shuts the cluster down.
pub struct DevBroker {
    cluster: *mut rdsys::rd_kafka_mock_cluster_t,
    brokers: i32,
    bootstrap: String,
    forwarders: Vec<JoinHandle<()>>,
    // Owns the librdkafka handle the cluster runs in; declared last so it drops after
    // the cluster is destroyed (see `Drop`).
    _client: Client<DefaultClientContext>,
}

// SAFETY: every mock API call used here posts an operation to the mock cluster's own
// thread and waits for it (librdkafka's `rd_kafka_op_req`), so calls from any thread are
// safe; the pointer stays valid until `Drop`, which needs `&mut self`.
unsafe impl Send for DevBroker {}
unsafe impl Sync for DevBroker {}

fn mock_err(what: impl Into<String>, code: RDKafkaRespErr) -> Result<(), KafkaPlumbingError> {
    if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(KafkaPlumbingError::Mock {
            what: what.into(),
            cause: KafkaError::MockCluster(code.into()),
        })
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, KafkaPlumbingError> {
    CString::new(s).map_err(|e| KafkaPlumbingError::Mock {
        what: what.into(),
        cause: KafkaError::Nul(e),
    })
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
        let config = ClientConfig::new();
        let native = config
            .create_native_config()
            .map_err(|cause| KafkaPlumbingError::Mock {
                what: "client config".into(),
                cause,
            })?;
        let client = Client::new(
            &config,
            native,
            RDKafkaType::RD_KAFKA_PRODUCER,
            DefaultClientContext,
        )
        .map_err(|cause| KafkaPlumbingError::Mock {
            what: "client".into(),
            cause,
        })?;
        // SAFETY: the client handle is valid; the cluster is destroyed in Drop, before the client.
        let cluster = unsafe { rdsys::rd_kafka_mock_cluster_new(client.native_ptr(), brokers) };
        if cluster.is_null() {
            return Err(KafkaPlumbingError::Mock {
                what: "rd_kafka_mock_cluster_new".into(),
                cause: KafkaError::MockCluster(RDKafkaErrorCode::Fail),
            });
        }
        // SAFETY: valid cluster; librdkafka returns a NUL-terminated string it owns.
        let bootstrap = unsafe { CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster)) }
            .to_string_lossy()
            .into_owned();
        info!(%bootstrap, brokers, "in-memory Kafka cluster started");
        Ok(DevBroker {
            cluster,
            brokers,
            bootstrap,
            forwarders: Vec::new(),
            _client: client,
        })
    }

    /// Starts a cluster per `options`; with a fixed port, binds the forwarders (needs a
    /// Tokio runtime) and advertises them, so clients only ever see `host:port..`.
    pub async fn start_with(options: &DevBrokerOptions) -> Result<DevBroker, KafkaPlumbingError> {
        let mut broker = DevBroker::start(options.brokers)?;
        let Some(first_port) = options.port else {
            return Ok(broker);
        };
        let upstream: Vec<String> = broker.bootstrap.split(',').map(str::to_string).collect();
        let mut advertised = Vec::new();
        for (i, target) in upstream.into_iter().enumerate() {
            let broker_id = i as i32 + 1;
            let port = u16::try_from(u32::from(first_port) + i as u32).map_err(|_| {
                KafkaPlumbingError::Mock {
                    what: format!("port {first_port} + {i} is above 65535"),
                    cause: KafkaError::MockCluster(RDKafkaErrorCode::InvalidArgument),
                }
            })?;
            let listen = format!("{}:{port}", options.host);
            let listener =
                TcpListener::bind(&listen)
                    .await
                    .map_err(|cause| KafkaPlumbingError::MockIo {
                        what: format!("bind {listen}"),
                        cause,
                    })?;
            broker
                .forwarders
                .push(tokio::spawn(forward(listener, target)));
            let host = cstring("host", &options.host)?;
            // SAFETY: valid cluster and C string.
            unsafe {
                rdsys::rd_kafka_mock_broker_set_host_port(
                    broker.cluster,
                    broker_id,
                    host.as_ptr(),
                    c_int::from(port),
                )
            };
            advertised.push(listen);
        }
        broker.bootstrap = advertised.join(",");
        Ok(broker)
    }

    /// The `bootstrap.servers` list clients should use.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Broker ids, `1..=brokers`.
    pub fn broker_ids(&self) -> std::ops::RangeInclusive<i32> {
        1..=self.brokers
    }

    /// Creates a topic (replication factor -1 becomes min(3, brokers)).
    pub fn create_topic(&self, topic: &TopicConfig) -> Result<(), KafkaPlumbingError> {
        let rf = if topic.replication_factor < 1 {
            self.brokers.min(3)
        } else {
            topic.replication_factor.min(self.brokers)
        };
        let name = cstring("topic name", &topic.name)?;
        // SAFETY: valid cluster and C string.
        let code = unsafe {
            rdsys::rd_kafka_mock_topic_create(self.cluster, name.as_ptr(), topic.partitions, rf)
        };
        mock_err(format!("create topic {:?}", topic.name), code)?;
        debug!(topic = %topic.name, partitions = topic.partitions, replication_factor = rf, "mock topic created");
        Ok(())
    }

    /// Creates the three configured topics (`kafka.topics`).
    pub fn create_topics(&self, kafka: &KafkaConfig) -> Result<(), KafkaPlumbingError> {
        kafka
            .topics
            .all()
            .into_iter()
            .try_for_each(|t| self.create_topic(t))
    }

    /// Disconnects broker `id` (-1: all) and refuses new connections; leadership stays.
    pub fn broker_down(&self, id: i32) -> Result<(), KafkaPlumbingError> {
        // SAFETY: valid cluster.
        mock_err(format!("broker {id} down"), unsafe {
            rdsys::rd_kafka_mock_broker_set_down(self.cluster, id)
        })
    }

    /// Lets broker `id` (-1: all) accept connections again.
    pub fn broker_up(&self, id: i32) -> Result<(), KafkaPlumbingError> {
        // SAFETY: valid cluster.
        mock_err(format!("broker {id} up"), unsafe {
            rdsys::rd_kafka_mock_broker_set_up(self.cluster, id)
        })
    }

    /// Adds round-trip latency to every response of broker `id`.
    pub fn broker_rtt(&self, id: i32, rtt: Duration) -> Result<(), KafkaPlumbingError> {
        let ms = c_int::try_from(rtt.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: valid cluster.
        mock_err(format!("broker {id} rtt"), unsafe {
            rdsys::rd_kafka_mock_broker_set_rtt(self.cluster, id, ms)
        })
    }

    /// The next `errors.len()` requests of `api` (on any broker) fail with these errors,
    /// in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        // SAFETY: valid cluster; the array outlives the call (librdkafka copies it).
        unsafe {
            rdsys::rd_kafka_mock_push_request_errors_array(
                self.cluster,
                api as i16,
                errors.len(),
                errors.as_ptr(),
            )
        }
    }

    /// Like [`request_errors`](Self::request_errors), on broker `id` only, each error with a
    /// response delay.
    pub fn broker_request_errors(
        &self,
        id: i32,
        api: RDKafkaApiKey,
        errors: &[(RDKafkaRespErr, Duration)],
    ) -> Result<(), KafkaPlumbingError> {
        for (err, rtt) in errors {
            let ms = c_int::try_from(rtt.as_millis()).unwrap_or(c_int::MAX);
            // SAFETY: valid cluster; variadic arguments are (error, rtt_ms) pairs as ints.
            let code = unsafe {
                rdsys::rd_kafka_mock_broker_push_request_error_rtts(
                    self.cluster,
                    id,
                    api as i16,
                    1,
                    *err as c_int,
                    ms,
                )
            };
            mock_err(format!("broker {id} request error"), code)?;
        }
        Ok(())
    }

    /// Drops any queued request errors for `api`.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) {
        // SAFETY: valid cluster.
        unsafe { rdsys::rd_kafka_mock_clear_request_errors(self.cluster, api as i16) }
    }

    /// Every request on `topic` fails with `err` until cleared with `NO_ERROR`.
    pub fn topic_error(&self, topic: &str, err: RDKafkaRespErr) -> Result<(), KafkaPlumbingError> {
        let name = cstring("topic name", topic)?;
        // SAFETY: valid cluster and C string.
        unsafe { rdsys::rd_kafka_mock_topic_set_error(self.cluster, name.as_ptr(), err) };
        Ok(())
    }

    /// Moves the leadership of one partition (-1 broker: leaderless).
    pub fn partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker: i32,
    ) -> Result<(), KafkaPlumbingError> {
        let name = cstring("topic name", topic)?;
        // SAFETY: valid cluster and C string.
        let code = unsafe {
            rdsys::rd_kafka_mock_partition_set_leader(
                self.cluster,
                name.as_ptr(),
                partition,
                broker,
            )
        };
        mock_err(format!("leader of {topic}/{partition}"), code)
    }

    /// Moves the group coordinator of `group` to `broker`.
    pub fn group_coordinator(&self, group: &str, broker: i32) -> Result<(), KafkaPlumbingError> {
        self.coordinator("group", group, broker)
    }

    /// Moves the transaction coordinator of `transactional_id` to `broker`.
    pub fn transaction_coordinator(
        &self,
        transactional_id: &str,
        broker: i32,
    ) -> Result<(), KafkaPlumbingError> {
        self.coordinator("transaction", transactional_id, broker)
    }

    fn coordinator(&self, kind: &str, key: &str, broker: i32) -> Result<(), KafkaPlumbingError> {
        let kind_c = cstring("coordinator type", kind)?;
        let key_c = cstring("coordinator key", key)?;
        // SAFETY: valid cluster and C strings.
        let code = unsafe {
            rdsys::rd_kafka_mock_coordinator_set(
                self.cluster,
                kind_c.as_ptr(),
                key_c.as_ptr(),
                broker,
            )
        };
        mock_err(format!("{kind} coordinator of {key}"), code)
    }

    /// How long a new group waits for more members before its first rebalance (the mock's
    /// `group.initial.rebalance.delay.ms`, 3 s by default); lower it to speed tests up.
    pub fn group_initial_rebalance_delay(&self, delay: Duration) {
        let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: valid cluster.
        unsafe { rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(self.cluster, ms) }
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        for f in &self.forwarders {
            f.abort();
        }
        // SAFETY: created in `start`, destroyed once, before `_client` drops.
        unsafe { rdsys::rd_kafka_mock_cluster_destroy(self.cluster) };
    }
}

/// Accepts connections on `listener` and pipes each to `target` until either side closes.
async fn forward(listener: TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            match TcpStream::connect(&target).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => {
                    debug!(%target, error = %e, "mock broker unreachable (down?); closing the client connection")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::consumer::Consumer;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;
    use crate::kafka::{ensure_topics, metadata_client, partition_count, watermarks};

    fn kafka_for(bootstrap: &str) -> KafkaConfig {
        let mut kafka = KafkaConfig {
            bootstrap_servers: bootstrap.to_string(),
            ..Default::default()
        };
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
        let kafka = KafkaConfig {
            operation_timeout_ms: 2_000,
            ..kafka
        };
        let missing = TopicConfig {
            name: format!("missing-{}", uuid::Uuid::new_v4()),
            partitions: 2,
            replication_factor: -1,
        };
        let err = ensure_topics(&kafka, &[&missing])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&missing.name), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fixed_ports_forward_to_the_brokers() {
        // Pick a free base port (brief race with other processes is acceptable in a test).
        let base = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let options = DevBrokerOptions {
            brokers: 1,
            port: Some(base),
            host: "127.0.0.1".into(),
        };
        let Ok(broker) = DevBroker::start_with(&options).await else {
            return;
        };
        assert_eq!(broker.bootstrap_servers(), format!("127.0.0.1:{base}"));
        let kafka = kafka_for(broker.bootstrap_servers());
        broker
            .create_topic(&TopicConfig {
                partitions: 2,
                ..kafka.topics.images.clone()
            })
            .unwrap();
        let producer: FutureProducer = crate::kafka::idempotent_producer_config(&kafka)
            .create()
            .unwrap();
        producer
            .send(
                FutureRecord::to(&kafka.topics.images.name)
                    .key("k")
                    .payload("v"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let topic = kafka.topics.images.name.clone();
        tokio::task::spawn_blocking(move || {
            let c = metadata_client(&kafka).unwrap();
            assert_eq!(partition_count(&c, &kafka, &topic).unwrap(), 2);
            let total: i64 = watermarks(&c, &kafka, &topic)
                .unwrap()
                .iter()
                .map(|(_, lo, hi)| hi - lo)
                .sum();
            assert_eq!(total, 1);
            // Metadata advertises the forwarder, not the random port.
            let md = c.fetch_metadata(None, Duration::from_secs(5)).unwrap();
            assert_eq!(md.brokers()[0].port() as u16, base);
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_errors_reach_clients() {
        let broker = DevBroker::start(1).unwrap();
        let kafka = kafka_for(broker.bootstrap_servers());
        broker.create_topic(&kafka.topics.images).unwrap();
        let producer: FutureProducer = crate::kafka::client_config(&kafka)
            .set("message.send.max.retries", "0")
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let send = |payload: &'static str| {
            producer.send(
                FutureRecord::to(&kafka.topics.images.name)
                    .key("k")
                    .payload(payload),
                Duration::from_secs(10),
            )
        };
        send("warm-up").await.unwrap();
        broker.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_MSG],
        );
        let (err, _) = send("rejected").await.unwrap_err();
        assert_eq!(
            err.rdkafka_error_code(),
            Some(RDKafkaErrorCode::InvalidMessage),
            "{err}"
        );
        send("accepted again").await.unwrap();

        broker.broker_down(1).unwrap();
        broker.broker_up(1).unwrap();
        send("after restart").await.unwrap();
        broker.clear_request_errors(RDKafkaApiKey::Produce);
    }
}
