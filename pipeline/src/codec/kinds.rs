//! Every dead-letter kind, defined once: the `vigil.error.kind` header of a record in
//! `images.dlq` (and the `kind` of a `sink_rejects` row the sink set aside). Users alert on
//! these strings, so an existing value never changes; a new kind is appended here and to
//! the table in `schemas/README.md` (a test compares the two).
//!
//! Where each is assigned: [`crate::codec::CodecError::kind`] (the Avro envelope),
//! [`crate::codec::ContractError`] (the input contract), [`crate::model::DecodeError::kind`]
//! (the image), the detector's judge (size, panics, the model) and overload policy
//! (`expired`, `shed`), and the sink.

/// Not an Avro single-object record: no `0xC3 0x01` marker, or shorter than the header.
pub(crate) const NOT_AVRO: &str = "not_avro";
/// A writer schema fingerprint this build does not know.
pub(crate) const UNKNOWN_SCHEMA: &str = "unknown_schema";
/// Header known, body does not decode under that schema.
pub(crate) const BAD_RECORD: &str = "bad_record";
/// A value could not be encoded: a bug, the input is kept rather than lost.
pub(crate) const ENCODE: &str = "encode";
/// A decoded `Frame` breaks the input contract (`source`, `frame_id`): see
/// [`crate::codec::contract`].
pub(crate) const INVALID_FIELD: &str = "invalid_field";
/// The record is larger than `detector.max_record_bytes` (checked before decoding).
pub(crate) const OVERSIZED: &str = "oversized";
/// The frame's `data` is empty.
pub(crate) const EMPTY: &str = "empty";
/// `data` is not JPEG, PNG, GIF, BMP or WebP.
pub(crate) const UNKNOWN_FORMAT: &str = "unknown_format";
/// The image declares more pixels than `detector.decode` allows (a decompression bomb).
pub(crate) const TOO_LARGE: &str = "too_large";
/// The image does not decode: truncated, damaged, refused by the decoder.
pub(crate) const CORRUPT_IMAGE: &str = "corrupt_image";
/// Judging the record panicked: a bug that this input triggers.
pub(crate) const PANIC: &str = "panic";
/// The model failed on this frame alone (after the batch failed and was split).
pub(crate) const INFERENCE_FAILED: &str = "inference_failed";
/// Older than `detector.max_frame_age_ms` when its batch reached the model.
pub(crate) const EXPIRED: &str = "expired";
/// One of its source's oldest records beyond `detector.max_frames_per_source` in a batch.
pub(crate) const SHED: &str = "shed";
/// The database refused a result's row (sink: `sink_rejects` only, never `images.dlq`).
pub(crate) const DB_REFUSED: &str = "db_refused";

/// Which stage assigns a kind: the `stage` column of the README table.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Any reader of a topic (detector, sink, `vigil tail`, `vigil verify`): the envelope.
    Codec,
    /// The detector, judging an `images` record.
    Detector,
    /// The sink, storing a result (`sink_rejects`).
    Sink,
}

#[cfg(test)]
impl Stage {
    /// The name in the README table.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::Codec => "codec",
            Stage::Detector => "detector",
            Stage::Sink => "sink",
        }
    }
}

/// Every kind and the stage that assigns it, in the order of the README table (only the
/// test that compares the two reads it: the constants above are what code uses).
#[cfg(test)]
pub(crate) const ALL: &[(&str, Stage)] = &[
    (NOT_AVRO, Stage::Codec),
    (UNKNOWN_SCHEMA, Stage::Codec),
    (BAD_RECORD, Stage::Codec),
    (INVALID_FIELD, Stage::Detector),
    (OVERSIZED, Stage::Detector),
    (EMPTY, Stage::Detector),
    (UNKNOWN_FORMAT, Stage::Detector),
    (TOO_LARGE, Stage::Detector),
    (CORRUPT_IMAGE, Stage::Detector),
    (PANIC, Stage::Detector),
    (INFERENCE_FAILED, Stage::Detector),
    (EXPIRED, Stage::Detector),
    (SHED, Stage::Detector),
    (ENCODE, Stage::Detector),
    (DB_REFUSED, Stage::Sink),
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The `| kind | stage | when |` rows of the dead-letter kinds table in
    /// `schemas/README.md`, as `(kind, stage)`.
    fn readme_table() -> Vec<(String, String)> {
        let readme = include_str!("../../../schemas/README.md");
        let start = readme
            .find("| `vigil.error.kind` | stage | when |")
            .expect("the kinds table's header in schemas/README.md");
        readme[start..]
            .lines()
            .skip(2) // header and |---|
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
                (cells[0].trim_matches('`').to_string(), cells[1].to_string())
            })
            .collect()
    }

    #[test]
    fn the_readme_table_lists_exactly_these_kinds_in_this_order() {
        let ours: Vec<(String, String)> = ALL.iter().map(|(k, s)| (k.to_string(), s.as_str().to_string())).collect();
        assert_eq!(readme_table(), ours, "schemas/README.md's kinds table and codec::kinds::ALL differ");
    }

    #[test]
    fn kinds_are_distinct_snake_case() {
        let names: HashSet<&str> = ALL.iter().map(|(k, _)| *k).collect();
        assert_eq!(names.len(), ALL.len(), "a kind is listed twice");
        for (kind, _) in ALL {
            assert!(kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{kind}");
        }
    }
}
