//! Kafka plumbing shared by the stages: client configuration ([`client_config`] and the
//! role builders), error classification ([`classify`]), topic creation
//! ([`ensure_topics`]) and the in-memory dev broker ([`DevBroker`]).

pub mod broker;
mod client;
pub mod config;
mod error;
pub mod mock;
mod topics;

pub use client::{client_config, consumer_config, idempotent_producer_config, reader_config};
pub use config::*;
pub use error::{classify, classify_code, classify_transaction, ErrorClass, KafkaPlumbingError};
pub use mock::{DevBroker, DevBrokerOptions};
pub use topics::{
    ensure_topics, metadata_client, partition_count, topic_metadata, wait_for_leaders, watermarks,
    TopicsReport,
};
