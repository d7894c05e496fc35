//! The input contract: what a `Frame` must satisfy wherever it enters Vigil (`vigil
//! produce` before it sends, the detector right after it decodes a record, and an HTTP
//! API when there is one), so that every stage refuses the same inputs with the same
//! message. A frame that breaks it would otherwise be judged, then refused by the
//! database (PostgreSQL cannot store U+0000 in `text`, and limits an index entry's size),
//! one insert at a time.
//!
//! - `source` and `frame_id`: not blank, at most [`MAX_ID_BYTES`] bytes of UTF-8, no
//!   control characters (U+0000–U+001F, U+007F–U+009F: they break logs and keys, and
//!   U+0000 cannot be stored);
//! - the record's size: at most `detector.max_record_bytes` (the detector dead-letters a
//!   larger record as `oversized` before decoding it; the producer warns when it sends one);
//! - the image's pixels: within `detector.decode` ([`crate::model::DecodeLimits`]: a
//!   larger image is `too_large`). Only the detector decodes, so only it checks them.
//!
//! A frame that breaks the field rules is dead-lettered as
//! [`kinds::INVALID_FIELD`](super::kinds::INVALID_FIELD).

use super::Frame;

/// Longest `source` or `frame_id`, in bytes of UTF-8: far below PostgreSQL's btree
/// index entry limit (about 2700 bytes), and ample for a camera name or a UUID.
pub(crate) const MAX_ID_BYTES: usize = 255;

/// How a field breaks the input contract; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("{field} is blank: every frame needs a non-empty {field}")]
    Blank { field: &'static str },
    #[error(
        "{field} is {bytes} bytes of UTF-8, above the limit of {max} bytes: use a shorter {field} \
         (it starts {start:?})",
        max = MAX_ID_BYTES
    )]
    TooLong { field: &'static str, bytes: usize, start: String },
    #[error(
        "{field} {value:?} holds the control character {character:?} at byte {at}: {field}s must be printable \
         text (U+0000 cannot even be stored); remove it"
    )]
    ControlCharacter { field: &'static str, value: String, character: char, at: usize },
}

/// Checks a source (camera) id: the record key, and a column of every row.
pub(crate) fn check_source(source: &str) -> Result<(), ContractError> {
    check_id("source", source)
}

/// Checks a frame id: the idempotency key downstream, the table's primary key.
pub(crate) fn check_frame_id(frame_id: &str) -> Result<(), ContractError> {
    check_id("frame_id", frame_id)
}

/// Checks every field of `frame` that the contract constrains.
pub(crate) fn check_frame(frame: &Frame) -> Result<(), ContractError> {
    check_source(&frame.source)?;
    check_frame_id(&frame.frame_id)
}

fn check_id(field: &'static str, value: &str) -> Result<(), ContractError> {
    if value.trim().is_empty() {
        return Err(ContractError::Blank { field });
    }
    if let Some((at, character)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(ContractError::ControlCharacter { field, value: shortened(value), character, at });
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ContractError::TooLong { field, bytes: value.len(), start: shortened(value) });
    }
    Ok(())
}

/// The first 40 characters of `value`, for a message.
fn shortened(value: &str) -> String {
    match value.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_pass() {
        for id in ["cam-0", "parking lot/north", "камера-7", "5f0c6c1e-8d4b-4f43-9d67-1b1b4f7d2a10", "x"] {
            assert_eq!(check_source(id), Ok(()), "{id}");
            assert_eq!(check_frame_id(id), Ok(()), "{id}");
        }
        assert_eq!(check_source(&"a".repeat(MAX_ID_BYTES)), Ok(()));
        // 85 three-byte characters: 255 bytes.
        assert_eq!(check_source(&"€".repeat(85)), Ok(()));
    }

    #[test]
    fn blank_ids_are_refused() {
        for id in ["", " ", "\u{3000}"] {
            assert_eq!(check_source(id), Err(ContractError::Blank { field: "source" }), "{id:?}");
        }
        assert_eq!(check_frame_id(""), Err(ContractError::Blank { field: "frame_id" }));
    }

    #[test]
    fn the_limit_counts_bytes_not_characters() {
        let err = check_source(&"€".repeat(86)).unwrap_err();
        assert!(matches!(err, ContractError::TooLong { field: "source", bytes: 258, .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("258 bytes") && message.contains("255"), "{message}");
        assert!(matches!(check_frame_id(&"a".repeat(256)), Err(ContractError::TooLong { bytes: 256, .. })));
    }

    #[test]
    fn control_characters_are_refused_with_their_position() {
        let err = check_source("cam\u{0}1").unwrap_err();
        assert_eq!(
            err,
            ContractError::ControlCharacter { field: "source", value: "cam\u{0}1".into(), character: '\0', at: 3 }
        );
        assert!(err.to_string().contains(r"'\0' at byte 3"), "{err}");
        for id in ["a\nb", "\tcam", "cam\u{7f}", "cam\u{85}", "cam\u{1b}[31m"] {
            assert!(matches!(check_frame_id(id), Err(ContractError::ControlCharacter { .. })), "{id:?}");
        }
        // A long id with a control character: the message quotes only its start.
        let long = format!("{}\u{0}", "a".repeat(300));
        let ContractError::ControlCharacter { value, at, .. } = check_source(&long).unwrap_err() else { panic!() };
        assert_eq!((value.chars().count(), at), (41, 300));
    }

    #[test]
    fn a_frame_is_checked_field_by_field() {
        let frame = crate::codec::frame::tests::sample();
        assert_eq!(check_frame(&frame), Ok(()));
        let bad_source = Frame { source: "cam\u{0}".into(), ..frame.clone() };
        assert!(matches!(check_frame(&bad_source), Err(ContractError::ControlCharacter { field: "source", .. })));
        let bad_id = Frame { frame_id: String::new(), ..frame };
        assert_eq!(check_frame(&bad_id), Err(ContractError::Blank { field: "frame_id" }));
    }
}
