//! Storing one batch: the database transaction, retried while the failure is transient,
//! and the reject path for rows the database refuses.
//!
//! A row the database will never take (U+0000 in a TEXT column, a value past an index
//! entry limit, a constraint) fails its whole batch the same way on every retry and every
//! restart. So when a batch fails on a refused row, the rows are tried one by one (nothing
//! stored), the refused ones move to `sink_rejects` with the reason and their record bytes,
//! and the batch is written again: the partition keeps moving, nothing is lost silently.
//!
//! While the database is unreachable the sink is not ready: it says so once, keeps
//! retrying (the database thread reconnects) and, past `sink.db_outage_limit_ms`, stops
//! with an error, so that a restart policy or an operator sees the outage instead of a
//! process that hangs forever.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::db::DbWorker;
use super::store::{Batch, BatchOutcome, DetectionRow, RejectRow};
use super::SinkError;
use crate::backoff::Backoff;
use crate::codec::{kinds, DetectionResult};
use crate::health::Health;

/// Wait before retrying a failed database write: 0.2 s doubling to 6.4 s.
const DB_RETRY: Backoff = Backoff { base: Duration::from_millis(200), cap: Duration::from_millis(6400) };

/// A batch on its way to the database, with what the loop keeps for each of its rows.
#[derive(Default)]
pub(super) struct Outgoing {
    pub(super) batch: Batch,
    /// For each row of `batch.rows`, in order: the decoded result (for the observer) and
    /// the record's bytes (for a reject).
    extras: Vec<(Box<DetectionResult>, Vec<u8>)>,
}

impl Outgoing {
    pub(super) fn new(batch: Batch) -> Self {
        Outgoing { batch, extras: Vec::new() }
    }

    pub(super) fn push_row(&mut self, row: DetectionRow, result: Box<DetectionResult>, payload: Vec<u8>) {
        self.batch.rows.push(row);
        self.extras.push((result, payload));
    }

    /// The results of the rows still in the batch.
    pub(super) fn into_results(self) -> impl Iterator<Item = Box<DetectionResult>> {
        self.extras.into_iter().map(|(result, _)| result)
    }

    /// Moves the rows at the `refused` indexes into the batch's rejects, with their reasons.
    fn set_aside(&mut self, mut refused: Vec<(usize, String)>) {
        refused.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        for (index, reason) in refused {
            let row = self.batch.rows.remove(index);
            let (_, payload) = self.extras.remove(index);
            warn!(
                partition = row.result_partition,
                offset = row.result_offset,
                frame_id = %row.frame_id.escape_debug(),
                %reason,
                "the database refuses this result; storing it in sink_rejects"
            );
            self.batch.rejects.push(RejectRow {
                topic: self.batch.topic.clone(),
                partition: row.result_partition,
                offset: row.result_offset,
                kind: kinds::DB_REFUSED.into(),
                message: reason,
                payload,
            });
        }
    }
}

/// How long the database has been failing, and when that is too long.
#[derive(Debug)]
struct Outage {
    since: Instant,
    limit: Duration,
}

impl Outage {
    /// Whether the outage has lasted past its limit at `now`.
    fn exceeded(&self, now: Instant) -> bool {
        now.duration_since(self.since) > self.limit
    }
}

/// Writes `outgoing` in one database transaction. Transient failures are retried with
/// backoff until shutdown or for `outage_limit`; a failure caused by refused rows sets
/// them aside and writes the rest (each round removes at least one row, so this ends).
pub(super) async fn store(
    db: &DbWorker,
    outgoing: &mut Outgoing,
    outage_limit: Duration,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<BatchOutcome, SinkError> {
    let mut attempt = 0u32;
    let mut outage: Option<Outage> = None;
    loop {
        health.beat();
        let failure = match db.write(outgoing.batch.clone()).await {
            Ok(outcome) => {
                if let Some(outage) = outage {
                    info!(after_s = outage.since.elapsed().as_secs(), "database reachable again; the sink is ready");
                    health.set_ready();
                }
                return Ok(outcome);
            }
            Err(e) if e.is_row_refused() => match db.refused_rows(outgoing.batch.rows.clone()).await {
                Ok(refused) if !refused.is_empty() => {
                    outgoing.set_aside(refused);
                    continue;
                }
                // No single row to blame: the batch fails as a whole.
                Ok(_) => e,
                Err(probe) => probe,
            },
            Err(e) => e,
        };
        if failure.is_transient() && !shutdown.is_cancelled() {
            let outage = outage.get_or_insert_with(|| {
                warn!(error = %failure, "database unavailable; the sink is not ready and retries until it is back");
                Outage { since: Instant::now(), limit: outage_limit }
            });
            health.set_not_ready(format!("database unavailable: {failure}"));
            if outage.exceeded(Instant::now()) {
                error!(error = %failure, limit = ?outage_limit, "database unavailable for too long; the sink stops");
                return Err(SinkError::DatabaseUnavailable { waited: outage.since.elapsed(), last: failure });
            }
            attempt += 1;
            let backoff = DB_RETRY.delay(attempt);
            warn!(attempt, error = %failure, ?backoff, "database write failed; retrying the batch");
            tokio::time::sleep(backoff).await;
        } else {
            error!(error = %failure, "database write failed; the batch will be read again after a restart");
            return Err(failure.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_too_long_only_past_its_limit() {
        let since = Instant::now();
        let outage = Outage { since, limit: Duration::from_secs(60) };
        assert!(!outage.exceeded(since));
        assert!(!outage.exceeded(since + Duration::from_secs(60)));
        assert!(outage.exceeded(since + Duration::from_secs(61)));
    }
}
