//! Embedded schemas, fingerprints and the generic single-object encode/decode.

use std::fmt;
use std::io::{Cursor, ErrorKind, Read};
use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{canonical, registry, CodecError};

/// The two marker bytes that open every single-object encoded value.
pub(super) const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Magic bytes and fingerprint.
pub(super) const HEADER_LEN: usize = 10;
/// Largest single allocation the Avro decoder may make for a claimed length
/// (bounds what a corrupt length prefix can cost).
const MAX_AVRO_ALLOCATION_BYTES: usize = 64 * 1024 * 1024;

/// Which record a value is supposed to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    Frame,
    DetectionResult,
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::Frame => "Frame",
            RecordType::DetectionResult => "DetectionResult",
        })
    }
}

/// A parsed schema with its fingerprints.
pub(crate) struct KnownSchema {
    pub(crate) schema: Schema,
    /// The `.avsc` text, as embedded (what is registered in a schema registry).
    pub(crate) text: &'static str,
    /// The Parsing Canonical Form, per the specification.
    pub(crate) canonical_form: String,
    /// CRC-64-AVRO of `canonical_form`: what this build writes, and what every conformant
    /// client (Java's `BinaryMessageEncoder`, fastavro, …) writes and expects.
    pub(crate) fingerprint: u64,
    /// The fingerprint Vigil wrote before it followed the specification (apache-avro's
    /// canonical form keeps `{"type":"long"}` for a logical type): still read, since
    /// users' topics hold such records, never written.
    pub(crate) legacy_fingerprint: u64,
}

impl KnownSchema {
    fn parse(record: RecordType, text: &'static str) -> Self {
        // The schemas are embedded at build time and covered by tests: failing here is a
        // build defect, not a runtime condition.
        let schema = Schema::parse_str(text).unwrap_or_else(|e| panic!("embedded {record} schema is invalid: {e}"));
        let canonical_form = canonical::parsing_canonical_form(text)
            .unwrap_or_else(|e| panic!("embedded {record} schema is invalid: {e}"));
        let fingerprint = canonical::crc64_avro(canonical_form.as_bytes());
        let legacy = schema.fingerprint::<Rabin>();
        let legacy_fingerprint =
            u64::from_le_bytes(legacy.bytes[..8].try_into().expect("Rabin fingerprints are 8 bytes"));
        Self { schema, text, canonical_form, fingerprint, legacy_fingerprint }
    }

    fn written_with(&self, fingerprint: u64) -> bool {
        fingerprint == self.fingerprint || fingerprint == self.legacy_fingerprint
    }
}

/// The schemas of one record type: the current one (written by this build, and the
/// reader schema) and every writer schema this build can still read (current first).
pub(crate) struct SchemaSet {
    pub(crate) record: RecordType,
    pub(crate) writers: Vec<KnownSchema>,
}

impl SchemaSet {
    fn new(record: RecordType, texts: &[&'static str]) -> Self {
        apache_avro::max_allocation_bytes(MAX_AVRO_ALLOCATION_BYTES);
        Self { record, writers: texts.iter().map(|t| KnownSchema::parse(record, t)).collect() }
    }

    pub(crate) fn current(&self) -> &KnownSchema {
        &self.writers[0]
    }

    /// Encodes `value` with the current schema, header included.
    pub(crate) fn encode<T: Serialize>(&self, value: &T, size_hint: usize) -> Result<Vec<u8>, CodecError> {
        let current = self.current();
        let mut out = Vec::with_capacity(HEADER_LEN + size_hint);
        match registry::write_header(self.record) {
            Some(header) => out.extend_from_slice(&header),
            None => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&current.fingerprint.to_le_bytes());
            }
        }
        apache_avro::write_avro_datum_ref(&current.schema, value, &mut out)
            .map_err(|e| CodecError::Encode { record: self.record, reason: e.to_string() })?;
        Ok(out)
    }

    /// Decodes a single-object value written with any known schema version, resolved to
    /// the current schema.
    pub(crate) fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (fingerprint, header_len) = match bytes {
            [registry::CONFLUENT_MAGIC, a, b, c, d, ..] => {
                (registry::resolve(self.record, u32::from_be_bytes([*a, *b, *c, *d]))?, registry::CONFLUENT_HEADER_LEN)
            }
            _ => (fingerprint_of(bytes)?, HEADER_LEN),
        };
        let writer = self
            .writers
            .iter()
            .find(|s| s.written_with(fingerprint))
            .ok_or(CodecError::UnknownSchema { expected: self.record, fingerprint })?;
        let bad = |reason: String| CodecError::BadRecord { record: self.record, reason };
        let mut body = NoShortReads(Cursor::new(&bytes[header_len..]));
        let value = apache_avro::from_avro_datum(&writer.schema, &mut body, Some(&self.current().schema))
            .map_err(|e| bad(e.to_string()))?;
        let trailing = bytes.len() - header_len - body.0.position() as usize;
        if trailing != 0 {
            return Err(bad(format!("{trailing} trailing bytes after the record")));
        }
        apache_avro::from_value::<T>(&value).map_err(|e| bad(e.to_string()))
    }
}

/// A body reader that reports running out of bytes as invalid data, not end of input:
/// apache-avro reads a string or a union index cut by the end of input as `null` (leniency
/// for truncated streams), so a record cut inside a trailing `["null", "string"]` field
/// would otherwise decode, with the field silently null.
struct NoShortReads<'a>(Cursor<&'a [u8]>);

impl Read for NoShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let left = self.0.get_ref().len().saturating_sub(self.0.position() as usize);
        if left < buf.len() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("the record ends {} bytes early", buf.len() - left),
            ));
        }
        self.0.read_exact(buf)
    }
}

/// Reads the schema fingerprint from a single-object header, without decoding the body.
pub(super) fn fingerprint_of(bytes: &[u8]) -> Result<u64, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::NotAvro {
            reason: format!("{} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len()),
        });
    }
    if bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(CodecError::NotAvro {
            reason: format!("starts with {:#04x} {:#04x}, expected 0xc3 0x01", bytes[0], bytes[1]),
        });
    }
    Ok(u64::from_le_bytes(bytes[2..HEADER_LEN].try_into().expect("8 bytes")))
}

/// `Frame` schemas: current first, then older versions still readable (`schemas/history/`).
pub(crate) static FRAME: LazyLock<SchemaSet> = LazyLock::new(|| {
    SchemaSet::new(
        RecordType::Frame,
        &[include_str!("../../../schemas/Frame.avsc"), include_str!("../../../schemas/history/Frame.v1.avsc")],
    )
});

/// `DetectionResult` schemas: current first, then older versions still readable.
pub(crate) static DETECTION_RESULT: LazyLock<SchemaSet> = LazyLock::new(|| {
    SchemaSet::new(RecordType::DetectionResult, &[include_str!("../../../schemas/DetectionResult.avsc")])
});

impl RecordType {
    /// Every record type of the wire format.
    pub(crate) const ALL: [RecordType; 2] = [RecordType::Frame, RecordType::DetectionResult];

    /// Fingerprint of the schema this build writes for the record type.
    pub fn current_fingerprint(self) -> u64 {
        self.schemas().current().fingerprint
    }

    /// The current schema's Parsing Canonical Form.
    pub fn canonical_schema(self) -> String {
        self.schemas().current().canonical_form.clone()
    }

    /// Every schema version this build reads, current first.
    pub(crate) fn schemas(self) -> &'static SchemaSet {
        match self {
            RecordType::Frame => &FRAME,
            RecordType::DetectionResult => &DETECTION_RESULT,
        }
    }
}
