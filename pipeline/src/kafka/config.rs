//! Kafka connection and topic configuration (the `[kafka]` section).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// How to reach Kafka and which topics the pipeline uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (`--bootstrap` overrides it).
    pub bootstrap_servers: String,
    /// Topic names and partition counts.
    pub topics: TopicsConfig,
    /// Largest record the producers may send and the topics accept (producer
    /// `message.max.bytes`, topic `max.message.bytes`), bytes.
    pub max_message_bytes: u32,
    /// Timeout of admin and metadata requests (topic creation, watermarks), milliseconds.
    pub operation_timeout_ms: u64,
    /// The stages' consumers' `fetch.wait.max.ms`: how long a broker may hold a fetch that
    /// finds nothing new. Kafka answers as soon as data arrives, so 500 ms costs nothing
    /// there; the embedded broker (librdkafka's mock) holds the fetch the whole time even
    /// when records arrive meanwhile, so `vigil up` and `vigil bench pipeline` set 5 ms
    /// for it (each hop would otherwise add up to this much latency).
    pub fetch_wait_max_ms: u64,
    /// Create missing topics at start-up through the admin API (skipped with a warning
    /// when the broker does not implement CreateTopics, e.g. the librdkafka mock).
    pub create_topics: bool,
    /// Any librdkafka property, passed to every client (e.g. `security.protocol`,
    /// `sasl.mechanisms`). In TOML: `[kafka.client]` then `"sasl.mechanisms" = "PLAIN"` or
    /// `sasl.mechanisms = "PLAIN"`; in the environment: `VIGIL__KAFKA__CLIENT__SASL__MECHANISMS`
    /// (`__` stands for a dot). Properties a stage's guarantees depend on (`group.id`,
    /// `transactional.id`, `isolation.level`, `enable.idempotence`, `acks`,
    /// `enable.auto.commit`) are always set by the stage and win over these.
    #[serde(deserialize_with = "deserialize_client_properties")]
    pub client: BTreeMap<String, String>,
    /// A schema registry with the Confluent API (`[kafka.schema_registry]`), for values in
    /// its wire format (see `schemas/README.md`).
    pub schema_registry: SchemaRegistryConfig,
}

/// Room for key and headers on top of the largest record, when a dead letter carries the
/// original bytes: the DLQ is created accepting this much more than `images`.
pub(crate) const DLQ_HEADROOM_BYTES: u32 = 1024 * 1024;

impl KafkaConfig {
    /// The largest record Vigil sends to `topic` (the producers' `message.max.bytes`):
    /// `max_message_bytes`, and for the dead-letter topic that plus
    /// [`DLQ_HEADROOM_BYTES`], so that a dead letter of the largest frame (the original
    /// record plus error headers) can be sent whole. (A missing DLQ is created accepting
    /// what `images` accepts plus the headroom, see `topics::creation_limits`.)
    pub(crate) fn topic_max_message_bytes(&self, topic: &TopicConfig) -> u32 {
        if topic.name == self.topics.dlq.name {
            self.max_message_bytes.saturating_add(DLQ_HEADROOM_BYTES)
        } else {
            self.max_message_bytes
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topics: TopicsConfig::default(),
            max_message_bytes: 32 * 1024 * 1024,
            operation_timeout_ms: 10_000,
            fetch_wait_max_ms: 500,
            create_topics: true,
            client: BTreeMap::new(),
            schema_registry: SchemaRegistryConfig::default(),
        }
    }
}

/// The `[kafka.schema_registry]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL of a registry with the Confluent API, e.g. `http://127.0.0.1:8081` or
    /// Apicurio's `http://127.0.0.1:8080/apis/ccompat/v7`; empty: no registry (records in
    /// the Confluent framing are then dead-lettered as `unknown_schema`).
    pub url: String,
    /// Write the Confluent framing (with the id of the current schema, registered under
    /// `<topic>-value`) instead of the single-object encoding. Readers accept both.
    pub write: bool,
    /// Timeout of one registry request, milliseconds.
    pub timeout_ms: u64,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self { url: String::new(), write: false, timeout_ms: 5_000 }
    }
}

/// The pipeline's three topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Input frames (`vigil produce` → `vigil detect`).
    pub images: TopicConfig,
    /// One result per frame (`vigil detect` → `vigil sink`, `vigil tail`).
    pub detections: TopicConfig,
    /// Frames that cannot be processed, original bytes plus error headers.
    pub dlq: TopicConfig,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            images: TopicConfig::new("images", 12),
            detections: TopicConfig::new("detections", 12),
            dlq: TopicConfig::new("images.dlq", 3),
        }
    }
}

impl TopicsConfig {
    /// All three, in pipeline order.
    pub fn all(&self) -> [&TopicConfig; 3] {
        [&self.images, &self.detections, &self.dlq]
    }
}

/// One topic: name, and how to create it when it is missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// Partition count used when the topic is created (existing topics are left as they are).
    pub partitions: i32,
    /// Replication factor used when the topic is created; -1 = the broker's default.
    pub replication_factor: i32,
}

impl TopicConfig {
    fn new(name: &str, partitions: i32) -> Self {
        Self { name: name.into(), partitions, replication_factor: -1 }
    }
}

impl KafkaConfig {
    /// `operation_timeout_ms` as a duration.
    pub fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }

    /// Checks values; errors name the key. Client properties are checked against
    /// librdkafka itself, so a misspelt property fails here, not at first use.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(("kafka.bootstrap_servers".into(), "must not be empty".into()));
        }
        for (field, topic) in
            [("images", &self.topics.images), ("detections", &self.topics.detections), ("dlq", &self.topics.dlq)]
        {
            if !valid_topic_name(&topic.name) {
                return Err((
                    format!("kafka.topics.{field}.name"),
                    format!("{:?} is not a valid topic name (1-249 of [a-zA-Z0-9._-])", topic.name),
                ));
            }
            if topic.partitions < 1 {
                return Err((format!("kafka.topics.{field}.partitions"), format!("{} must be >= 1", topic.partitions)));
            }
            if topic.replication_factor == 0 || topic.replication_factor < -1 {
                return Err((
                    format!("kafka.topics.{field}.replication_factor"),
                    format!("{} must be >= 1, or -1 for the broker default", topic.replication_factor),
                ));
            }
        }
        let names = [&self.topics.images.name, &self.topics.detections.name, &self.topics.dlq.name];
        if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
            return Err(("kafka.topics".into(), "images, detections and dlq must be three different topics".into()));
        }
        if !(1024..=1_000_000_000).contains(&self.max_message_bytes) {
            return Err((
                "kafka.max_message_bytes".into(),
                format!("{} is outside 1024..=1000000000", self.max_message_bytes),
            ));
        }
        if self.operation_timeout_ms == 0 {
            return Err(("kafka.operation_timeout_ms".into(), "must be > 0".into()));
        }
        if !(1..=300_000).contains(&self.fetch_wait_max_ms) {
            return Err(("kafka.fetch_wait_max_ms".into(), "must be 1..=300000".into()));
        }
        let mut probe = rdkafka::ClientConfig::new();
        for (key, value) in &self.client {
            if key == "bootstrap.servers" || key == "metadata.broker.list" {
                return Err((
                    format!("kafka.client.{key}"),
                    "set kafka.bootstrap_servers (or --bootstrap) instead".into(),
                ));
            }
            probe.set(key, value);
        }
        if let Err(e) = probe.create_native_config() {
            let key = match &e {
                rdkafka::error::KafkaError::ClientConfig(_, _, key, _) => {
                    format!("kafka.client.{key}")
                }
                _ => "kafka.client".into(),
            };
            return Err((key, e.to_string()));
        }
        Ok(())
    }
}

fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A `[kafka.client]` value: scalars, or nested tables from dotted TOML keys / `__` in env.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Table(BTreeMap<String, ClientValue>),
}

fn flatten(prefix: &str, value: ClientValue, out: &mut BTreeMap<String, String>) {
    let joined = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        ClientValue::Table(map) => {
            for (k, v) in map {
                flatten(&joined(&k), v, out);
            }
        }
        ClientValue::Bool(b) => {
            out.insert(prefix.to_string(), b.to_string());
        }
        ClientValue::Int(i) => {
            out.insert(prefix.to_string(), i.to_string());
        }
        ClientValue::Float(f) => {
            out.insert(prefix.to_string(), f.to_string());
        }
        ClientValue::Str(s) => {
            out.insert(prefix.to_string(), s);
        }
    }
}

/// Accepts `sasl.mechanisms = "PLAIN"` (a nested table), `"sasl.mechanisms" = "PLAIN"`, and
/// env `VIGIL__KAFKA__CLIENT__SASL__MECHANISMS`, all as the flat property `sasl.mechanisms`.
fn deserialize_client_properties<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let tree = BTreeMap::<String, ClientValue>::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten("", ClientValue::Table(tree), &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dlq_accepts_a_dead_letter_of_the_largest_record() {
        let kafka = KafkaConfig::default();
        assert_eq!(kafka.topic_max_message_bytes(&kafka.topics.images), kafka.max_message_bytes);
        assert_eq!(kafka.topic_max_message_bytes(&kafka.topics.detections), kafka.max_message_bytes);
        assert_eq!(kafka.topic_max_message_bytes(&kafka.topics.dlq), kafka.max_message_bytes + DLQ_HEADROOM_BYTES);
    }
}
