//! `vigil verify`: audits a run end to end with set computations on frame ids.
//!
//! - frames: distinct frames in `images` (a frame's identity is its `frame_id`, or
//!   `images/<partition>/<offset>` for a record that is not a decodable `Frame`);
//! - results: distinct `frame_id`s in `detections` (read_committed);
//! - rows: rows in the sink database's `detections` table;
//! - dlq: distinct frames in `images.dlq` (identified by the original record's
//!   `frame_id`, else by its `vigil.source.partition`/`vigil.source.offset` headers);
//! - duplicates: frames with more than one final outcome (a second database row, or
//!   both a row and a dead letter);
//! - missing: frames with no outcome (neither a row nor a dead letter);
//! - unexpected: outcomes for frames that are not in `images` (e.g. a database reused
//!   from another run).
//!
//! The run is exact when `rows + dlq == frames`, `duplicates == 0`, `missing == 0` and
//! `unexpected == 0`.
//!
//! Layout: `error`, `report` (the report types and the set computation), `read` (reading
//! topics to their end; the topic and database side of the audit), `tests` (the audit end
//! to end on the in-memory broker).

mod error;
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

/// Runs the audit (blocking I/O off the runtime). `Ok` even when the run is not exact.
pub async fn run(settings: &Settings, timeout: Duration, stop: CancellationToken) -> Result<VerifyReport, VerifyError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || read::verify_blocking(&settings, timeout, &stop))
        .await
        .map_err(VerifyError::Task)?
}
