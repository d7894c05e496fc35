//! Crash points inside a transaction, for the exactly-once tests.
//!
//! A `kill -9` from outside cannot be aimed at "after the results were produced but before
//! the offsets were sent": the windows are milliseconds wide. The tests name the point
//! instead, in a hidden environment variable read once at start:
//!
//! `VIGIL_FAILPOINT=<point>:<n>` acts at the `n`-th transaction (1-based) of the process:
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable; deliberately absent from `--help` and the configuration.
pub(crate) const ENV: &str = "VIGIL_FAILPOINT";

/// A named step of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    KillAfterProduce,
    KillAfterOffsets,
    KillDuringCommit,
    PauseBeforeCommit,
    CommitReplyLost,
}

impl Point {
    const ALL: [Point; 5] = [
        Point::KillAfterProduce,
        Point::KillAfterOffsets,
        Point::KillDuringCommit,
        Point::PauseBeforeCommit,
        Point::CommitReplyLost,
    ];

    fn name(self) -> &'static str {
        match self {
            Point::KillAfterProduce => "kill-after-produce",
            Point::KillAfterOffsets => "kill-after-offsets",
            Point::KillDuringCommit => "kill-during-commit",
            Point::PauseBeforeCommit => "pause-before-commit",
            Point::CommitReplyLost => "commit-reply-lost",
        }
    }
}

/// The armed point and the transaction it fires in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    point: Point,
    transaction: u64,
}

fn parse(value: &str) -> Result<Armed, String> {
    let (name, n) = value.split_once(':').unwrap_or((value, "1"));
    let point = Point::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
        let names: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
        format!("unknown point {name:?} (one of {})", names.join(", "))
    })?;
    let transaction = n.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{n:?} is not a count >= 1"))?;
    Ok(Armed { point, transaction })
}

fn armed() -> Option<Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let value = std::env::var(ENV).ok()?;
        match parse(&value) {
            Ok(armed) => Some(armed),
            // A test that mistypes the point must not silently run without it.
            Err(reason) => panic!("{ENV}={value}: {reason}"),
        }
    })
}

/// Transactions begun so far by this process.
static TRANSACTIONS: AtomicU64 = AtomicU64::new(0);

/// Counts a transaction begun; call once per `begin_transaction`.
pub(crate) fn transaction_begun() {
    if armed().is_some() {
        TRANSACTIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether `point` is armed for the current transaction (and says so on stderr).
pub(crate) fn reached(point: Point) -> bool {
    let Some(armed) = armed() else { return false };
    if armed.point != point || TRANSACTIONS.load(Ordering::Relaxed) != armed.transaction {
        return false;
    }
    eprintln!("failpoint {} reached (transaction {})", point.name(), armed.transaction);
    true
}

/// Kills this process with SIGKILL (no destructor, no flush: a crash) when `point` is armed now.
pub(crate) fn kill_at(point: Point) {
    if reached(point) {
        signal_self(libc::SIGKILL);
    }
}

/// Kills this process `after` from now, from another thread, when `point` is armed now.
pub(crate) fn kill_soon(point: Point, after: Duration) {
    if reached(point) {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            signal_self(libc::SIGKILL);
        });
    }
}

/// Freezes this process (SIGSTOP) when `point` is armed now; it goes on after SIGCONT.
pub(crate) fn pause_at(point: Point) {
    if reached(point) {
        signal_self(libc::SIGSTOP);
    }
}

fn signal_self(signal: libc::c_int) {
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_point_and_transaction() {
        assert_eq!(parse("kill-after-offsets:3"), Ok(Armed { point: Point::KillAfterOffsets, transaction: 3 }));
        assert_eq!(parse("commit-reply-lost"), Ok(Armed { point: Point::CommitReplyLost, transaction: 1 }));
        assert!(parse("kill-sometime:1").unwrap_err().contains("kill-after-produce"));
        assert!(parse("kill-during-commit:0").is_err());
        assert!(parse("kill-during-commit:x").is_err());
    }
}
