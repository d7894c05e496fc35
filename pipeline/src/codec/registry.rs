//! The Confluent Schema Registry wire format, next to Avro's single-object encoding:
//! `0x00 | schema id (4 bytes, big-endian) | Avro body`, the framing most Kafka users'
//! Avro serializers write. Any registry with the Confluent API serves it (Confluent's own,
//! Apicurio's `/apis/ccompat/v7`, Karapace).
//!
//! Reading: a registry id is resolved once per process (`GET /schemas/ids/{id}`) and
//! matched to a schema this build knows by its Parsing Canonical Form fingerprint, so any
//! text of an equivalent schema resolves, whoever registered it. Writing (opt-in,
//! `kafka.schema_registry.write`): the current schema is registered under the topic's
//! `<topic>-value` subject at start, and records carry its id.
//!
//! The lookup of an id not seen before is a blocking HTTP request (bounded by
//! `kafka.schema_registry.timeout_ms`) made where the record is decoded; it happens once per
//! id and process (answers are cached, failures are not: the next record asks again), and
//! the ids Vigil registers itself are known from the start. The registry is process-wide
//! state because the codec is called from every stage without a handle to pass around;
//! one process reads through one registry.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use serde::Deserialize;

use super::canonical;
use super::schema::RecordType;
use super::CodecError;
use crate::kafka::SchemaRegistryConfig;

/// First byte of a Confluent-framed value.
pub(crate) const CONFLUENT_MAGIC: u8 = 0;
/// Magic byte and schema id.
pub(crate) const CONFLUENT_HEADER_LEN: usize = 5;

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// The registry did not answer, or answered an error.
    #[error("schema registry {url}: {reason}")]
    Request { url: String, reason: String },
    /// `configure` was called twice with different settings (one registry per process).
    #[error("a schema registry is already configured for this process ({0})")]
    AlreadyConfigured(String),
}

struct Registry {
    config: SchemaRegistryConfig,
    agent: ureq::Agent,
    /// Registry id → the fingerprint of the schema it names (`None`: not one we know).
    ids: RwLock<HashMap<u32, Option<u64>>>,
    /// The id each record type is written with (`write` on).
    writes: RwLock<HashMap<String, u32>>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// Makes the registry of `config` the one this process reads (and, with `write`, writes)
/// through: with `write`, registers the current schema of each `(record, topic)` under
/// `<topic>-value`; without, checks that the registry answers, so a wrong URL fails the
/// stage at start rather than dead-lettering its first records. Blocking: call it off the
/// async runtime. Nothing happens without a URL.
pub(crate) fn configure(config: &SchemaRegistryConfig, topics: &[(RecordType, &str)]) -> Result<(), RegistryError> {
    if config.url.is_empty() {
        return Ok(());
    }
    let registry = REGISTRY.get_or_init(|| Registry {
        config: config.clone(),
        agent: ureq::AgentBuilder::new().timeout(Duration::from_millis(config.timeout_ms)).build(),
        ids: RwLock::new(HashMap::new()),
        writes: RwLock::new(HashMap::new()),
    });
    if registry.config != *config {
        return Err(RegistryError::AlreadyConfigured(registry.config.url.clone()));
    }
    if !config.write {
        return registry.subjects().map(drop);
    }
    for &(record, topic) in topics {
        let current = record.schemas().current();
        let id = registry.register(&format!("{topic}-value"), current.text)?;
        registry.ids.write().unwrap_or_else(|p| p.into_inner()).insert(id, Some(current.fingerprint));
        registry.writes.write().unwrap_or_else(|p| p.into_inner()).insert(record.to_string(), id);
    }
    Ok(())
}

/// The Confluent header to write `record` with, when this process writes that framing.
pub(crate) fn write_header(record: RecordType) -> Option<[u8; CONFLUENT_HEADER_LEN]> {
    let id = *REGISTRY.get()?.writes.read().unwrap_or_else(|p| p.into_inner()).get(&record.to_string())?;
    let mut header = [CONFLUENT_MAGIC, 0, 0, 0, 0];
    header[1..].copy_from_slice(&id.to_be_bytes());
    Some(header)
}

/// The fingerprint of the schema registry id `id` names, for a `record` value.
pub(crate) fn resolve(record: RecordType, id: u32) -> Result<u64, CodecError> {
    let unknown = |reason: String| CodecError::UnknownRegistryId { expected: record, id, reason };
    let Some(registry) = REGISTRY.get() else {
        return Err(unknown(
            "no schema registry is configured: set kafka.schema_registry.url (schemas/README.md)".into(),
        ));
    };
    let cached = registry.ids.read().unwrap_or_else(|p| p.into_inner()).get(&id).copied();
    let fingerprint = match cached {
        Some(known) => known,
        None => {
            let text = off_the_runtime(|| registry.schema(id)).map_err(|e| unknown(e.to_string()))?;
            let fingerprint =
                canonical::parsing_canonical_form(&text).ok().map(|f| canonical::crc64_avro(f.as_bytes()));
            registry.ids.write().unwrap_or_else(|p| p.into_inner()).insert(id, fingerprint);
            fingerprint
        }
    };
    fingerprint.ok_or_else(|| unknown("the registry's schema for this id is not one this build knows".into()))
}

/// Runs a blocking request where the caller is: directly on a plain thread, through
/// `block_in_place` on a worker of a multi-threaded tokio runtime (so the runtime moves its
/// other tasks elsewhere while this one waits).
fn off_the_runtime<T>(request: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(request)
        }
        _ => request(),
    }
}

impl Registry {
    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.config.url.trim_end_matches('/'), path)
    }

    fn failed(&self, reason: impl std::fmt::Display) -> RegistryError {
        RegistryError::Request { url: self.config.url.clone(), reason: reason.to_string() }
    }

    /// `POST /subjects/{subject}/versions`: the id of `schema` (registered if new).
    fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let answer = self
            .agent
            .post(&self.url(&format!("subjects/{subject}/versions")))
            .set("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send_json(serde_json::json!({ "schema": schema }))
            .map_err(|e| self.failed(format!("registering {subject}: {e}")))?;
        let registered: Registered =
            answer.into_json().map_err(|e| self.failed(format!("registering {subject}: {e}")))?;
        Ok(registered.id)
    }

    /// `GET /subjects`: the registry's subjects (a liveness check).
    fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let answer = self.agent.get(&self.url("subjects")).call().map_err(|e| self.failed(e))?;
        answer.into_json().map_err(|e| self.failed(format!("listing subjects: {e}")))
    }

    /// `GET /schemas/ids/{id}`: the schema text.
    fn schema(&self, id: u32) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct Found {
            schema: String,
        }
        let answer = self.agent.get(&self.url(&format!("schemas/ids/{id}"))).call().map_err(|e| match e {
            ureq::Error::Status(404, _) => self.failed(format!("it holds no schema with id {id}")),
            e => self.failed(e),
        })?;
        let found: Found =
            answer.into_json().map_err(|e| self.failed(format!("unreadable answer for id {id}: {e}")))?;
        Ok(found.schema)
    }
}
