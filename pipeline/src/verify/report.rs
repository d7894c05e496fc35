//! The audit's report and its set computation, and how records are identified as frames.

use std::collections::{HashMap, HashSet};

use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use serde::Serialize;

use crate::codec::{dlq, Frame};

/// Raw record counts and redeliveries, for diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopicCounts {
    /// Records read from `images`.
    pub images_records: u64,
    /// Records read from `detections`.
    pub detections_records: u64,
    /// Records read from `images.dlq`.
    pub dlq_records: u64,
    /// `detections` records beyond one per frame (redeliveries / aborted transactions seen).
    pub detections_redelivered: u64,
    /// `images.dlq` records beyond one per frame.
    pub dlq_redelivered: u64,
}

/// The audit's result (printed as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub frames: u64,
    pub results: u64,
    pub rows: u64,
    pub dlq: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub unexpected: u64,
    /// Results the sink could not decode and set aside (`sink_rejects`).
    pub sink_rejects: u64,
    pub topics: TopicCounts,
    /// Up to 10 missing frame ids, for diagnosis.
    pub missing_sample: Vec<String>,
    /// Up to 10 duplicated frame ids.
    pub duplicate_sample: Vec<String>,
    /// Whether the run is exact.
    pub exact: bool,
}

/// The set computation, separated from I/O so it can be tested.
pub(super) fn audit(
    frames: &HashSet<String>,
    result_ids: &HashSet<String>,
    row_ids: &[String],
    dlq_ids: &HashSet<String>,
) -> VerifyReport {
    let mut row_counts: HashMap<&str, u64> = HashMap::new();
    for id in row_ids {
        *row_counts.entry(id.as_str()).or_default() += 1;
    }
    let mut duplicate_ids: Vec<String> =
        row_counts.iter().filter(|(id, n)| **n > 1 || dlq_ids.contains(**id)).map(|(id, _)| id.to_string()).collect();
    duplicate_ids.sort();
    let duplicates: u64 = row_counts.iter().map(|(id, n)| (n - 1) + u64::from(dlq_ids.contains(*id))).sum();
    let mut missing_ids: Vec<String> =
        frames.iter().filter(|id| !row_counts.contains_key(id.as_str()) && !dlq_ids.contains(*id)).cloned().collect();
    missing_ids.sort();
    let unexpected = row_counts.keys().filter(|id| !frames.contains(**id)).count()
        + dlq_ids.iter().filter(|id| !frames.contains(*id)).count();
    let mut report = VerifyReport {
        frames: frames.len() as u64,
        results: result_ids.len() as u64,
        rows: row_ids.len() as u64,
        dlq: dlq_ids.len() as u64,
        duplicates,
        missing: missing_ids.len() as u64,
        unexpected: unexpected as u64,
        missing_sample: missing_ids.into_iter().take(10).collect(),
        duplicate_sample: duplicate_ids.into_iter().take(10).collect(),
        ..Default::default()
    };
    report.exact = report.rows + report.dlq == report.frames
        && report.duplicates == 0
        && report.missing == 0
        && report.unexpected == 0;
    report
}

pub(super) fn frame_identity(message: &BorrowedMessage<'_>) -> String {
    match message.payload().map(Frame::decode) {
        Some(Ok(frame)) => frame.frame_id,
        _ => format!("images/{}/{}", message.partition(), message.offset()),
    }
}

pub(super) fn dlq_identity(message: &BorrowedMessage<'_>) -> String {
    if let Some(Ok(frame)) = message.payload().map(Frame::decode) {
        return frame.frame_id;
    }
    let header = |name: &str| -> Option<String> {
        message
            .headers()?
            .iter()
            .filter(|h| h.key == name)
            .last()
            .and_then(|h| h.value.and_then(|v| std::str::from_utf8(v).ok().map(str::to_string)))
    };
    match (header(dlq::HEADER_SOURCE_PARTITION), header(dlq::HEADER_SOURCE_OFFSET)) {
        (Some(p), Some(o)) => format!("images/{p}/{o}"),
        _ => format!("dlq/{}/{}", message.partition(), message.offset()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn rows(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_run() {
        let r = audit(&set(&["a", "b", "c"]), &set(&["a", "b"]), &rows(&["a", "b"]), &set(&["c"]));
        assert_eq!((r.frames, r.rows, r.dlq, r.duplicates, r.missing, r.unexpected), (3, 2, 1, 0, 0, 0));
        assert!(r.exact);
    }

    #[test]
    fn missing_duplicated_and_unexpected_are_sets() {
        // b is lost; a has a row and a dead letter; z is not a frame of this run.
        let r = audit(&set(&["a", "b", "c"]), &set(&["a"]), &rows(&["a", "z"]), &set(&["a", "c"]));
        assert_eq!(r.missing, 1);
        assert_eq!(r.missing_sample, ["b"]);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.duplicate_sample, ["a"]);
        assert_eq!(r.unexpected, 1);
        assert!(!r.exact);
        // rows + dlq == frames by count, but not by identity: still not exact.
        let r = audit(&set(&["a", "b"]), &set(&[]), &rows(&["a", "x"]), &set(&[]));
        assert_eq!(r.rows + r.dlq, r.frames);
        assert!(!r.exact);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let json = serde_json::to_value(VerifyReport::default()).unwrap();
        for key in ["frames", "results", "rows", "dlq", "duplicates", "missing"] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
