//! Frames that no topic holds any more. Counting frames from what `images` still holds
//! misses a frame that was deleted before anything read it (librdkafka's mock deletes the
//! oldest records of a partition beyond 5 MiB, whether read or not; retention does the same
//! on Kafka) and a frame that never reached the topic. The records themselves say what
//! should be there:
//!
//! - **the log start rule**: offsets below a partition's log start offset (its low
//!   watermark) were records once; each needs an outcome that names it (a result's
//!   `source_partition`/`source_offset`, a dead letter's `vigil.source.*` headers), else
//!   it was deleted before it was read. Applies to every record, old producers' included.
//! - **the sequence rule**: a producer session numbers each source's frames 0, 1, 2, …
//!   (`Frame.session`, `Frame.seq`), so a hole between the numbers still in `images` is a
//!   frame that never got there, and so are the first numbers when nothing was deleted
//!   from the partition's head (otherwise the log start rule already counts them).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::report::{Evidence, Position};

/// What a frame's `session` and `seq` say, from a decodable `Frame` that has a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sequence {
    pub source: String,
    pub session: String,
    pub seq: i64,
}

/// Frames found lost, and frames known only from their outcomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Lost {
    /// Records below a log start offset that no outcome names.
    pub head: u64,
    /// Sequence numbers missing from a (source, session).
    pub gaps: u64,
    /// Frames whose `images` record was deleted after it was read: their outcomes (a result
    /// or a dead letter naming a position below the log start) make them frames of the run.
    pub known_from_outcomes: HashSet<String>,
    /// Up to 10 lost frames: `images/<partition>/<offset>` or `<source>/<session>/<seq>`.
    pub sample: Vec<String>,
}

const SAMPLE: usize = 10;

/// Applies both rules to `evidence`.
pub(super) fn lost_frames(evidence: &Evidence) -> Lost {
    let mut lost = Lost::default();
    let below_start = |(p, o): Position| o < evidence.log_start.get(&p).copied().unwrap_or(0);
    let mut named: HashSet<Position> = HashSet::new();
    for outcome in evidence.results.iter().chain(&evidence.dead_letters) {
        if let Some(position) = outcome.source.filter(|pos| below_start(*pos)) {
            named.insert(position);
            lost.known_from_outcomes.insert(outcome.frame.clone());
        }
    }
    let mut starts: Vec<(i32, i64)> = evidence.log_start.iter().map(|(p, o)| (*p, *o)).collect();
    starts.sort_unstable();
    for (p, start) in starts {
        let named_here = named.iter().filter(|(np, _)| *np == p).count() as i64;
        lost.head += u64::try_from(start - named_here).unwrap_or(0);
        let unnamed = (0..start).filter(|o| !named.contains(&(p, *o)));
        let room = SAMPLE.saturating_sub(lost.sample.len());
        lost.sample.extend(unnamed.take(room).map(|o| format!("images/{p}/{o}")));
    }

    let mut sessions: BTreeMap<(&str, &str), (i32, BTreeSet<i64>)> = BTreeMap::new();
    for record in &evidence.images {
        if let Some(s) = &record.sequence {
            let entry =
                sessions.entry((s.source.as_str(), s.session.as_str())).or_insert((record.position.0, BTreeSet::new()));
            entry.1.insert(s.seq);
        }
    }
    for ((source, session), (partition, seqs)) in sessions {
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else { continue };
        let head_deleted = evidence.log_start.get(&partition).is_some_and(|start| *start > 0);
        let from = if head_deleted { first } else { 0 };
        lost.gaps += u64::try_from(last - from + 1).unwrap_or(0).saturating_sub(seqs.len() as u64);
        let room = SAMPLE.saturating_sub(lost.sample.len());
        let holes = (from..=last).filter(|seq| !seqs.contains(seq)).take(room);
        lost.sample.extend(holes.map(|seq| format!("{source}/{session}/{seq}")));
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::report::{ImageRecord, TopicOutcome};

    fn image(offset: i64, source: &str, session: &str, seq: i64) -> ImageRecord {
        let sequence = Some(Sequence { source: source.into(), session: session.into(), seq });
        ImageRecord { position: (0, offset), frame: format!("f{offset}"), sequence }
    }

    #[test]
    fn holes_in_a_session_are_lost_frames() {
        // Session s1 of cam-a: 0, 1, 3, 6 (2, 4, 5 never arrived); s2 starts at 2 with
        // nothing deleted from the partition (0 and 1 never arrived either).
        let e = Evidence {
            images: vec![
                image(0, "cam-a", "s1", 0),
                image(1, "cam-a", "s1", 1),
                image(2, "cam-a", "s1", 3),
                image(3, "cam-a", "s1", 6),
                image(4, "cam-a", "s2", 2),
            ],
            ..Evidence::default()
        };
        let lost = lost_frames(&e);
        assert_eq!((lost.head, lost.gaps), (0, 5), "{lost:?}");
        assert_eq!(lost.sample, ["cam-a/s1/2", "cam-a/s1/4", "cam-a/s1/5", "cam-a/s2/0", "cam-a/s2/1"]);
    }

    #[test]
    fn one_source_in_two_sessions_is_two_sequences() {
        let e = Evidence {
            images: vec![image(0, "cam-a", "s1", 0), image(1, "cam-a", "s2", 0), image(2, "cam-a", "s1", 1)],
            ..Evidence::default()
        };
        assert_eq!(lost_frames(&e), Lost::default());
    }

    #[test]
    fn deleted_records_need_an_outcome_that_names_them() {
        // Offsets 0..5 deleted from partition 0; 0 and 2 have results, 3 a dead letter.
        let outcome = |frame: &str, offset| TopicOutcome { frame: frame.into(), source: Some((0, offset)), kind: None };
        let e = Evidence {
            images: vec![image(5, "cam-a", "s1", 5), image(6, "cam-a", "s1", 6)],
            results: vec![outcome("f0", 0), outcome("f2", 2), outcome("f2", 2), outcome("f5", 5)],
            dead_letters: vec![outcome("f3", 3)],
            log_start: [(0, 5)].into(),
            ..Evidence::default()
        };
        let lost = lost_frames(&e);
        // 1 and 4 were deleted before anything read them; seqs 0..5 of s1 are the same
        // records, counted once (by the log start rule).
        assert_eq!((lost.head, lost.gaps), (2, 0), "{lost:?}");
        assert_eq!(lost.sample, ["images/0/1", "images/0/4"]);
        let known: BTreeSet<&str> = lost.known_from_outcomes.iter().map(String::as_str).collect();
        assert_eq!(known, BTreeSet::from(["f0", "f2", "f3"]));
    }

    #[test]
    fn frames_without_a_session_are_checked_by_the_log_start_rule_only() {
        let old = |offset: i64| ImageRecord { position: (1, offset), frame: format!("f{offset}"), sequence: None };
        let e = Evidence { images: vec![old(3), old(7)], log_start: [(1, 3)].into(), ..Evidence::default() };
        let lost = lost_frames(&e);
        assert_eq!((lost.head, lost.gaps), (3, 0), "{lost:?}");
    }
}
