//! `Frame`: one image on the `images` topic.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::schema::FRAME;
use super::CodecError;

/// Image container format, sniffed from magic bytes (never decoded by the producer).
///
/// Variant order must match the symbol order in `schemas/Frame.avsc` (append only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum ImageEncoding {
    /// Not recognised; the detector decides (and dead-letters it if it cannot decode it).
    #[default]
    Unknown,
    Jpeg,
    Png,
    Gif,
    Bmp,
    Webp,
}

impl ImageEncoding {
    /// Recognises the container format from the first bytes of a file.
    pub(crate) fn sniff(bytes: &[u8]) -> ImageEncoding {
        match bytes {
            [0xFF, 0xD8, 0xFF, ..] => ImageEncoding::Jpeg,
            [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => ImageEncoding::Png,
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => ImageEncoding::Gif,
            [b'B', b'M', ..] if bytes.len() >= 14 => ImageEncoding::Bmp,
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => ImageEncoding::Webp,
            _ => ImageEncoding::Unknown,
        }
    }

    /// Lower-case name (`jpeg`, `png`, …, `unknown`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ImageEncoding::Unknown => "unknown",
            ImageEncoding::Jpeg => "jpeg",
            ImageEncoding::Png => "png",
            ImageEncoding::Gif => "gif",
            ImageEncoding::Bmp => "bmp",
            ImageEncoding::Webp => "webp",
        }
    }
}

impl fmt::Display for ImageEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One frame as published to `images` (schema `schemas/Frame.avsc`; key = `source`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Frame {
    /// Globally unique id (a UUID: name-based for a file, so that sending the same file
    /// again gives the same id; random for a generated image): the idempotency key
    /// downstream. Must satisfy the input contract ([`super::contract`]).
    pub frame_id: String,
    /// Camera / source id; also the record key. Must satisfy the input contract.
    pub source: String,
    /// Per-source sequence number.
    pub seq: i64,
    /// Capture time, microseconds since the Unix epoch (Avro `timestamp-micros`).
    pub captured_at_us: i64,
    /// Sniffed container format.
    pub encoding: ImageEncoding,
    /// Width in pixels, when known to the producer.
    pub width: Option<i32>,
    /// Height in pixels, when known to the producer.
    pub height: Option<i32>,
    /// The encoded image, unchanged.
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub data: Vec<u8>,
    /// Free-form metadata (e.g. `file`).
    pub attributes: HashMap<String, String>,
    /// Producer session id (a UUID per producer run): `seq` counts from 0 without gaps per
    /// (source, session), which lets an audit find frames that no reader ever saw. `None`
    /// in records written before the field existed (schema v1).
    #[serde(default)]
    pub session: Option<String>,
}

impl Frame {
    /// Encodes as Avro single-object bytes (the Kafka record value).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CodecError> {
        FRAME.encode(self, self.data.len() + 128)
    }

    /// Decodes a Kafka record value; errors carry a stable [`CodecError::kind`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Frame, CodecError> {
        FRAME.decode(bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::{fingerprint_of, RecordType};

    pub(crate) fn sample() -> Frame {
        Frame {
            frame_id: "5f0c6c1e-8d4b-4f43-9d67-1b1b4f7d2a10".into(),
            source: "cam-1".into(),
            seq: 42,
            captured_at_us: 1_700_000_000_123_456,
            encoding: ImageEncoding::Jpeg,
            width: Some(640),
            height: None,
            data: vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 1, 2, 3, 255],
            attributes: HashMap::from([("file".to_string(), "dog.jpg".to_string())]),
            session: Some("0b7e5c1e-3f0a-4d5e-9c1b-2a6f8e4d1c30".into()),
        }
    }

    #[test]
    fn roundtrip() {
        let frame = sample();
        let bytes = frame.encode().unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(fingerprint_of(&bytes).unwrap(), RecordType::Frame.current_fingerprint());
        assert_eq!(Frame::decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn roundtrip_every_encoding_and_empty_fields() {
        for encoding in [
            ImageEncoding::Unknown,
            ImageEncoding::Jpeg,
            ImageEncoding::Png,
            ImageEncoding::Gif,
            ImageEncoding::Bmp,
            ImageEncoding::Webp,
        ] {
            let frame = Frame { encoding, width: None, data: vec![], attributes: HashMap::new(), ..sample() };
            assert_eq!(Frame::decode(&frame.encode().unwrap()).unwrap(), frame);
        }
    }

    /// A `Frame` as schema v1 (`schemas/history/Frame.v1.avsc`) wrote it: no `session`.
    #[derive(Serialize)]
    struct FrameV1 {
        frame_id: String,
        source: String,
        seq: i64,
        captured_at_us: i64,
        encoding: ImageEncoding,
        width: Option<i32>,
        height: Option<i32>,
        #[serde(with = "apache_avro::serde_avro_bytes")]
        data: Vec<u8>,
        attributes: HashMap<String, String>,
    }

    #[test]
    fn a_record_written_with_schema_v1_still_decodes() {
        let v1 = crate::codec::schema::FRAME.writers.last().expect("v1 is known");
        assert_ne!(v1.fingerprint, RecordType::Frame.current_fingerprint(), "adding `session` changed the fingerprint");
        let s = sample();
        let old = FrameV1 {
            frame_id: s.frame_id.clone(),
            source: s.source.clone(),
            seq: s.seq,
            captured_at_us: s.captured_at_us,
            encoding: s.encoding,
            width: s.width,
            height: s.height,
            data: s.data.clone(),
            attributes: s.attributes.clone(),
        };
        // Written by a conformant client, and by Vigil before it followed the specification.
        for fingerprint in [v1.fingerprint, v1.legacy_fingerprint] {
            let mut bytes = vec![0xC3, 0x01];
            bytes.extend_from_slice(&fingerprint.to_le_bytes());
            apache_avro::write_avro_datum_ref(&v1.schema, &old, &mut bytes).unwrap();
            assert_eq!(Frame::decode(&bytes).unwrap(), Frame { session: None, ..s.clone() });
        }
    }

    #[test]
    fn the_conformant_fingerprint_is_written_and_the_earlier_one_still_read() {
        let current = crate::codec::schema::FRAME.current();
        assert_ne!(current.fingerprint, current.legacy_fingerprint);
        let mut bytes = sample().encode().unwrap();
        assert_eq!(bytes[2..10], current.fingerprint.to_le_bytes());
        bytes[2..10].copy_from_slice(&current.legacy_fingerprint.to_le_bytes());
        assert_eq!(Frame::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn enum_symbols_match_schema() {
        // Variant index == symbol index: guard against reordering either side.
        let schema = RecordType::Frame.canonical_schema();
        assert!(schema.contains(r#""symbols":["UNKNOWN","JPEG","PNG","GIF","BMP","WEBP"]"#), "{schema}");
    }

    #[test]
    fn unknown_fingerprint_is_rejected() {
        let mut bytes = sample().encode().unwrap();
        bytes[2] ^= 0xFF;
        let err = Frame::decode(&bytes).unwrap_err();
        assert_eq!(err.kind(), "unknown_schema", "{err}");
    }

    #[test]
    fn a_result_is_not_a_frame() {
        let bytes = crate::codec::result::tests::sample().encode().unwrap();
        assert_eq!(Frame::decode(&bytes).unwrap_err().kind(), "unknown_schema");
    }

    #[test]
    fn garbage_is_not_avro() {
        for garbage in [&b""[..], b"\xFF\xD8\xFF\xE0 a jpeg", b"hello world, not avro", b"\xC3\x01\x00"] {
            assert_eq!(Frame::decode(garbage).unwrap_err().kind(), "not_avro");
        }
    }

    /// Lib tests configure no registry (it is process-wide): `tests/schema_registry.rs`
    /// covers the framing against a real one.
    #[test]
    fn confluent_framing_without_a_registry_is_unknown_schema_and_says_what_to_set() {
        let body = &sample().encode().unwrap()[super::super::schema::HEADER_LEN..];
        let mut bytes = vec![0, 0, 0, 0, 42];
        bytes.extend_from_slice(body);
        let err = Frame::decode(&bytes).unwrap_err();
        assert_eq!(err.kind(), "unknown_schema", "{err}");
        let message = err.to_string();
        assert!(message.contains("schema id 42") && message.contains("kafka.schema_registry.url"), "{message}");
    }

    #[test]
    fn truncated_or_padded_body_is_bad_record() {
        let bytes = sample().encode().unwrap();
        // Cut inside the last field (the session string): apache-avro alone would read a
        // string or union cut by the end of input as null.
        let err = Frame::decode(&bytes[..bytes.len() - 3]).unwrap_err();
        assert_eq!(err.kind(), "bad_record", "{err}");
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(Frame::decode(&padded).unwrap_err().kind(), "bad_record");
        // Cut just before the session's union index.
        let cut = bytes.len() - 1 - 1 - sample().session.unwrap().len();
        assert_eq!(Frame::decode(&bytes[..cut]).unwrap_err().kind(), "bad_record");
        // A header followed by a huge claimed length must fail cleanly, not allocate it.
        let mut bogus = bytes[..10].to_vec();
        bogus.extend_from_slice(&[0xFE, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert_eq!(Frame::decode(&bogus).unwrap_err().kind(), "bad_record");
    }

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(ImageEncoding::sniff(b"\xFF\xD8\xFF\xDB...."), ImageEncoding::Jpeg);
        assert_eq!(ImageEncoding::sniff(b"\x89PNG\r\n\x1a\n...."), ImageEncoding::Png);
        assert_eq!(ImageEncoding::sniff(b"GIF89a......"), ImageEncoding::Gif);
        assert_eq!(ImageEncoding::sniff(b"RIFF\0\0\0\0WEBPVP8 "), ImageEncoding::Webp);
        assert_eq!(ImageEncoding::sniff(b"BM\0\0\0\0\0\0\0\0\0\0\0\0\0\0"), ImageEncoding::Bmp);
        assert_eq!(ImageEncoding::sniff(b"plain text"), ImageEncoding::Unknown);
        assert_eq!(ImageEncoding::sniff(b""), ImageEncoding::Unknown);
    }
}
