//! Overload policy: which records of a batch are not worth inferring.
//!
//! A live camera's frame is worth little once it is old, and one busy camera must not
//! take every slot of every batch. Both are decided per batch, on the model thread, just
//! before decoding (`judge::process`), and both end in a dead letter, never in a skipped
//! record: every record of a batch still gets exactly one verdict and is committed with
//! it, so offsets stay exact and `vigil verify` accounts for every frame.
//!
//! - `detector.max_frame_age_ms`: a record whose Kafka timestamp is older than this when
//!   its batch reaches the model is dead-lettered as `expired`, neither decoded nor
//!   inferred. The Kafka timestamp, not the frame's `captured_at_us`: it needs no
//!   decoding (a backlog is cleared at the cost of reading it), it exists for every
//!   record, whatever it holds, and it measures the time the record spent in the pipeline
//!   (`vigil produce` sends a frame as it captures it; with `LogAppendTime` topics it is the
//!   broker's clock, immune to camera clock skew). A record without a timestamp, or with
//!   one in the future, never expires.
//! - `detector.max_frames_per_source`: when a batch holds more records of one source (the
//!   record key) than this, its oldest extras are dead-lettered as `shed`; the newest
//!   ones are inferred. A camera sending faster than its share then costs its own frames,
//!   not the others' latency.
//!
//! 0 turns either off (the default): a replay or backfill of old frames would otherwise be
//! dead-lettered wholesale.

use std::collections::HashMap;

use super::judge::Verdict;
use super::model_thread::InputRecord;
use super::DetectorConfig;
use crate::codec::kinds;

/// The overload settings the model thread applies (0: off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Overload {
    pub(crate) max_frame_age_ms: u64,
    pub(crate) max_frames_per_source: usize,
}

impl Overload {
    pub(crate) fn of(cfg: &DetectorConfig) -> Self {
        Overload { max_frame_age_ms: cfg.max_frame_age_ms, max_frames_per_source: cfg.max_frames_per_source }
    }

    /// The dead letter this policy gives each record of `records` (a batch, in the order
    /// read), `None` for those that go on to be judged. `now_ms`: the wall clock, ms.
    pub(crate) fn verdicts(&self, records: &[InputRecord], now_ms: i64) -> Vec<Option<Verdict>> {
        let mut verdicts: Vec<Option<Verdict>> = records.iter().map(|r| self.expired(r, now_ms)).collect();
        if self.max_frames_per_source == 0 {
            return verdicts;
        }
        // Per source, the records still to infer, oldest first (a batch holds each
        // partition's records in offset order, and a source's records share a partition).
        let mut by_source: HashMap<Option<&[u8]>, Vec<usize>> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            if verdicts[i].is_none() {
                by_source.entry(r.key.as_deref()).or_default().push(i);
            }
        }
        for indexes in by_source.values() {
            let extras = indexes.len().saturating_sub(self.max_frames_per_source);
            for &i in &indexes[..extras] {
                verdicts[i] = Some(Verdict::DeadLetter {
                    kind: kinds::SHED,
                    message: format!(
                        "{} records of this source in the batch, above detector.max_frames_per_source = {}: the oldest are shed",
                        indexes.len(),
                        self.max_frames_per_source
                    ),
                });
            }
        }
        verdicts
    }

    fn expired(&self, record: &InputRecord, now_ms: i64) -> Option<Verdict> {
        if self.max_frame_age_ms == 0 {
            return None;
        }
        let age_ms = now_ms.saturating_sub(record.timestamp_ms?);
        (age_ms > self.max_frame_age_ms as i64).then(|| Verdict::DeadLetter {
            kind: kinds::EXPIRED,
            message: format!(
                "record is {age_ms} ms old when it reached the model, above detector.max_frame_age_ms = {}",
                self.max_frame_age_ms
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, key: &str, timestamp_ms: Option<i64>) -> InputRecord {
        InputRecord {
            partition: 0,
            offset,
            key: Some(key.as_bytes().to_vec()),
            payload: None,
            headers: vec![],
            epoch: 0,
            timestamp_ms,
            trace: Default::default(),
        }
    }

    fn kinds(verdicts: &[Option<Verdict>]) -> Vec<&str> {
        verdicts
            .iter()
            .map(|v| match v {
                None => "judge",
                Some(Verdict::DeadLetter { kind, .. }) => kind,
                Some(Verdict::Result { .. }) => "result",
            })
            .collect()
    }

    #[test]
    fn off_by_default() {
        let records = [rec(0, "a", Some(0)), rec(1, "a", Some(0)), rec(2, "a", None)];
        assert_eq!(kinds(&Overload::default().verdicts(&records, i64::MAX)), ["judge"; 3]);
    }

    #[test]
    fn old_records_expire_and_those_without_a_usable_timestamp_do_not() {
        let policy = Overload { max_frame_age_ms: 1_000, max_frames_per_source: 0 };
        let now = 10_000;
        let records =
            [rec(0, "a", Some(8_999)), rec(1, "a", Some(9_000)), rec(2, "a", None), rec(3, "a", Some(20_000))];
        assert_eq!(kinds(&policy.verdicts(&records, now)), ["expired", "judge", "judge", "judge"]);
    }

    #[test]
    fn a_busy_source_sheds_its_oldest_extras_and_the_others_keep_theirs() {
        let policy = Overload { max_frame_age_ms: 0, max_frames_per_source: 2 };
        let records = [
            rec(0, "busy", None),
            rec(1, "busy", None),
            rec(2, "quiet", None),
            rec(3, "busy", None),
            rec(4, "busy", None),
            rec(5, "quiet", None),
        ];
        assert_eq!(kinds(&policy.verdicts(&records, 0)), ["shed", "shed", "judge", "judge", "judge", "judge"]);
    }

    #[test]
    fn expired_records_do_not_count_against_the_source() {
        let policy = Overload { max_frame_age_ms: 100, max_frames_per_source: 1 };
        let records = [rec(0, "a", Some(0)), rec(1, "a", Some(950)), rec(2, "a", Some(990))];
        assert_eq!(kinds(&policy.verdicts(&records, 1_000)), ["expired", "shed", "judge"]);
    }
}
