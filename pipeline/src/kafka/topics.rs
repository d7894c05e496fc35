//! Topic creation and metadata helpers.

use std::sync::Mutex;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use tracing::{info, warn};

use super::config::DLQ_HEADROOM_BYTES;
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
/// `max.message.bytes` from [`creation_limits`]), leaves existing topics as they are
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
    let max_bytes: Vec<String> = creation_limits(kafka, &missing).await.iter().map(u32::to_string).collect();
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

/// The `max.message.bytes` each of `missing` is created with: `kafka.max_message_bytes`,
/// and for the dead-letter topic what `images` accepts plus [`DLQ_HEADROOM_BYTES`] for the
/// key and headers a dead letter adds. What `images` accepts is its own limit when it
/// exists already (it may have been created by others, with another limit), else the
/// configured one it is about to be created with.
async fn creation_limits(kafka: &KafkaConfig, missing: &[&TopicConfig]) -> Vec<u32> {
    let dlq = &kafka.topics.dlq.name;
    let images = &kafka.topics.images.name;
    let mut images_limit = kafka.max_message_bytes;
    if missing.iter().any(|t| t.name == *dlq) && !missing.iter().any(|t| t.name == *images) {
        if let Some(Some(existing)) = max_message_bytes(kafka, &[images]).await.first() {
            images_limit = *existing;
        }
    }
    missing
        .iter()
        .map(|t| if t.name == *dlq { images_limit.saturating_add(DLQ_HEADROOM_BYTES) } else { kafka.max_message_bytes })
        .collect()
}

/// Longest wait for a DescribeConfigs answer: a broker without it (the librdkafka mock)
/// is not answered until the request times out, and every detector start asks.
const DESCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The effective `max.message.bytes` of each of `topics` (the topic's override, else the
/// broker's default), `None` where the broker does not say: the topic is missing, the
/// broker lacks DescribeConfigs (the librdkafka mock), or the request failed (logged).
pub(crate) async fn max_message_bytes(kafka: &KafkaConfig, topics: &[&str]) -> Vec<Option<u32>> {
    let unknown = vec![None; topics.len()];
    let admin: AdminClient<DefaultClientContext> = match client_config(kafka).create() {
        Ok(admin) => admin,
        Err(e) => {
            warn!(error = %e, "cannot create an admin client to read topic limits");
            return unknown;
        }
    };
    let timeout = kafka.operation_timeout().min(DESCRIBE_TIMEOUT);
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let resources: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let results = match admin.describe_configs(&resources, &opts).await {
        Ok(results) => results,
        Err(e) => {
            info!(?topics, error = %e, "the broker did not describe the topics' configuration");
            return unknown;
        }
    };
    results
        .into_iter()
        .map(|result| match result {
            Ok(config) => config.get("max.message.bytes").and_then(|e| e.value.as_deref()?.parse().ok()),
            Err(code) => {
                info!(?topics, error = %code, "the broker did not describe a topic's configuration");
                None
            }
        })
        .collect()
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

/// The client every stage reaches Kafka with first (topics, watermarks).
pub(crate) type MetadataClient = BaseConsumer<MetadataContext>;

/// The metadata client's context: logs as the default context does, and keeps the last
/// connection failure librdkafka reported. `fetch_metadata` reduces a refused SASL login,
/// or a connection that a SASL listener closes because the client did not authenticate,
/// to "broker transport failure" or a timeout; librdkafka says which only in its log and
/// error events, so the error message takes it from here (see [`metadata_error`]).
pub(crate) struct MetadataContext {
    security_protocol: String,
    last_failure: Mutex<Option<ConnectionFailure>>,
}

struct ConnectionFailure {
    authentication: bool,
    reason: String,
}

impl MetadataContext {
    fn remember(&self, authentication: bool, reason: &str) {
        let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        // A refused login is the finding; the disconnects that follow it add nothing.
        if authentication || !last.as_ref().is_some_and(|f| f.authentication) {
            *last = Some(ConnectionFailure { authentication, reason: reason.to_owned() });
        }
    }

    /// What to check, given what the connections saw.
    fn hint(&self) -> String {
        match &*self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(f) if f.authentication => format!(
                "the broker refused the login: {}; check kafka.client.sasl.username, sasl.password and sasl.mechanisms",
                f.reason
            ),
            Some(f) => format!(
                "last connection failure: {}; is the broker running, and does kafka.client.security.protocol = {} \
                 match its listener? A SASL listener closes connections that do not authenticate",
                f.reason, self.security_protocol
            ),
            None => "is the broker running? `vigil broker` starts one".to_owned(),
        }
    }
}

impl ClientContext for MetadataContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" {
            self.remember(false, log_message);
        }
        DefaultClientContext.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Other client errors ("1/1 brokers are down") say less than the FAIL log line
        // of the same connection, which `log` keeps.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            self.remember(true, reason);
        }
        DefaultClientContext.error(error, reason);
    }
}

impl ConsumerContext for MetadataContext {}

/// A client for metadata and watermark queries (never joins a group).
pub(crate) fn metadata_client(kafka: &KafkaConfig) -> Result<MetadataClient, KafkaPlumbingError> {
    let mut config = reader_config(kafka, "metadata");
    config.set("allow.auto.create.topics", "false");
    let context = MetadataContext {
        security_protocol: config.get("security.protocol").unwrap_or("plaintext").to_owned(),
        last_failure: Mutex::new(None),
    };
    config.create_with_context(context).map_err(|cause| KafkaPlumbingError::Client { role: "metadata", cause })
}

/// The error for a failed metadata request, with what the connections saw. The log and
/// error events wait in the client's queue until it is polled, which `fetch_metadata`
/// does not do: poll briefly first so that they reach [`MetadataContext`].
fn metadata_error(consumer: &MetadataClient, kafka: &KafkaConfig, cause: KafkaError) -> KafkaPlumbingError {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(100);
    while std::time::Instant::now() < until {
        // Not subscribed: nothing but events comes back, and the context has seen them.
        let _ = consumer.poll(std::time::Duration::from_millis(10));
    }
    KafkaPlumbingError::Metadata {
        bootstrap: kafka.bootstrap_servers.clone(),
        cause,
        hint: consumer.context().hint().into(),
    }
}

/// Fetches metadata for one topic (blocking).
pub(super) fn topic_metadata(
    consumer: &MetadataClient,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<Metadata, KafkaPlumbingError> {
    consumer
        .fetch_metadata(Some(topic), kafka.operation_timeout())
        .map_err(|cause| metadata_error(consumer, kafka, cause))
}

/// Partition count of `topic`, 0 when it does not exist (blocking).
pub(crate) fn partition_count(
    consumer: &MetadataClient,
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
    consumer: &MetadataClient,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, KafkaPlumbingError> {
    let n = partition_count(consumer, kafka, topic)?;
    (0..n)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, kafka.operation_timeout())
                .map(|(low, high)| (p, low, high))
                .map_err(|cause| metadata_error(consumer, kafka, cause))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_without_describe_configs_leaves_the_limits_unknown_quickly() {
        let broker = crate::kafka::DevBroker::start(1).unwrap();
        let kafka = KafkaConfig { bootstrap_servers: broker.bootstrap_servers().to_string(), ..Default::default() };
        broker.create_topics(&kafka).unwrap();
        let started = std::time::Instant::now();
        let limits = max_message_bytes(&kafka, &[&kafka.topics.dlq.name, &kafka.topics.images.name]).await;
        assert_eq!(limits, vec![None, None]);
        assert!(started.elapsed() <= DESCRIBE_TIMEOUT + std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }

    fn context() -> MetadataContext {
        MetadataContext { security_protocol: "plaintext".into(), last_failure: Mutex::new(None) }
    }

    #[test]
    fn the_hint_says_what_the_connections_saw() {
        let c = context();
        assert!(c.hint().contains("is the broker running?"), "{}", c.hint());
        c.log(RDKafkaLogLevel::Info, "FAIL", "b:1/bootstrap: Disconnected: connection closed by peer");
        let hint = c.hint();
        assert!(hint.contains("connection closed by peer") && hint.contains("security.protocol = plaintext"), "{hint}");
        c.error(KafkaError::Global(RDKafkaErrorCode::Authentication), "SASL authentication error: Invalid password");
        // A refused login stays the finding when the disconnects that follow it are logged.
        c.log(RDKafkaLogLevel::Info, "FAIL", "b:1/bootstrap: Disconnected: connection closed by peer");
        let hint = c.hint();
        assert!(
            hint.contains("refused the login: SASL authentication error") && hint.contains("sasl.password"),
            "{hint}"
        );
        c.log(RDKafkaLogLevel::Info, "METADATA", "not a connection failure");
        assert_eq!(c.hint(), hint);
    }
}
