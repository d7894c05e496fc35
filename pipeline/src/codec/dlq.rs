//! Dead letters: the original `images` record, unchanged, plus these headers.

/// Stable error kind (e.g. `not_avro`, `unknown_schema`, `bad_record`, or a detector kind).
pub(crate) const HEADER_ERROR_KIND: &str = "vigil.error.kind";
/// Human-readable error message.
pub(crate) const HEADER_ERROR_MESSAGE: &str = "vigil.error.message";
/// Partition of the original record in `images` (decimal string).
pub(crate) const HEADER_SOURCE_PARTITION: &str = "vigil.source.partition";
/// Offset of the original record in `images` (decimal string).
pub(crate) const HEADER_SOURCE_OFFSET: &str = "vigil.source.offset";

/// Longest `vigil.error.message` written, in bytes (messages are truncated on a char boundary).
pub(crate) const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

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
}
