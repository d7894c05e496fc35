//! `DetectionResult`: the detector's output for one frame, on the `detections` topic.

use serde::{Deserialize, Serialize};

use super::schema::DETECTION_RESULT;
use super::CodecError;

/// One detected object; box in the original image's pixel coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectedObject {
    /// COCO class name, e.g. `person`.
    pub label: String,
    /// 0-based COCO class index.
    pub class_id: i32,
    /// Confidence in 0..1.
    pub score: f32,
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

/// The verdict on one frame (schema `schemas/DetectionResult.avsc`; key = `source`).
/// Exactly one per frame, also when `detections` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionResult {
    pub frame_id: String,
    pub source: String,
    pub seq: i64,
    /// The frame's capture time, microseconds since the Unix epoch.
    pub captured_at_us: i64,
    /// Decoded image width, pixels.
    pub width: i32,
    /// Decoded image height, pixels.
    pub height: i32,
    pub model_name: String,
    pub model_version: String,
    /// Best score first; empty when nothing was found.
    pub detections: Vec<DetectedObject>,
    /// When inference finished, microseconds since the Unix epoch.
    pub processed_at_us: i64,
    /// Frames in the inference batch.
    pub batch_size: i32,
    /// Wall time of the batch's model call, milliseconds.
    pub inference_ms: f64,
    /// Partition of the input frame in `images`.
    pub source_partition: i32,
    /// Offset of the input frame in `images`.
    pub source_offset: i64,
}

impl DetectionResult {
    /// Encodes as Avro single-object bytes (the Kafka record value).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        DETECTION_RESULT.encode(self, 256 + 48 * self.detections.len())
    }

    /// Decodes a Kafka record value; errors carry a stable [`CodecError::kind`].
    pub fn decode(bytes: &[u8]) -> Result<DetectionResult, CodecError> {
        DETECTION_RESULT.decode(bytes)
    }

    /// Capture-to-result latency in milliseconds.
    pub fn latency_ms(&self) -> f64 {
        (self.processed_at_us - self.captured_at_us) as f64 / 1000.0
    }

    /// One human-readable line (`vigil tail`, `vigil up`), e.g.
    /// `cam-0 #12  dog 0.91, bicycle 0.42  768x576  latency 250 ms  [p3@1234]`.
    pub fn line(&self) -> String {
        const SHOWN: usize = 6;
        let mut line = format!("{} #{}  ", self.source, self.seq);
        if self.detections.is_empty() {
            line.push_str("(nothing detected)");
        } else {
            let labels: Vec<String> =
                self.detections.iter().take(SHOWN).map(|d| format!("{} {:.2}", d.label, d.score)).collect();
            line.push_str(&labels.join(", "));
            if self.detections.len() > SHOWN {
                line.push_str(&format!(" (+{} more)", self.detections.len() - SHOWN));
            }
        }
        line.push_str(&format!(
            "  {}x{}  latency {:.0} ms  [p{}@{}]",
            self.width,
            self.height,
            self.latency_ms(),
            self.source_partition,
            self.source_offset
        ));
        line
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::Frame;

    pub(crate) fn sample() -> DetectionResult {
        DetectionResult {
            frame_id: "5f0c6c1e-8d4b-4f43-9d67-1b1b4f7d2a10".into(),
            source: "cam-1".into(),
            seq: 7,
            captured_at_us: 1_700_000_000_000_000,
            width: 768,
            height: 576,
            model_name: "nanodet-g".into(),
            model_version: "human-models@3.0.4".into(),
            detections: vec![
                DetectedObject {
                    label: "dog".into(),
                    class_id: 16,
                    score: 0.91,
                    x_min: 120.5,
                    y_min: 200.0,
                    x_max: 310.0,
                    y_max: 540.25,
                },
                DetectedObject {
                    label: "bicycle".into(),
                    class_id: 1,
                    score: 0.42,
                    x_min: 0.0,
                    y_min: 1.0,
                    x_max: 2.0,
                    y_max: 3.0,
                },
            ],
            processed_at_us: 1_700_000_000_250_000,
            batch_size: 8,
            inference_ms: 123.456,
            source_partition: 3,
            source_offset: 99_999,
        }
    }

    #[test]
    fn roundtrip() {
        let result = sample();
        let bytes = result.encode().unwrap();
        assert_eq!(DetectionResult::decode(&bytes).unwrap(), result);
        assert_eq!(result.latency_ms(), 250.0);
    }

    #[test]
    fn human_line() {
        let mut r = sample();
        assert_eq!(r.line(), "cam-1 #7  dog 0.91, bicycle 0.42  768x576  latency 250 ms  [p3@99999]");
        r.detections = vec![r.detections[0].clone(); 9];
        assert!(r.line().contains("(+3 more)"), "{}", r.line());
        r.detections.clear();
        assert!(r.line().contains("(nothing detected)"));
    }

    #[test]
    fn roundtrip_empty_detections() {
        let result = DetectionResult { detections: vec![], ..sample() };
        assert_eq!(DetectionResult::decode(&result.encode().unwrap()).unwrap(), result);
    }

    #[test]
    fn a_frame_is_not_a_result() {
        let frame = Frame {
            frame_id: "x".into(),
            source: "s".into(),
            seq: 0,
            captured_at_us: 0,
            encoding: Default::default(),
            width: None,
            height: None,
            data: vec![1, 2, 3],
            attributes: Default::default(),
            session: None,
        };
        let err = DetectionResult::decode(&frame.encode().unwrap()).unwrap_err();
        assert_eq!(err.kind(), "unknown_schema");
        assert!(err.to_string().contains("DetectionResult"), "{err}");
    }

    #[test]
    fn garbage_is_not_avro() {
        assert_eq!(DetectionResult::decode(b"{\"json\": true}").unwrap_err().kind(), "not_avro");
    }
}
