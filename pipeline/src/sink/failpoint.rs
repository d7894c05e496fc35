//! Crash points inside the sink's database transaction, for the kill tests (the
//! mechanism is [`crate::failpoint`]; here the step counted is a batch write, retries
//! included).
//!
//! `VIGIL_FAILPOINT=<point>:<n>` acts in the `n`-th batch the process writes:
//!
//! | point                        | what happens                                                         |
//! |------------------------------|----------------------------------------------------------------------|
//! | `sink-kill-before-db-commit` | SIGKILL once the batch's rows, rejects and offsets are written inside its transaction, before COMMIT |
//! | `sink-kill-after-db-commit`  | SIGKILL right after COMMIT returned, before the Kafka offset commit  |
//!
//! Either way the restarted sink must read from the offsets the database holds: the
//! batch again in the first case (nothing of it was stored), nothing of it in the second.

pub(crate) use crate::failpoint::Point;
use crate::failpoint::Steps;

/// Batch writes begun so far by this process.
static BATCHES: Steps = Steps::new("batch");

/// Counts a batch write begun; call once per `Store::write_batch`.
pub(crate) fn batch_begun() {
    BATCHES.begin();
}

/// Kills this process with SIGKILL when `point` is armed for the current batch.
pub(crate) fn kill_at(point: Point) {
    BATCHES.kill_at(point);
}
