//! Detector errors: what failed and what to do about it.

use rdkafka::error::KafkaError;

use crate::kafka::KafkaPlumbingError;
use crate::model::ModelError;

/// Failures that stop a detector worker. Bad input never does (it goes to the dead-letter
/// topic), and Kafka errors that a retry, an abort or a new producer can fix are handled
/// inside the loop; what is left here needs an operator or a restart.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("cannot load the model: {0}")]
    Model(#[from] ModelError),
    #[error("the model thread stopped unexpectedly{}", .0.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    ModelThread(Option<String>),
    #[error(transparent)]
    Plumbing(#[from] KafkaPlumbingError),
    #[error("cannot create the Kafka {role}: {source} (check kafka.bootstrap_servers and kafka.client.*)")]
    Client {
        role: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("cannot initialise transactions for transactional.id {transactional_id}: {source}; does the broker support transactions (Kafka >= 0.11, transaction.state.log.* settings)?")]
    InitTransactions {
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka consumer failed: {0}")]
    Consumer(#[source] KafkaError),
    #[error("invalid detector configuration: {key}: {reason}")]
    Config { key: String, reason: String },
}
