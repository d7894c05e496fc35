//! Crash points inside a transaction, for the exactly-once tests (the mechanism is
//! [`crate::failpoint`]; here the step counted is the transaction).
//!
//! A `kill -9` from outside cannot be aimed at "after the results were produced but before
//! the offsets were sent": the windows are milliseconds wide. The tests name the point
//! instead, in a hidden environment variable read once at start:
//!
//! `VIGIL_FAILPOINT=<point>:<n>` acts at the `n`-th transaction (1-based) of the process
//! (at-least-once: the `n`-th batch commit, where "produce" means delivered and "offsets"
//! and "commit" are the consumer's synchronous offset commit):
//!
//! | point                 | what happens                                                        |
//! |-----------------------|---------------------------------------------------------------------|
//! | `kill-after-produce`  | SIGKILL once every output record of the batch is enqueued          |
//! | `kill-after-offsets`  | SIGKILL after `send_offsets_to_transaction` returned                |
//! | `kill-during-commit`  | SIGKILL from another thread 2 ms into `commit_transaction`          |
//! | `pause-before-commit` | SIGSTOP (the process freezes until SIGCONT) right before the commit |
//! | `commit-reply-lost`   | the commit succeeds on the broker, but the detector is told it timed out (retriable) |
//!
//! Each prints `failpoint <point> reached` on stderr first, so a test can assert that it
//! did not pass by missing the window. Unset (production), a check is one atomic load.

use std::time::Duration;

pub(crate) use crate::failpoint::Point;
use crate::failpoint::Steps;

/// Transactions begun so far by this process.
static TRANSACTIONS: Steps = Steps::new("transaction");

/// Counts a transaction begun; call once per `begin_transaction`.
pub(crate) fn transaction_begun() {
    TRANSACTIONS.begin();
}

/// Whether `point` is armed for the current transaction (and says so on stderr).
pub(crate) fn reached(point: Point) -> bool {
    TRANSACTIONS.reached(point)
}

/// Kills this process with SIGKILL (no destructor, no flush: a crash) when `point` is armed now.
pub(crate) fn kill_at(point: Point) {
    TRANSACTIONS.kill_at(point);
}

/// Kills this process `after` from now, from another thread, when `point` is armed now.
pub(crate) fn kill_soon(point: Point, after: Duration) {
    TRANSACTIONS.kill_soon(point, after);
}

/// Freezes this process (SIGSTOP) when `point` is armed now; it goes on after SIGCONT.
pub(crate) fn pause_at(point: Point) {
    TRANSACTIONS.pause_at(point);
}
