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
pub use config::{KafkaConfig, TopicConfig, TopicsConfig};
pub(crate) use enqueue::{try_enqueue, Enqueued};
pub use error::KafkaPlumbingError;
pub(crate) use error::{classify, ErrorClass};
pub use mock::{DevBroker, DevBrokerOptions};
pub(crate) use offsets::NextOffsets;
pub(crate) use topics::{ensure_topics, max_message_bytes, metadata_client, partition_count, watermarks};
