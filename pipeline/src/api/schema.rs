//! The JSON bodies the API answers with. One type per body: the handlers serialize them,
//! the live stream filters them, and `/openapi.json` describes them from the same
//! definitions, so the document cannot drift from what is sent.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::reply::Refusal;
use super::results_db::{DeadLetter, SourceSummary, StoredFrame};
use crate::codec::contract;

/// A time in microseconds as RFC 3339 (UTC, microseconds).
pub(super) fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A source or frame id as the input contract allows it: not blank, no control
/// characters, at most 255 bytes of UTF-8 (JSON Schema counts characters, so the document
/// says 255 characters; an id of multi-byte characters reaches 255 bytes sooner).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub(super) struct Id(pub(super) String);

/// [`Id`]'s rule as an ECMA-262 pattern: some character that is neither white space nor
/// a control (U+0000–U+001F, U+007F–U+009F), and no control anywhere.
const ID_PATTERN: &str =
    r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$";

impl Id {
    /// The id as a source, if the input contract allows it (else 400 `invalid_source`).
    pub(super) fn as_source(&self) -> Result<&str, Refusal> {
        contract::check_source(&self.0).map_err(|e| Refusal::bad_request("invalid_source", format!("source: {e}")))?;
        Ok(&self.0)
    }

    /// The id as a frame id, if the input contract allows it (else 400 `invalid_frame_id`).
    pub(super) fn as_frame_id(&self) -> Result<&str, Refusal> {
        contract::check_frame_id(&self.0)
            .map_err(|e| Refusal::bad_request("invalid_frame_id", format!("frame_id: {e}")))?;
        Ok(&self.0)
    }
}

impl PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(contract::MAX_ID_BYTES))
            .pattern(Some(ID_PATTERN))
            .description(Some("Not blank, no control characters, at most 255 bytes of UTF-8."))
            .into()
    }
}

impl ToSchema for Id {}

/// Binary content (an image, never empty): `type: string, format: binary`.
pub(super) struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .min_length(Some(1))
            .into()
    }
}

impl ToSchema for Binary {}

/// One object the model found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(super) struct Detection {
    /// COCO class name, e.g. `dog`.
    #[schema(example = "dog")]
    pub(super) label: String,
    /// COCO class index (0–79).
    pub(super) class_id: i64,
    /// Confidence, 0 to 1.
    pub(super) score: f64,
    /// `[x_min, y_min, x_max, y_max]` in pixels of the original image.
    #[serde(rename = "box")]
    #[schema(min_items = 4, max_items = 4)]
    pub(super) bbox: Vec<f64>,
}

/// `"stored"`: the frame has a result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum StoredStatus {
    Stored,
}

/// `"dead_lettered"`: the frame could not be processed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum DeadLetteredStatus {
    DeadLettered,
}

/// A frame's stored result.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(super) struct StoredResult {
    pub(super) status: StoredStatus,
    pub(super) frame_id: String,
    pub(super) source: String,
    /// The frame's sequence number within its source (per producer session).
    pub(super) seq: i64,
    /// Image size in pixels.
    pub(super) width: i64,
    pub(super) height: i64,
    #[schema(format = DateTime)]
    pub(super) captured_at: String,
    /// When the detector ran the model on it.
    #[schema(format = DateTime)]
    pub(super) processed_at: String,
    /// When the sink stored the result.
    #[schema(format = DateTime)]
    pub(super) stored_at: String,
    /// Model name and version.
    pub(super) model: String,
    /// Frames in the model call that processed this one.
    pub(super) batch_size: i64,
    /// Duration of that model call.
    pub(super) inference_ms: f64,
    pub(super) detections: Vec<Detection>,
}

impl StoredResult {
    pub(super) fn from_row(f: &StoredFrame) -> Self {
        StoredResult {
            status: StoredStatus::Stored,
            frame_id: f.frame_id.clone(),
            source: f.source.clone(),
            seq: f.seq,
            width: f.width,
            height: f.height,
            captured_at: rfc3339(f.captured_at_us),
            processed_at: rfc3339(f.processed_at_us),
            stored_at: rfc3339(f.stored_at_us),
            model: f.model.clone(),
            batch_size: f.batch_size,
            inference_ms: f.inference_us as f64 / 1000.0,
            // The sink wrote this column from typed values; a row it could not have
            // written shows no detections rather than failing the whole answer.
            detections: serde_json::from_str(&f.detections_json).unwrap_or_default(),
        }
    }

    /// This result with only the detections `keep` accepts.
    pub(super) fn narrowed(mut self, keep: impl Fn(&Detection) -> bool) -> Self {
        self.detections.retain(keep);
        self
    }
}

#[cfg(test)]
impl StoredResult {
    /// A result of `source` with one detection per label.
    pub(super) fn example(source: &str, labels: &[&str]) -> Self {
        let detection = |label: &&str| Detection {
            label: (*label).to_owned(),
            class_id: 0,
            score: 0.5,
            bbox: vec![0.0, 0.0, 1.0, 1.0],
        };
        StoredResult {
            status: StoredStatus::Stored,
            frame_id: format!("{source}-frame"),
            source: source.to_owned(),
            seq: 0,
            width: 2,
            height: 2,
            captured_at: rfc3339(0),
            processed_at: rfc3339(0),
            stored_at: rfc3339(0),
            model: "test 1".into(),
            batch_size: 1,
            inference_ms: 1.0,
            detections: labels.iter().map(detection).collect(),
        }
    }
}

/// Why the detector refused a frame.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(super) struct DeadLetterError {
    /// Stable kind, e.g. `decode`, `oversized`, `invalid_field` (schemas/README.md lists them).
    #[schema(example = "decode")]
    pub(super) kind: String,
    pub(super) message: String,
}

/// A frame the detector sent to the dead-letter topic instead of a result.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(super) struct DeadLetteredResult {
    pub(super) status: DeadLetteredStatus,
    pub(super) frame_id: String,
    /// The frame's source, when the record named one.
    pub(super) source: Option<String>,
    #[schema(format = DateTime)]
    pub(super) stored_at: String,
    pub(super) error: DeadLetterError,
}

impl DeadLetteredResult {
    pub(super) fn from_row(d: DeadLetter) -> Self {
        DeadLetteredResult {
            status: DeadLetteredStatus::DeadLettered,
            frame_id: d.frame_id,
            source: d.source,
            stored_at: rfc3339(d.stored_at_us),
            error: DeadLetterError { kind: d.kind, message: d.message },
        }
    }
}

/// What became of a frame: `status` tells which.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum FrameResult {
    Stored(StoredResult),
    DeadLettered(DeadLetteredResult),
}

/// One page of a source's results, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DetectionsPage {
    pub(super) source: String,
    pub(super) frames: Vec<StoredResult>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub(super) next_cursor: Option<String>,
}

/// A source with stored results.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SourceInfo {
    pub(super) source: String,
    /// Frames stored.
    pub(super) frames: i64,
    #[schema(format = DateTime)]
    pub(super) last_captured_at: String,
}

impl SourceInfo {
    pub(super) fn from_row(s: &SourceSummary) -> Self {
        SourceInfo { source: s.source.clone(), frames: s.frames, last_captured_at: rfc3339(s.last_captured_at_us) }
    }
}

/// The sources with stored results, by name.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SourceList {
    pub(super) sources: Vec<SourceInfo>,
}

/// An accepted upload: the frame is on the `images` topic, acknowledged by the brokers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Accepted {
    /// Ask `GET /v1/frames/{frame_id}` for its result.
    pub(super) frame_id: String,
    pub(super) source: String,
    pub(super) seq: i64,
    /// Where the frame is in the `images` topic.
    pub(super) partition: i32,
    pub(super) offset: i64,
}

/// A refused or failed request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct ErrorBody {
    pub(super) error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct ErrorDetail {
    /// Stable, for programs to branch on: e.g. `unauthorized`, `rate_limited`, `too_large`.
    #[schema(example = "invalid_source")]
    pub(super) code: String,
    /// For people: what was wrong and what to do.
    pub(super) message: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_700_000_000_123_456), "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn a_stored_row_reads_as_the_documented_json() {
        let row = StoredFrame {
            frame_id: "f-1".into(),
            source: "cam-1".into(),
            seq: 3,
            width: 640,
            height: 480,
            captured_at_us: 1_700_000_000_000_000,
            processed_at_us: 1_700_000_000_100_000,
            stored_at_us: 1_700_000_000_200_000,
            model: "nanodet-plus-m 1".into(),
            batch_size: 2,
            inference_us: 25_500,
            image_partition: 0,
            image_offset: 7,
            detections_json: r#"[{"label":"dog","class_id":16,"score":0.9,"box":[1.0,2.0,3.0,4.0]}]"#.into(),
        };
        let json = serde_json::to_value(FrameResult::Stored(StoredResult::from_row(&row))).unwrap();
        assert_eq!(json["status"], "stored");
        assert_eq!(json["inference_ms"], 25.5);
        assert_eq!(json["stored_at"], "2023-11-14T22:13:20.200000Z");
        assert_eq!(
            json["detections"],
            json!([{"label": "dog", "class_id": 16, "score": 0.9, "box": [1.0, 2.0, 3.0, 4.0]}])
        );
        let dead = DeadLetter {
            frame_id: "f-2".into(),
            source: None,
            kind: "decode".into(),
            message: "not an image".into(),
            stored_at_us: 0,
        };
        let json = serde_json::to_value(FrameResult::DeadLettered(DeadLetteredResult::from_row(dead))).unwrap();
        assert_eq!(json["status"], "dead_lettered");
        assert_eq!(json["error"], json!({"kind": "decode", "message": "not an image"}));
        assert_eq!(json["source"], json!(null));
    }
}
