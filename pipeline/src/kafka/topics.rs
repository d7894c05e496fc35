//! Topic creation and metadata helpers.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use tracing::{info, warn};

use super::{client_config, reader_config, KafkaConfig, KafkaPlumbingError, TopicConfig};

/// What [`ensure_topics`] found and did.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct TopicsReport {
    /// Topics this call created.
    pub created: Vec<String>,
    /// Topics that already existed, with their partition counts.
    pub existing: Vec<(String, i32)>,
    /// The broker does not implement CreateTopics (the librdkafka mock): nothing was created.
    pub create_unsupported: bool,
}

fn is_unsupported(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::InvalidRequest
    )
}

/// Creates the missing ones of `topics` with their configured partitions (and
/// `max.message.bytes` from `KafkaConfig::topic_max_message_bytes`), leaves existing topics as they are
/// (warning when their partition count differs), and carries on with a warning when the
/// broker lacks CreateTopics. Fails only when a topic is still missing afterwards, or on
/// errors that creating it again would not fix (authorisation, invalid settings).
pub(crate) async fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &[&TopicConfig],
) -> Result<TopicsReport, KafkaPlumbingError> {
    let mut report = TopicsReport::default();
    if topics.is_empty() {
        return Ok(report);
    }
    // Look first, create only what is missing: a broker without CreateTopics (the mock)
    // then costs nothing when the topics exist.
    let counts = partition_counts(kafka, topics).await?;
    let missing: Vec<&TopicConfig> = topics.iter().zip(&counts).filter(|(_, n)| **n == 0).map(|(t, _)| *t).collect();
    for (topic, n) in topics.iter().zip(&counts).filter(|(_, n)| **n > 0) {
        if *n != topic.partitions {
            warn!(topic = %topic.name, partitions = n, configured = topic.partitions, "existing topic has a different partition count; leaving it as it is");
        }
        report.existing.push((topic.name.clone(), *n));
    }
    if missing.is_empty() {
        return Ok(report);
    }
    let names: Vec<String> = missing.iter().map(|t| t.name.clone()).collect();
    let hint = "create it, or start `vigil broker`, which creates the configured topics";
    if !kafka.create_topics {
        return Err(KafkaPlumbingError::Topic {
            topic: names.join(", "),
            reason: format!("does not exist and kafka.create_topics is false; {hint}"),
        });
    }
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka).create().map_err(|cause| KafkaPlumbingError::Client { role: "admin", cause })?;
    let max_bytes: Vec<String> = missing.iter().map(|t| kafka.topic_max_message_bytes(t).to_string()).collect();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .zip(&max_bytes)
        .map(|(t, max_bytes)| {
            NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication_factor))
                .set("max.message.bytes", max_bytes)
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(kafka.operation_timeout()))
        .request_timeout(Some(kafka.operation_timeout()));
    match admin.create_topics(&new_topics, &opts).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(name) => {
                        info!(topic = %name, "created topic");
                        report.created.push(name);
                    }
                    // Created concurrently by another process: fine.
                    Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.existing.push((name, 0)),
                    Err((_, code)) if is_unsupported(code) => report.create_unsupported = true,
                    Err((name, code)) => {
                        return Err(KafkaPlumbingError::Topic { topic: name, reason: format!("cannot create: {code}") })
                    }
                }
            }
        }
        // The mock never answers CreateTopics: librdkafka waits for a broker that supports
        // it and times out.
        Err(e)
            if e.rdkafka_error_code()
                .is_some_and(|c| is_unsupported(c) || c == RDKafkaErrorCode::OperationTimedOut) =>
        {
            report.create_unsupported = true
        }
        Err(cause) => return Err(KafkaPlumbingError::CreateTopics { topics: names.clone(), cause }),
    }
    if report.create_unsupported {
        warn!(topics = ?names, "the broker did not create the topics (no CreateTopics support, e.g. the librdkafka mock?)");
    }
    // A new topic reaches every broker's metadata a moment after CreateTopics returns (a
    // real cluster propagates it from the controller): look again until it shows.
    let deadline = tokio::time::Instant::now() + kafka.operation_timeout();
    let mut counts = partition_counts(kafka, &missing).await?;
    while !report.create_unsupported && counts.contains(&0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        counts = partition_counts(kafka, &missing).await?;
    }
    if let Some((topic, _)) = missing.iter().zip(&counts).find(|(_, n)| **n == 0) {
        return Err(KafkaPlumbingError::Topic {
            topic: topic.name.clone(),
            reason: format!("does not exist and could not be created; {hint}"),
        });
    }
    for (topic, n) in missing.iter().zip(counts) {
        if let Some(entry) = report.existing.iter_mut().find(|(name, _)| *name == topic.name) {
            entry.1 = n;
        }
    }
    Ok(report)
}

/// Partition counts (0 = missing) of `topics`, fetched off the async runtime.
async fn partition_counts(kafka: &KafkaConfig, topics: &[&TopicConfig]) -> Result<Vec<i32>, KafkaPlumbingError> {
    let kafka = kafka.clone();
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let consumer = metadata_client(&kafka)?;
        names.iter().map(|name| partition_count(&consumer, &kafka, name)).collect()
    })
    .await
    .map_err(|e| KafkaPlumbingError::Topic { topic: "*".into(), reason: format!("metadata task failed: {e}") })?
}

/// A client for metadata and watermark queries (never joins a group).
pub(crate) fn metadata_client(kafka: &KafkaConfig) -> Result<BaseConsumer, KafkaPlumbingError> {
    let mut config = reader_config(kafka, "metadata");
    config.set("allow.auto.create.topics", "false");
    config.create().map_err(|cause| KafkaPlumbingError::Client { role: "metadata", cause })
}

/// Fetches metadata for one topic (blocking).
pub(super) fn topic_metadata(
    consumer: &BaseConsumer,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<Metadata, KafkaPlumbingError> {
    consumer
        .fetch_metadata(Some(topic), kafka.operation_timeout())
        .map_err(|cause| KafkaPlumbingError::Metadata { bootstrap: kafka.bootstrap_servers.clone(), cause })
}

/// Partition count of `topic`, 0 when it does not exist (blocking).
pub(crate) fn partition_count(
    consumer: &BaseConsumer,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<i32, KafkaPlumbingError> {
    let metadata = topic_metadata(consumer, kafka, topic)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0))
}

/// `(partition, low, high)` watermarks of every partition of `topic` (blocking).
pub(crate) fn watermarks(
    consumer: &BaseConsumer,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, KafkaPlumbingError> {
    let n = partition_count(consumer, kafka, topic)?;
    (0..n)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, kafka.operation_timeout())
                .map(|(low, high)| (p, low, high))
                .map_err(|cause| KafkaPlumbingError::Metadata { bootstrap: kafka.bootstrap_servers.clone(), cause })
        })
        .collect()
}
