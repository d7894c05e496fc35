//! The scenarios, in the order they run, and their sizes (`--quick` or full).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// No faults; measures capacity.
    Baseline,
    /// kill -9 of a random detector owning partitions, restarted.
    DetectorKill,
    /// kill -9 at each failpoint of a transaction (cluster only).
    TxnFailpoints,
    /// SIGTERM of every detector in turn, restarted.
    RollingSigterm,
    /// SIGSTOP of a detector past the session timeout, then SIGCONT.
    Zombie,
    /// 1 → 3 → 1 detectors, repeatedly.
    Storm,
    /// A batch frozen past `transaction.timeout.ms` (cluster only).
    SlowBatch,
    /// Broker faults: nodes killed and stopped on a cluster, request errors and
    /// coordinator moves on the embedded broker.
    BrokerFaults,
    /// kill -9 of the sink, also between its database write and the commit.
    SinkKill,
    /// The database server restarted mid-run (`--db-restart-command`).
    DbRestart,
    /// Bad input of every kind, in turn: 1% of the frames (`--quick`: 1 in 13, each kind
    /// once).
    Poison,
    /// Kills, rebalances and broker faults mixed, at ~70% of capacity, with RSS watched.
    Soak,
}

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::Baseline,
        Scenario::DetectorKill,
        Scenario::TxnFailpoints,
        Scenario::RollingSigterm,
        Scenario::Zombie,
        Scenario::Storm,
        Scenario::SlowBatch,
        Scenario::BrokerFaults,
        Scenario::SinkKill,
        Scenario::DbRestart,
        Scenario::Poison,
        Scenario::Soak,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::DetectorKill => "detector-kill",
            Scenario::TxnFailpoints => "txn-failpoints",
            Scenario::RollingSigterm => "rolling-sigterm",
            Scenario::Zombie => "zombie",
            Scenario::Storm => "storm",
            Scenario::SlowBatch => "slow-batch",
            Scenario::BrokerFaults => "broker-faults",
            Scenario::SinkKill => "sink-kill",
            Scenario::DbRestart => "db-restart",
            Scenario::Poison => "poison",
            Scenario::Soak => "soak",
        }
    }

    /// How big it is.
    pub(crate) fn size(self, quick: bool) -> Size {
        let frames = if quick { 120 } else { 2_400 };
        let pick = |q: u32, f: u32| if quick { q } else { f };
        let rounds = match self {
            Scenario::Baseline | Scenario::Poison | Scenario::Soak | Scenario::Zombie | Scenario::SlowBatch => 1,
            Scenario::DetectorKill | Scenario::SinkKill => pick(3, 20),
            Scenario::TxnFailpoints => pick(1, 5),
            Scenario::RollingSigterm => pick(1, 3),
            Scenario::Storm => pick(2, 10),
            Scenario::BrokerFaults | Scenario::DbRestart => 1,
        };
        let soak = Duration::from_secs(if quick { 60 } else { 600 });
        Size { frames, rounds, soak }
    }
}

/// A scenario's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    /// Frames sent at least (more while faults are still being injected).
    pub frames: u64,
    /// Faults, rounds or cycles.
    pub rounds: u32,
    /// How long the soak streams.
    pub soak: Duration,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL.into_iter().find(|sc| sc.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!("unknown scenario {s:?}; one of: {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_follow_the_issue() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>(), Ok(s));
        }
        assert!("nope".parse::<Scenario>().unwrap_err().contains("detector-kill"));
        for s in Scenario::ALL {
            assert!(s.size(false).frames >= 2_000, "{s}");
        }
        assert_eq!(Scenario::DetectorKill.size(false).rounds, 20);
        assert_eq!(Scenario::SinkKill.size(false).rounds, 20);
        assert_eq!(Scenario::TxnFailpoints.size(false).rounds, 5);
        assert_eq!(Scenario::RollingSigterm.size(false).rounds, 3);
        assert_eq!(Scenario::Storm.size(false).rounds, 10);
        assert_eq!(Scenario::Soak.size(true).soak, Duration::from_secs(60));
        assert_eq!(Scenario::Soak.size(false).soak, Duration::from_secs(600));
    }
}
