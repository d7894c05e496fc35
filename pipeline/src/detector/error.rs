//! Detector errors: what failed and what to do about it.
//!
//! Convention (the whole crate): a message carries its cause, and nothing is also
//! exposed through `source()`, so `{:#}` prints each cause once.

use rdkafka::error::KafkaError;

use crate::kafka::KafkaPlumbingError;
use crate::model::ModelError;

/// Failures that stop a detector worker. Bad input never does (it goes to the dead-letter
/// topic), and Kafka errors that a retry, an abort or a new producer can fix are handled
/// inside the loop; what is left here needs an operator or a restart.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("cannot load the model: {0}")]
    Model(ModelError),
    #[error("cannot start the model thread: {0}")]
    SpawnModelThread(std::io::Error),
    #[error("the model thread stopped unexpectedly{}", .0.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    ModelThread(Option<String>),
    #[error("a blocking Kafka call did not complete: {0}")]
    Blocking(tokio::task::JoinError),
    #[error(transparent)]
    Plumbing(#[from] KafkaPlumbingError),
    #[error("cannot create the Kafka {role}: {cause} (check kafka.bootstrap_servers and kafka.client.*)")]
    Client { role: &'static str, cause: KafkaError },
    #[error("cannot initialise transactions for transactional.id {transactional_id}: {cause}; does the broker support transactions (transaction.state.log.* settings, enough brokers for its replication factor)?")]
    InitTransactions { transactional_id: String, cause: KafkaError },
    #[error("this worker was fenced: another producer took over transactional.id {transactional_id} ({reason}). It stops, so that two workers do not abort each other's transactions. Two workers started with the same --instance-id (detector.instance_id) fence each other: give each its own. A worker frozen past detector.transaction_timeout_ms is fenced too: restart it.")]
    Fenced { transactional_id: String, reason: String },
    #[error("static member {instance} was fenced {times} times within 5 minutes (FencedInstanceId: another consumer joined the group with the same group.instance.id; last: {cause}). Another worker is most likely running with the same --instance-id (detector.instance_id): give each worker its own")]
    InstanceFenced { instance: String, times: u64, cause: KafkaError },
    #[error("cannot read the group's committed offsets after recreating the producer: {0}")]
    CommittedOffsets(KafkaError),
    #[error("Kafka consumer failed: {0}")]
    Consumer(KafkaError),
    #[error("invalid configuration: `{key}`: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("the model backend has been failing for {} s, longer than detector.backend_failure_limit_ms (last: {last}). Nothing of the failed batches was committed; their records are read again by the partitions' next owner. Check the device: GPU driver and memory (nvidia-smi), the wgpu adapter (detector.backend), or run with --backend cpu", .waited.as_secs())]
    BackendUnavailable { waited: std::time::Duration, last: String },
    #[error("cannot rewind partition {partition} to offset {offset} to redo an uncommitted batch: {cause}. The worker stops rather than skip those records: the partition's next owner starts from the group's committed offsets")]
    Seek { partition: i32, offset: i64, cause: KafkaError },
    #[error("partition ownership is uncertain after a rebalance ({0}). The worker stops rather than commit records it may not own or skip records it dropped: a restart rejoins the group from the committed offsets")]
    Assignment(String),
    #[error("did not stop within detector.shutdown_timeout_ms ({timeout_ms} ms) while {waiting_for}; is the Kafka cluster reachable (kafka.bootstrap_servers)? Nothing uncommitted is lost: the partitions' next owner reads it again")]
    ShutdownTimeout { timeout_ms: u64, waiting_for: &'static str },
    #[error("stopped with an uncommitted batch ({0}); its records are read again by the partitions' next owner")]
    Unfinished(String),
}

impl DetectorError {
    /// Whether the command was used wrongly (exit code 2) rather than failing at run time.
    pub fn is_usage(&self) -> bool {
        match self {
            DetectorError::Config { .. } => true,
            DetectorError::Client { cause: KafkaError::ClientConfig(..), .. } => true,
            DetectorError::Plumbing(e) => e.is_usage(),
            _ => false,
        }
    }
}
