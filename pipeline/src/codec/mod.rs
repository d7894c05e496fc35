//! The wire format: Avro single-object encoding of [`Frame`] and [`DetectionResult`].
//!
//! Schemas live in `schemas/*.avsc` (embedded at build time); values are encoded and
//! decoded only through `apache-avro`. Every value is
//! `0xC3 0x01 | CRC-64-AVRO fingerprint (8 bytes, little-endian) | Avro body`, so a reader
//! rejects non-Avro bytes and unknown schemas with a typed [`CodecError`] whose
//! [`kind`](CodecError::kind) goes into the dead-letter headers ([`dlq`]).
//!
//! Schema evolution rules: `schemas/README.md`. What a frame must satisfy beyond its
//! schema: [`contract`]. Every dead-letter kind: [`kinds`].

mod canonical;
pub(crate) mod contract;
pub(crate) mod dlq;
mod frame;
pub(crate) mod kinds;
pub(crate) mod registry;
mod result;
mod schema;
#[cfg(test)]
mod schema_history;

pub(crate) use contract::ContractError;
pub(crate) use frame::{Frame, ImageEncoding};
pub(crate) use result::{DetectedObject, DetectionResult};
#[cfg(test)]
use schema::fingerprint_of;
pub(crate) use schema::RecordType;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not start with the single-object header: not a Vigil record at all.
    #[error("not an Avro single-object record: {reason}")]
    NotAvro { reason: String },
    /// A well-formed header whose fingerprint this build does not know: written with a
    /// schema that is newer than this reader (roll readers out first) or not ours.
    #[error("unknown {expected} schema fingerprint {fingerprint:#018x}: written with a schema this build does not know (deploy readers before writers, see schemas/README.md)")]
    UnknownSchema { expected: RecordType, fingerprint: u64 },
    /// Confluent Schema Registry framing with a schema id that names no schema this build
    /// knows, or that cannot be looked up.
    #[error("{expected} record in the Confluent Schema Registry framing, schema id {id}: {reason}")]
    UnknownRegistryId { expected: RecordType, id: u32, reason: String },
    /// Header known, body does not decode (truncated, trailing bytes, values out of range).
    #[error("malformed {record} record: {reason}")]
    BadRecord { record: RecordType, reason: String },
    /// Encoding failed: the value does not fit its schema (a bug, not bad input).
    #[error("cannot encode {record}: {reason}")]
    Encode { record: RecordType, reason: String },
}

impl CodecError {
    /// Stable, low-cardinality name of the error, used as the `vigil.error.kind` DLQ
    /// header and as a metric label ([`kinds`]).
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::NotAvro { .. } => kinds::NOT_AVRO,
            CodecError::UnknownSchema { .. } | CodecError::UnknownRegistryId { .. } => kinds::UNKNOWN_SCHEMA,
            CodecError::BadRecord { .. } => kinds::BAD_RECORD,
            CodecError::Encode { .. } => kinds::ENCODE,
        }
    }
}

impl ContractError {
    /// The dead-letter kind of every contract violation: [`kinds::INVALID_FIELD`].
    pub fn kind(&self) -> &'static str {
        kinds::INVALID_FIELD
    }
}

/// Microseconds since the Unix epoch, now (the unit of every `*_at_us` field).
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
