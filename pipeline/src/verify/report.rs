//! The audit's report and its set computation, and how records are identified as frames.

use std::collections::{BTreeMap, HashMap, HashSet};

use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use serde::Serialize;

use super::gaps::{lost_frames, Sequence};
use crate::codec::{dlq, DetectionResult, Frame};

/// Raw record counts and redeliveries, for diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopicCounts {
    /// Records read from `images`.
    pub images_records: u64,
    /// Records read from `detections`.
    pub detections_records: u64,
    /// Records read from `images.dlq`.
    pub dlq_records: u64,
    /// Results beyond one per `images` record (redeliveries, or aborted transactions seen).
    pub detections_redelivered: u64,
    /// Dead letters beyond one per `images` record.
    pub dlq_redelivered: u64,
    /// Records deleted from the head of `images` partitions (the sum of their log start
    /// offsets), read or not.
    pub images_deleted: u64,
    /// Of those, records no outcome names: deleted before anything read them (in `missing`).
    pub lost_before_read: u64,
    /// Frames missing from a producer session's sequence numbers (in `missing`).
    pub sequence_gaps: u64,
}

/// The audit's result (printed as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub frames: u64,
    pub results: u64,
    pub rows: u64,
    pub dlq: u64,
    /// Frames with more than one final outcome (a row and a dead letter).
    pub duplicates: u64,
    pub missing: u64,
    pub unexpected: u64,
    /// Committed results and dead letters beyond one per `images` record (a result and a
    /// dead letter for one record count too): what exactly-once topics never hold.
    pub topic_duplicates: u64,
    /// `images` records beyond one per `frame_id`: a frame sent twice on purpose. Each copy
    /// is processed, the database keeps one row; not a duplicate.
    pub input_resends: u64,
    /// Partitions of `detections` and `images.dlq` whose last stable offset stayed below
    /// the high watermark until the audit gave up: a transaction left open.
    pub open_transactions: u64,
    /// Results the sink could not decode and set aside (`sink_rejects`).
    pub sink_rejects: u64,
    /// The frames of `dlq` by their dead letter's `vigil.error.kind` (`unknown` without
    /// one); the counts add up to `dlq`. Bad input (`not_avro`, `corrupt_image`, …) apart
    /// from frames the detector chose not to infer (`expired`, `shed`: the overload
    /// policy), which are accounted for like any other dead letter.
    pub dead_letters_by_kind: BTreeMap<String, u64>,
    pub topics: TopicCounts,
    /// Up to 10 missing frames, for diagnosis: frame ids, `images/<partition>/<offset>`
    /// (deleted before it was read) or `<source>/<session>/<seq>` (never in `images`).
    pub missing_sample: Vec<String>,
    /// Up to 10 duplicated frame ids.
    pub duplicate_sample: Vec<String>,
    /// Up to 10 `images/<partition>/<offset>` records with more than one topic outcome.
    pub topic_duplicate_sample: Vec<String>,
    /// Whether topic duplicates and open transactions fail the verdict (`--topics-exact`).
    pub topics_exact: bool,
    /// Whether the run is exact.
    pub exact: bool,
}

/// Where a record of `images` is: `(partition, offset)`.
pub(super) type Position = (i32, i64);

/// One record of `images`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ImageRecord {
    pub position: Position,
    /// The frame's identity ([`image_record`]).
    pub frame: String,
    /// Its source, session and sequence number, when it is a `Frame` with a session.
    pub sequence: Option<Sequence>,
}

/// One outcome in a topic: a result in `detections` or a dead letter in `images.dlq`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TopicOutcome {
    /// The frame's identity.
    pub frame: String,
    /// The `images` record it is the outcome of, when the record says.
    pub source: Option<Position>,
    /// A dead letter's `vigil.error.kind`.
    pub kind: Option<String>,
}

/// What the audit reads, separated from I/O so the computation can be tested.
#[derive(Debug, Clone, Default)]
pub(super) struct Evidence {
    pub images: Vec<ImageRecord>,
    /// Decodable results.
    pub results: Vec<TopicOutcome>,
    pub dead_letters: Vec<TopicOutcome>,
    /// `frame_id` of every database row.
    pub rows: Vec<String>,
    /// Partitions of the output topics left with an open transaction.
    pub open_transactions: u64,
    /// Log start offsets (low watermarks) of the `images` partitions that have lost their
    /// head (start > 0).
    pub log_start: HashMap<i32, i64>,
}

/// How many of `items` are beyond one per distinct value, and the values seen more than once.
fn beyond_one<K: std::hash::Hash + Eq + Clone>(items: impl IntoIterator<Item = K>) -> (u64, Vec<K>) {
    let mut counts: HashMap<K, u64> = HashMap::new();
    for k in items {
        *counts.entry(k).or_default() += 1;
    }
    let extra = counts.values().map(|n| n - 1).sum();
    (extra, counts.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k).collect())
}

/// The set computation. `topics_exact`: topic duplicates and open transactions fail the
/// verdict (real Kafka, exactly-once detectors); otherwise they are only reported, because
/// at-least-once detectors and the in-memory broker (no read_committed filtering) leave
/// redeliveries in the topics that the sink's idempotent insert removes.
pub(super) fn audit(evidence: &Evidence, topics_exact: bool) -> VerifyReport {
    let resolved = resolve_dead_letters(evidence);
    let evidence = &resolved;
    let lost = lost_frames(evidence);
    let frames: HashSet<&str> = evidence
        .images
        .iter()
        .map(|r| r.frame.as_str())
        .chain(lost.known_from_outcomes.iter().map(String::as_str))
        .collect();
    let result_ids: HashSet<&str> = evidence.results.iter().map(|r| r.frame.as_str()).collect();
    let dlq_ids: HashSet<&str> = evidence.dead_letters.iter().map(|r| r.frame.as_str()).collect();
    let row_ids = &evidence.rows;

    let mut row_counts: HashMap<&str, u64> = HashMap::new();
    for id in row_ids {
        *row_counts.entry(id.as_str()).or_default() += 1;
    }
    let mut duplicate_ids: Vec<String> =
        row_counts.iter().filter(|(id, n)| **n > 1 || dlq_ids.contains(**id)).map(|(id, _)| id.to_string()).collect();
    duplicate_ids.sort();
    let duplicates: u64 = row_counts.iter().map(|(id, n)| (n - 1) + u64::from(dlq_ids.contains(*id))).sum();
    let mut missing_ids: Vec<String> = frames
        .iter()
        .filter(|id| !row_counts.contains_key(**id) && !dlq_ids.contains(**id))
        .map(|id| id.to_string())
        .collect();
    missing_ids.extend(lost.sample.iter().cloned());
    missing_ids.sort();
    let unexpected = row_counts.keys().filter(|id| !frames.contains(**id)).count()
        + dlq_ids.iter().filter(|id| !frames.contains(**id)).count();

    let positions = |outcomes: &[TopicOutcome]| outcomes.iter().filter_map(|o| o.source).collect::<Vec<Position>>();
    let (detections_redelivered, _) = beyond_one(positions(&evidence.results));
    let (dlq_redelivered, _) = beyond_one(positions(&evidence.dead_letters));
    let (topic_duplicates, mut twice) =
        beyond_one(positions(&evidence.results).into_iter().chain(positions(&evidence.dead_letters)));
    twice.sort();
    let (input_resends, _) = beyond_one(evidence.images.iter().map(|r| r.frame.as_str()));
    // One kind per frame (its last dead letter's), so that the counts add up to `dlq`.
    let kind_of: HashMap<&str, &str> =
        evidence.dead_letters.iter().map(|d| (d.frame.as_str(), d.kind.as_deref().unwrap_or("unknown"))).collect();
    let mut dead_letters_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for kind in kind_of.values() {
        *dead_letters_by_kind.entry(kind.to_string()).or_default() += 1;
    }

    let missing = missing_ids.len() as u64 - lost.sample.len() as u64 + lost.head + lost.gaps;
    let mut report = VerifyReport {
        frames: frames.len() as u64 + lost.head + lost.gaps,
        results: result_ids.len() as u64,
        rows: row_ids.len() as u64,
        dlq: dlq_ids.len() as u64,
        duplicates,
        missing,
        unexpected: unexpected as u64,
        topic_duplicates,
        input_resends,
        open_transactions: evidence.open_transactions,
        dead_letters_by_kind,
        topics: TopicCounts {
            images_records: evidence.images.len() as u64,
            detections_redelivered,
            dlq_redelivered,
            images_deleted: evidence.log_start.values().map(|start| u64::try_from(*start).unwrap_or(0)).sum(),
            lost_before_read: lost.head,
            sequence_gaps: lost.gaps,
            ..TopicCounts::default()
        },
        missing_sample: missing_ids.into_iter().take(10).collect(),
        duplicate_sample: duplicate_ids.into_iter().take(10).collect(),
        topic_duplicate_sample: twice.into_iter().take(10).map(|(p, o)| format!("images/{p}/{o}")).collect(),
        topics_exact,
        ..Default::default()
    };
    let topics_clean = report.topic_duplicates == 0 && report.open_transactions == 0;
    report.exact = report.rows + report.dlq == report.frames
        && report.duplicates == 0
        && report.missing == 0
        && report.unexpected == 0
        && (topics_clean || !topics_exact);
    report
}

/// `evidence` with each dead letter named by position (its value does not decode as a
/// `Frame`: truncated to fit the DLQ, or not a frame at all) renamed after the `images`
/// record at that position, whose identity may be its `frame_id`.
fn resolve_dead_letters(evidence: &Evidence) -> Evidence {
    let by_position: HashMap<Position, &str> = evidence.images.iter().map(|r| (r.position, r.frame.as_str())).collect();
    let mut resolved = evidence.clone();
    for d in &mut resolved.dead_letters {
        let Some((p, o)) = d.source else { continue };
        if d.frame == format!("images/{p}/{o}") {
            if let Some(frame) = by_position.get(&(p, o)) {
                d.frame = frame.to_string();
            }
        }
    }
    resolved
}

/// An `images` record: identified by its `frame_id`, or by its position when it is not a
/// decodable `Frame`; with its sequence when the frame has a session.
pub(super) fn image_record(message: &BorrowedMessage<'_>) -> ImageRecord {
    let position = (message.partition(), message.offset());
    match message.payload().map(Frame::decode) {
        Some(Ok(frame)) => {
            let sequence = frame.session.map(|session| Sequence { source: frame.source, session, seq: frame.seq });
            ImageRecord { position, frame: frame.frame_id, sequence }
        }
        _ => ImageRecord { position, frame: format!("images/{}/{}", position.0, position.1), sequence: None },
    }
}

/// A `detections` record, when it is a `DetectionResult`.
pub(super) fn result_outcome(message: &BorrowedMessage<'_>) -> Option<TopicOutcome> {
    let result = DetectionResult::decode(message.payload()?).ok()?;
    Some(TopicOutcome {
        frame: result.frame_id,
        source: Some((result.source_partition, result.source_offset)),
        kind: None,
    })
}

/// An `images.dlq` record: the original record's `frame_id` when it is a whole `Frame`,
/// else (not a frame, or truncated: `vigil.dlq.truncated`) `images/<partition>/<offset>`
/// from its `vigil.source.*` headers, which [`audit`] resolves to that record's identity;
/// the headers also say which `images` record it is the outcome of.
pub(super) fn dead_letter(message: &BorrowedMessage<'_>) -> TopicOutcome {
    let header = |name: &str| -> Option<String> {
        message
            .headers()?
            .iter()
            .filter(|h| h.key == name)
            .last()
            .and_then(|h| h.value.and_then(|v| std::str::from_utf8(v).ok().map(str::to_string)))
    };
    let source = match (header(dlq::HEADER_SOURCE_PARTITION), header(dlq::HEADER_SOURCE_OFFSET)) {
        (Some(p), Some(o)) => p.parse().ok().zip(o.parse().ok()),
        _ => None,
    };
    let truncated = header(dlq::HEADER_TRUNCATED).is_some_and(|v| v == "true");
    let payload = message.payload().filter(|_| !truncated);
    let frame = match (payload.map(Frame::decode), source) {
        (Some(Ok(frame)), _) => frame.frame_id,
        (_, Some((p, o))) => format!("images/{p}/{o}"),
        _ => format!("dlq/{}/{}", message.partition(), message.offset()),
    };
    TopicOutcome { frame, source, kind: header(dlq::HEADER_ERROR_KIND) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(frame: &str, offset: i64) -> ImageRecord {
        ImageRecord { position: (0, offset), frame: frame.into(), sequence: None }
    }

    fn outcome(frame: &str, offset: i64) -> TopicOutcome {
        TopicOutcome { frame: frame.into(), source: Some((0, offset)), kind: None }
    }

    /// Frames a, b, c at images 0/0..0/2; results and rows for `rows`, dead letters for `dead`.
    fn evidence(rows: &[&str], dead: &[&str]) -> Evidence {
        let offset = |id: &str| i64::from(id.as_bytes()[0] - b'a');
        Evidence {
            images: ["a", "b", "c"].iter().map(|id| image(id, offset(id))).collect(),
            results: rows.iter().filter(|id| **id != "z").map(|id| outcome(id, offset(id))).collect(),
            dead_letters: dead.iter().map(|id| outcome(id, offset(id))).collect(),
            rows: rows.iter().map(|s| s.to_string()).collect(),
            ..Evidence::default()
        }
    }

    #[test]
    fn exact_run() {
        let r = audit(&evidence(&["a", "b"], &["c"]), true);
        assert_eq!((r.frames, r.rows, r.dlq, r.duplicates, r.missing, r.unexpected), (3, 2, 1, 0, 0, 0));
        assert_eq!((r.topic_duplicates, r.input_resends, r.open_transactions), (0, 0, 0));
        assert!(r.exact);
    }

    /// A dead letter that does not decode (truncated to fit the DLQ) is the outcome of
    /// the `images` record its headers name, whatever that record's identity.
    #[test]
    fn an_undecodable_dead_letter_is_resolved_through_its_source() {
        let mut e = evidence(&["a", "b"], &[]);
        e.dead_letters.push(TopicOutcome { frame: "images/0/2".into(), source: Some((0, 2)), kind: None });
        let r = audit(&e, true);
        assert_eq!((r.frames, r.rows, r.dlq, r.missing, r.unexpected), (3, 2, 1, 0, 0), "{r:?}");
        assert!(r.exact);
    }

    #[test]
    fn missing_duplicated_and_unexpected_are_sets() {
        // b is lost; a has a row and a dead letter; z is not a frame of this run.
        let r = audit(&evidence(&["a", "z"], &["a", "c"]), false);
        assert_eq!(r.missing, 1);
        assert_eq!(r.missing_sample, ["b"]);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.duplicate_sample, ["a"]);
        assert_eq!(r.unexpected, 1);
        assert!(!r.exact);
        // rows + dlq == frames by count, but not by identity: still not exact.
        let mut e = evidence(&["a"], &[]);
        e.images.truncate(2);
        e.rows.push("x".into());
        let r = audit(&e, false);
        assert_eq!(r.rows + r.dlq, r.frames);
        assert!(!r.exact);
    }

    #[test]
    fn topic_duplicates_are_outcomes_beyond_one_per_images_record() {
        let mut e = evidence(&["a", "b"], &["c"]);
        // a: a second result; b: a dead letter besides its result; c: a second dead letter.
        e.results.push(outcome("a", 0));
        e.dead_letters.push(outcome("b", 1));
        e.dead_letters.push(outcome("c", 2));
        let r = audit(&e, false);
        assert_eq!(r.topic_duplicates, 3, "{r:?}");
        assert_eq!(r.topic_duplicate_sample, ["images/0/0", "images/0/1", "images/0/2"]);
        assert_eq!((r.topics.detections_redelivered, r.topics.dlq_redelivered), (1, 1));
        // b has a row and a dead letter: an outcome duplicate as well.
        assert_eq!(r.duplicates, 1);
        // Only the outcome duplicate fails the default verdict: drop it and the run is exact
        // unless --topics-exact.
        e.dead_letters.retain(|d| d.frame != "b");
        assert!(audit(&e, false).exact);
        let strict = audit(&e, true);
        assert_eq!(strict.topic_duplicates, 2);
        assert!(!strict.exact);
    }

    #[test]
    fn an_input_resend_is_not_a_duplicate() {
        let mut e = evidence(&["a", "b", "c"], &[]);
        // c sent again as images 0/3, with its own result: one row.
        e.images.push(image("c", 3));
        e.results.push(outcome("c", 3));
        let r = audit(&e, true);
        assert_eq!((r.frames, r.input_resends, r.topic_duplicates, r.duplicates), (3, 1, 0, 0), "{r:?}");
        assert!(r.exact);
    }

    #[test]
    fn open_transactions_fail_only_topics_exact() {
        let mut e = evidence(&["a", "b", "c"], &[]);
        e.open_transactions = 1;
        assert!(audit(&e, false).exact);
        assert!(!audit(&e, true).exact);
    }

    #[test]
    fn frames_known_from_outcomes_and_lost_frames_count() {
        // a and b (images 0/0, 0/1) were deleted after their results were written.
        let mut e = evidence(&["a", "b", "c"], &[]);
        e.images.retain(|r| r.frame == "c");
        e.log_start = [(0, 2)].into();
        let r = audit(&e, false);
        assert_eq!((r.frames, r.missing, r.unexpected), (3, 0, 0), "{r:?}");
        assert!(r.exact);
        // Without b's result nothing names images 0/1: deleted before it was read.
        e.results.retain(|o| o.frame != "b");
        e.rows.retain(|id| id != "b");
        let r = audit(&e, false);
        assert_eq!((r.frames, r.rows, r.missing, r.topics.lost_before_read), (3, 2, 1, 1), "{r:?}");
        assert_eq!(r.missing_sample, ["images/0/1"]);
        assert!(!r.exact);
    }

    #[test]
    fn json_has_the_documented_keys() {
        let json = serde_json::to_value(VerifyReport::default()).unwrap();
        for key in [
            "frames",
            "results",
            "rows",
            "dlq",
            "duplicates",
            "missing",
            "unexpected",
            "topic_duplicates",
            "input_resends",
            "open_transactions",
            "dead_letters_by_kind",
            "topics_exact",
            "exact",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
