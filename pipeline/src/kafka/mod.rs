//! Kafka plumbing shared by the stages: client configuration (`client_config` and the
//! role builders), error classification (`classify`), topic creation
//! (`ensure_topics`) and the in-memory dev broker ([`DevBroker`]).

mod client;
mod config;
mod enqueue;
mod error;
mod mock;
mod offsets;
pub(crate) mod stats;
mod topics;

pub(crate) use client::{client_config, consumer_config, idempotent_producer_config, reader_config};
pub(crate) use config::DLQ_HEADROOM_BYTES;
pub use config::{KafkaConfig, SchemaRegistryConfig, TopicConfig, TopicsConfig};
pub(crate) use enqueue::{try_enqueue, Enqueued};
pub use error::KafkaPlumbingError;
pub(crate) use error::{classify, ErrorClass};
pub use mock::{DevBroker, DevBrokerOptions};
pub(crate) use offsets::NextOffsets;
pub(crate) use topics::{ensure_topics, max_message_bytes, metadata_client, partition_count, watermarks};

/// Reads (and with `kafka.schema_registry.write`, writes) the Confluent Schema Registry
/// framing through `kafka.schema_registry.url`, registering the current schema of each
/// record this process writes under `<topic>-value`; nothing without a URL.
pub(crate) async fn use_schema_registry(
    kafka: &KafkaConfig,
    writes: &[(crate::codec::RecordType, &str)],
) -> Result<(), KafkaPlumbingError> {
    if kafka.schema_registry.url.is_empty() {
        return Ok(());
    }
    let config = kafka.schema_registry.clone();
    let writes: Vec<_> = writes.iter().map(|&(record, topic)| (record, topic.to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let writes: Vec<_> = writes.iter().map(|(record, topic)| (*record, topic.as_str())).collect();
        crate::codec::registry::configure(&config, &writes)
    })
    .await
    .map_err(|e| KafkaPlumbingError::SchemaRegistry(e.to_string()))?
    .map_err(|e| KafkaPlumbingError::SchemaRegistry(e.to_string()))
}
