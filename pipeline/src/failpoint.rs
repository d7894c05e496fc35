//! Crash points for the kill tests, shared by the stages.
//!
//! A `kill -9` from outside cannot be aimed at a window milliseconds wide ("after the
//! results were produced but before the offsets were sent", "after the rows were written
//! but before the database committed"). The tests name the point instead, in a hidden
//! environment variable read once at start:
//!
//! `VIGIL_FAILPOINT=<point>:<n>` acts at the `n`-th step (1-based) of the stage the point
//! belongs to: the detector counts its transactions (`detector::failpoint`), the sink its
//! database batch writes (`sink::failpoint`). Each prints `failpoint <point> reached` on
//! stderr first, so a test can assert that it did not pass by missing the window. Unset
//! (production), a check is one atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable; deliberately absent from `--help` and the configuration.
pub(crate) const ENV: &str = "VIGIL_FAILPOINT";

/// A named step of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// Detector: SIGKILL once every output record of the batch is enqueued.
    KillAfterProduce,
    /// Detector: SIGKILL after `send_offsets_to_transaction` returned.
    KillAfterOffsets,
    /// Detector: SIGKILL from another thread 2 ms into `commit_transaction`.
    KillDuringCommit,
    /// Detector: SIGSTOP right before the commit.
    PauseBeforeCommit,
    /// Detector: the commit succeeds on the broker, the detector hears a timeout.
    CommitReplyLost,
    /// Sink: SIGKILL once the batch's rows and offsets are written, before COMMIT.
    SinkKillBeforeDbCommit,
    /// Sink: SIGKILL right after the batch's COMMIT returned.
    SinkKillAfterDbCommit,
}

impl Point {
    const ALL: [Point; 7] = [
        Point::KillAfterProduce,
        Point::KillAfterOffsets,
        Point::KillDuringCommit,
        Point::PauseBeforeCommit,
        Point::CommitReplyLost,
        Point::SinkKillBeforeDbCommit,
        Point::SinkKillAfterDbCommit,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Point::KillAfterProduce => "kill-after-produce",
            Point::KillAfterOffsets => "kill-after-offsets",
            Point::KillDuringCommit => "kill-during-commit",
            Point::PauseBeforeCommit => "pause-before-commit",
            Point::CommitReplyLost => "commit-reply-lost",
            Point::SinkKillBeforeDbCommit => "sink-kill-before-db-commit",
            Point::SinkKillAfterDbCommit => "sink-kill-after-db-commit",
        }
    }
}

/// The armed point and the step it fires in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    point: Point,
    step: u64,
}

fn parse(value: &str) -> Result<Armed, String> {
    let (name, n) = value.split_once(':').unwrap_or((value, "1"));
    let point = Point::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
        let names: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
        format!("unknown point {name:?} (one of {})", names.join(", "))
    })?;
    let step = n.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{n:?} is not a count >= 1"))?;
    Ok(Armed { point, step })
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

/// The steps one stage has begun (its transactions, its database batches), counted only
/// while a point is armed: a `static` per stage, so that `vigil up` (every stage in one
/// process) counts each stage's steps apart.
pub(crate) struct Steps {
    /// What a step is, for the message: `transaction`, `batch`.
    unit: &'static str,
    begun: AtomicU64,
}

impl Steps {
    pub(crate) const fn new(unit: &'static str) -> Self {
        Steps { unit, begun: AtomicU64::new(0) }
    }

    /// Counts a step begun.
    pub(crate) fn begin(&self) {
        if armed().is_some() {
            self.begun.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `point` is armed for the current step (and says so on stderr).
    pub(crate) fn reached(&self, point: Point) -> bool {
        let Some(armed) = armed() else { return false };
        if armed.point != point || self.begun.load(Ordering::Relaxed) != armed.step {
            return false;
        }
        eprintln!("failpoint {} reached ({} {})", point.name(), self.unit, armed.step);
        true
    }

    /// Kills this process with SIGKILL (no destructor, no flush: a crash) when `point` is
    /// armed now.
    pub(crate) fn kill_at(&self, point: Point) {
        if self.reached(point) {
            signal_self(libc::SIGKILL);
        }
    }

    /// Kills this process `after` from now, from another thread, when `point` is armed now.
    pub(crate) fn kill_soon(&self, point: Point, after: Duration) {
        if self.reached(point) {
            std::thread::spawn(move || {
                std::thread::sleep(after);
                signal_self(libc::SIGKILL);
            });
        }
    }

    /// Freezes this process (SIGSTOP) when `point` is armed now; it goes on after SIGCONT.
    pub(crate) fn pause_at(&self, point: Point) {
        if self.reached(point) {
            signal_self(libc::SIGSTOP);
        }
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
    fn parses_point_and_step() {
        assert_eq!(parse("kill-after-offsets:3"), Ok(Armed { point: Point::KillAfterOffsets, step: 3 }));
        assert_eq!(parse("commit-reply-lost"), Ok(Armed { point: Point::CommitReplyLost, step: 1 }));
        assert_eq!(parse("sink-kill-before-db-commit:2"), Ok(Armed { point: Point::SinkKillBeforeDbCommit, step: 2 }));
        assert_eq!(parse("sink-kill-after-db-commit"), Ok(Armed { point: Point::SinkKillAfterDbCommit, step: 1 }));
        let unknown = parse("kill-sometime:1").unwrap_err();
        assert!(unknown.contains("kill-after-produce") && unknown.contains("sink-kill-after-db-commit"), "{unknown}");
        assert!(parse("kill-during-commit:0").is_err());
        assert!(parse("kill-during-commit:x").is_err());
    }
}
