//! `vigil verify`: audits a run end to end with set computations on frame ids.
//!
//! - frames: distinct frames in `images` (a frame's identity is its `frame_id`, or
//!   `images/<partition>/<offset>` for a record that is not a decodable `Frame`), plus
//!   those known from outcomes after their record was deleted, plus those found lost;
//! - results: distinct `frame_id`s in `detections` (read_committed);
//! - rows: rows in the sink database's `detections` table;
//! - dlq: distinct frames in `images.dlq` (identified by the original record's
//!   `frame_id`, else by its `vigil.source.partition`/`vigil.source.offset` headers),
//!   also counted by their `vigil.error.kind` (`dead_letters_by_kind`): bad input apart
//!   from frames the overload policy did not infer (`expired`, `shed`), which are
//!   accounted-for outcomes like any dead letter;
//! - duplicates: frames with more than one final outcome (a row and a dead letter; two
//!   rows cannot happen, `frame_id` is the table's primary key);
//! - missing: frames with no outcome (neither a row nor a dead letter), including frames
//!   no topic holds any more: deleted from the head of `images` before anything read them,
//!   or never there, by their producer session's sequence numbers (`gaps`);
//! - unexpected: outcomes for frames that are not in `images` (e.g. a database reused
//!   from another run);
//! - topic_duplicates: committed results and dead letters beyond one per `images` record
//!   (partition, offset), a result and a dead letter for one record included; keyed by
//!   record, not frame id, so that
//! - input_resends (one `frame_id` in several `images` records, a frame sent twice on
//!   purpose; each copy gets its outcome, the table keeps one row) are not duplicates;
//! - open_transactions: partitions of `detections` and `images.dlq` whose last stable
//!   offset stayed below the high watermark.
//!
//! The run is exact when `rows + dlq == frames`, `duplicates == 0`, `missing == 0` and
//! `unexpected == 0`, and, with `topics_exact`, `topic_duplicates == 0` and
//! `open_transactions == 0` (without it they are reported only: at-least-once detectors
//! and the in-memory broker legitimately leave redeliveries in the topics).
//!
//! Layout: `error`, `report` (the report types, record identities and the set computation), `read` (reading
//! topics to their end; the topic and database side of the audit), `tests` (the audit end
//! to end on the in-memory broker).

mod error;
mod gaps;
mod read;
mod report;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::settings::Settings;

pub use error::VerifyError;
#[cfg(test)]
pub(crate) use read::read_topic_to_end;
pub use report::{TopicCounts, VerifyReport};

/// How to audit.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Longest time to read each topic to its end (an open transaction is waited for
    /// this long before it is reported).
    pub timeout: Duration,
    /// Topic duplicates and open transactions fail the verdict: for real Kafka with
    /// exactly-once detectors, where read_committed topics hold one outcome per record.
    pub topics_exact: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), topics_exact: false }
    }
}

/// Runs the audit (blocking I/O off the runtime). `Ok` even when the run is not exact.
pub async fn run(
    settings: &Settings,
    options: &VerifyOptions,
    stop: CancellationToken,
) -> Result<VerifyReport, VerifyError> {
    crate::kafka::use_schema_registry(&settings.kafka, &[]).await?;
    let settings = settings.clone();
    let options = options.clone();
    tokio::task::spawn_blocking(move || read::verify_blocking(&settings, &options, &stop))
        .await
        .map_err(VerifyError::Task)?
}
