//! Dead letters: the original `images` record, unchanged, plus these headers; or, when
//! the whole record would not fit the dead-letter topic, the record truncated and flagged
//! (see [`HEADER_TRUNCATED`] and `schemas/README.md`).

use sha2::{Digest, Sha256};

/// Stable error kind (e.g. `not_avro`, `unknown_schema`, `bad_record`, or a detector kind).
pub(crate) const HEADER_ERROR_KIND: &str = "vigil.error.kind";
/// Human-readable error message.
pub(crate) const HEADER_ERROR_MESSAGE: &str = "vigil.error.message";
/// Partition of the original record in `images` (decimal string).
pub(crate) const HEADER_SOURCE_PARTITION: &str = "vigil.source.partition";
/// Offset of the original record in `images` (decimal string).
pub(crate) const HEADER_SOURCE_OFFSET: &str = "vigil.source.offset";

/// `true` on a dead letter whose payload was cut to fit the dead-letter topic: the value
/// is a prefix of the original, which [`HEADER_ORIGINAL_BYTES`] and [`HEADER_SHA256`]
/// describe. (When even the key and the original headers do not leave room, the original
/// headers are dropped and the key cut too.)
pub(crate) const HEADER_TRUNCATED: &str = "vigil.dlq.truncated";
/// Length of the original value in bytes (decimal string); `0` for a record without one.
pub(crate) const HEADER_ORIGINAL_BYTES: &str = "vigil.dlq.original_bytes";
/// SHA-256 of the original value, lower-case hex: what the truncated payload was cut from.
pub(crate) const HEADER_SHA256: &str = "vigil.dlq.sha256";

/// Longest `vigil.error.message` written, in bytes (messages are truncated on a char boundary).
pub(crate) const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// Bytes a record may take on the wire beyond its key, value and header names and values:
/// the record batch's header (61 bytes), the record's varints and attributes, two length
/// varints per header, and what a compression codec may add to incompressible bytes. The
/// real cost is under 200 bytes for a record alone in its batch; this is a margin.
pub(crate) const RECORD_OVERHEAD_BYTES: usize = 1024;
/// Per header, on top of [`RECORD_OVERHEAD_BYTES`]: its two length varints.
const HEADER_OVERHEAD_BYTES: usize = 10;

/// The dead-letter headers of one record, as `(name, value)` pairs ready to add to Kafka
/// headers (after the original record's own headers, which are kept).
pub(crate) fn error_headers(kind: &str, message: &str, partition: i32, offset: i64) -> [(&'static str, String); 4] {
    let mut end = message.len().min(MAX_ERROR_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    [
        (HEADER_ERROR_KIND, kind.to_string()),
        (HEADER_ERROR_MESSAGE, message[..end].to_string()),
        (HEADER_SOURCE_PARTITION, partition.to_string()),
        (HEADER_SOURCE_OFFSET, offset.to_string()),
    ]
}

/// The headers that flag a truncated dead letter of `original` (the record's value).
pub(crate) fn truncation_headers(original: &[u8]) -> [(&'static str, String); 3] {
    [
        (HEADER_TRUNCATED, "true".to_string()),
        (HEADER_ORIGINAL_BYTES, original.len().to_string()),
        (HEADER_SHA256, sha256_hex(original)),
    ]
}

/// Lower-case hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What a record costs against a `max.message.bytes` limit (the broker's, per batch, or
/// the producer's): key, value, header names and values, plus the framing margin.
pub(crate) fn record_size(key: usize, value: usize, headers: impl IntoIterator<Item = (usize, usize)>) -> usize {
    let headers: usize = headers.into_iter().map(|(name, value)| name + value + HEADER_OVERHEAD_BYTES).sum();
    RECORD_OVERHEAD_BYTES + key + value + headers
}

/// The parts of a truncated dead letter that fit `limit` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Whether the original record's headers are kept.
    pub(crate) original_headers: bool,
    /// Bytes of the key kept (a prefix).
    pub(crate) key: usize,
    /// Bytes of the value kept (a prefix).
    pub(crate) value: usize,
}

/// Sizes (in bytes) of the parts of a dead letter, for [`cut_to_fit`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts {
    pub(crate) key: usize,
    pub(crate) value: usize,
    /// Names and values of the original headers, with their per-header overhead
    /// ([`record_size`] of no key and no value, less [`RECORD_OVERHEAD_BYTES`]).
    pub(crate) original_headers: usize,
    /// The same for the `vigil.*` headers, truncation headers included.
    pub(crate) vigil_headers: usize,
}

/// How much of a dead letter to keep so that it fits `limit`: the value is cut first;
/// when the key and headers alone leave no room, the original headers go, then the key
/// is cut. The `vigil.*` headers always stay (the record would say nothing without them),
/// so a `limit` below their size gives an empty key and value that may still not fit.
pub(crate) fn cut_to_fit(parts: Parts, limit: usize) -> Cut {
    let fixed = RECORD_OVERHEAD_BYTES + parts.vigil_headers;
    let room = limit.saturating_sub(fixed);
    if parts.key + parts.original_headers <= room {
        let value = parts.value.min(room - parts.key - parts.original_headers);
        return Cut { original_headers: true, key: parts.key, value };
    }
    if parts.key <= room {
        return Cut { original_headers: false, key: parts.key, value: parts.value.min(room - parts.key) };
    }
    Cut { original_headers: false, key: room, value: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_position_and_truncate_message() {
        let long = "é".repeat(1000);
        let h = error_headers("not_avro", &long, 3, 42);
        assert_eq!(h[0], (HEADER_ERROR_KIND, "not_avro".to_string()));
        assert!(h[1].1.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert_eq!(h[2].1, "3");
        assert_eq!(h[3].1, "42");
    }

    #[test]
    fn truncation_headers_describe_the_original() {
        let h = truncation_headers(b"abc");
        assert_eq!(h[0], (HEADER_TRUNCATED, "true".to_string()));
        assert_eq!(h[1], (HEADER_ORIGINAL_BYTES, "3".to_string()));
        // FIPS 180-2's example.
        assert_eq!(h[2].1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_hex(b"").len(), 64);
    }

    #[test]
    fn a_cut_record_fits_its_limit_value_first_then_headers_then_key() {
        let parts = Parts { key: 100, value: 200_000, original_headers: 300, vigil_headers: 1_500 };
        let size = |c: Cut| {
            RECORD_OVERHEAD_BYTES
                + c.key
                + c.value
                + if c.original_headers { parts.original_headers } else { 0 }
                + parts.vigil_headers
        };
        // Room for everything but part of the value: only the value is cut, to the byte.
        let cut = cut_to_fit(parts, 65_536);
        assert!(cut.original_headers && cut.key == 100);
        assert_eq!(size(cut), 65_536);
        // Room for the vigil headers and the key only: the original headers go.
        let cut = cut_to_fit(parts, RECORD_OVERHEAD_BYTES + 1_500 + 150);
        assert_eq!(cut, Cut { original_headers: false, key: 100, value: 50 });
        // Not even the key: it is cut, the value is empty.
        let cut = cut_to_fit(parts, RECORD_OVERHEAD_BYTES + 1_500 + 40);
        assert_eq!(cut, Cut { original_headers: false, key: 40, value: 0 });
        // A value that fits whole is kept whole.
        let small = Parts { value: 10, ..parts };
        assert_eq!(cut_to_fit(small, 65_536), Cut { original_headers: true, key: 100, value: 10 });
        for limit in [0, 1, 2_000, 3_000, 50_000, 1 << 20] {
            let cut = cut_to_fit(parts, limit);
            assert!(size(cut) <= limit.max(RECORD_OVERHEAD_BYTES + parts.vigil_headers), "limit {limit}: {cut:?}");
        }
    }
}
