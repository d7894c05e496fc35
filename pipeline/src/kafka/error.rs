//! Kafka error classification and the module's error type.

use std::fmt;

use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};

/// What a stage should do about a Kafka error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Transient (broker moving, timeout, coordinator loading): retry the same operation,
    /// with backoff; nothing needs undoing.
    Retriable,
    /// The current unit of work failed: abort the open transaction (or drop the batch),
    /// rewind to the last committed position and redo it. The client stays usable.
    Abortable,
    /// The client is unusable (fenced by a newer instance, fatal idempotence error,
    /// authorisation): recreate it, or exit if that cannot help.
    Fatal,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Retriable => "retriable",
            ErrorClass::Abortable => "abortable",
            ErrorClass::Fatal => "fatal",
        })
    }
}

/// Classifies an error from a transactional producer call (`init_transactions`,
/// `begin_transaction`, `send_offsets_to_transaction`, `commit_transaction`, …) using
/// librdkafka's own verdict, falling back to the error code.
pub(super) fn classify_transaction(err: &RDKafkaError) -> ErrorClass {
    if err.is_fatal() {
        ErrorClass::Fatal
    } else if err.txn_requires_abort() {
        ErrorClass::Abortable
    } else if err.is_retriable() {
        ErrorClass::Retriable
    } else {
        match classify_code(err.code()) {
            // Not retriable by librdkafka's verdict: never loop on it, abort instead.
            ErrorClass::Retriable => ErrorClass::Abortable,
            other => other,
        }
    }
}

/// Classifies any rdkafka error.
pub(crate) fn classify(err: &KafkaError) -> ErrorClass {
    match err {
        KafkaError::Transaction(e) => classify_transaction(e),
        KafkaError::MessageConsumptionFatal(_) => ErrorClass::Fatal,
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_) => ErrorClass::Fatal,
        KafkaError::Canceled => ErrorClass::Fatal,
        KafkaError::NoMessageReceived | KafkaError::PartitionEOF(_) => ErrorClass::Retriable,
        other => match other.rdkafka_error_code() {
            Some(code) => classify_code(code),
            None => ErrorClass::Abortable,
        },
    }
}

/// Classifies a bare error code (delivery reports, consumer errors, admin results).
pub(super) fn classify_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode::*;
    match code {
        // The client or the producer identity is gone for good.
        Fatal
        | Fenced
        | ProducerFenced
        | InvalidProducerEpoch
        | TransactionalIdAuthorizationFailed
        | ClusterAuthorizationFailed
        | TopicAuthorizationFailed
        | GroupAuthorizationFailed
        | InvalidTransactionTimeout
        | UnsupportedVersion
        | UnsupportedForMessageFormat
        | Authentication
        | SaslAuthenticationFailed
        | FencedInstanceId
        | InvalidProducerIdMapping
        | UnknownProducerId
        | OutOfOrderSequenceNumber
        | InvalidConfig
        | InvalidSessionTimeout => ErrorClass::Fatal,
        // Transient: brokers, leaders and coordinators moving, timeouts, back-pressure.
        BrokerTransportFailure
        | Resolve
        | AllBrokersDown
        | OperationTimedOut
        | QueueFull
        | TimedOutQueue
        | WaitingForCoordinator
        | InProgress
        | PreviousInProgress
        | Retry
        | Interrupted
        | LeaderNotAvailable
        | NotLeaderForPartition
        | RequestTimedOut
        | BrokerNotAvailable
        | ReplicaNotAvailable
        | NetworkException
        | CoordinatorLoadInProgress
        | CoordinatorNotAvailable
        | NotCoordinator
        | NotEnoughReplicas
        | NotEnoughReplicasAfterAppend
        | RebalanceInProgress
        | ConcurrentTransactions
        | KafkaStorageError
        | FencedLeaderEpoch
        | UnknownLeaderEpoch
        | OffsetNotAvailable
        | PreferredLeaderNotAvailable
        | EligibleLeadersNotAvailable
        | UnstableOffsetCommit
        | ThrottlingQuotaExceeded
        | UnknownTopicOrPartition
        | TransactionCoordinatorFenced => ErrorClass::Retriable,
        _ => ErrorClass::Abortable,
    }
}

/// Errors of the shared Kafka plumbing (client creation, topics, the dev broker).
/// Messages include their cause (fields are named `cause`, not `source`, so error
/// chains do not print it twice).
#[derive(Debug, thiserror::Error)]
pub enum KafkaPlumbingError {
    #[error("cannot create the Kafka {role} client: {cause} (check kafka.bootstrap_servers and kafka.client.*)")]
    Client { role: &'static str, cause: KafkaError },
    #[error("cannot create topics {topics:?}: {cause}")]
    CreateTopics { topics: Vec<String>, cause: KafkaError },
    #[error("topic {topic:?}: {reason}")]
    Topic { topic: String, reason: String },
    /// `hint` says what librdkafka saw on the connections (a refused login, a closed
    /// connection) and what to check; see `MetadataContext`.
    #[error("cannot read metadata from {bootstrap}: {cause} ({hint})")]
    Metadata { bootstrap: String, cause: KafkaError, hint: Box<str> },
    #[error("in-memory broker: {what}: {cause}")]
    Mock { what: String, cause: KafkaError },
    #[error("in-memory broker: {what}: {cause}")]
    MockIo { what: String, cause: std::io::Error },
    #[error("{0} (kafka.schema_registry.url)")]
    SchemaRegistry(String),
}

impl KafkaPlumbingError {
    /// Whether the configuration is wrong (exit code 2): librdkafka refused a property.
    pub fn is_usage(&self) -> bool {
        matches!(self, KafkaPlumbingError::Client { cause: KafkaError::ClientConfig(..), .. })
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode as C;

    use super::*;

    #[test]
    fn codes_are_classified() {
        assert_eq!(classify_code(C::ProducerFenced), ErrorClass::Fatal);
        assert_eq!(classify_code(C::Fenced), ErrorClass::Fatal);
        assert_eq!(classify_code(C::NotCoordinator), ErrorClass::Retriable);
        assert_eq!(classify_code(C::RequestTimedOut), ErrorClass::Retriable);
        assert_eq!(classify_code(C::MessageSizeTooLarge), ErrorClass::Abortable);
        assert_eq!(classify_code(C::InvalidTransactionalState), ErrorClass::Abortable);
    }

    #[test]
    fn kafka_errors_are_classified() {
        assert_eq!(classify(&KafkaError::MessageProduction(C::QueueFull)), ErrorClass::Retriable);
        assert_eq!(classify(&KafkaError::MessageProduction(C::MessageSizeTooLarge)), ErrorClass::Abortable);
        assert_eq!(classify(&KafkaError::Global(C::Fatal)), ErrorClass::Fatal);
        assert_eq!(classify(&KafkaError::ClientCreation("x".into())), ErrorClass::Fatal);
        assert_eq!(classify(&KafkaError::MessageConsumptionFatal(C::Fail)), ErrorClass::Fatal);
    }
}
