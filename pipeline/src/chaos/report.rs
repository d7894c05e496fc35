//! One scenario's outcome: the numbers `vigil chaos` prints (a line, or a JSON object with
//! `--json`) and the verdict that decides the exit status.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every frame has exactly one outcome, and the faults had their effect.
    Exact,
    /// The audit found a problem (missing or duplicate outcomes, a drain that timed out…).
    NotExact(String),
    /// The faults were injected but changed nothing (no abort, no rebalance, no failover):
    /// the scenario proved nothing, so it fails.
    NoEffect(String),
    /// Not run here (needs a cluster, `--kafka-script`, `--db-restart-command`…).
    Skipped(String),
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::NotExact("the scenario did not finish".into())
    }
}

impl Verdict {
    /// Whether the run's exit status may stay 0 (exact, or not run at all).
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Exact | Verdict::Skipped(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Exact => f.write_str("exact"),
            Verdict::NotExact(why) => write!(f, "NOT EXACT: {why}"),
            Verdict::NoEffect(why) => write!(f, "no effect: {why}"),
            Verdict::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Median and 95th percentile of one fault kind's times to recovery.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MttrStats {
    /// Faults of this kind that recovered.
    pub recovered: usize,
    /// Faults of this kind after which some partition stored nothing new before the
    /// scenario ended.
    pub unrecovered: usize,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
}

impl MttrStats {
    /// Statistics of `samples` (milliseconds, `None` for a fault that never recovered).
    pub(crate) fn of(samples: &[Option<u64>]) -> MttrStats {
        let mut done: Vec<u64> = samples.iter().flatten().copied().collect();
        done.sort_unstable();
        MttrStats {
            recovered: done.len(),
            unrecovered: samples.len() - done.len(),
            p50_ms: percentile(&done, 50.0),
            p95_ms: percentile(&done, 95.0),
        }
    }
}

/// Nearest-rank percentile of sorted `values` (`p` in (0, 100]); `None` when empty.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What one scenario measured. Field meanings are in the module docs of `chaos`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    /// Frames sent (good and poison).
    pub frames: u64,
    /// Rows in the database after the drain.
    pub rows: u64,
    /// Frames dead-lettered.
    pub dlq: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Outcomes in the topics beyond one per `images` record (failed only on a cluster).
    pub topic_duplicates: u64,
    /// Faults that had their effect (see the module docs); injected ones that did not are
    /// in `faults_without_effect`.
    pub faults_injected: u64,
    pub faults_without_effect: u64,
    /// Batches aborted, as the detectors that exited cleanly report them in their summaries
    /// (a killed detector prints none).
    pub aborted_txns: u64,
    /// Detector processes that stopped because they were fenced.
    pub fenced: u64,
    /// Detectors that exited by themselves without being fenced, or did not stop cleanly
    /// on SIGTERM (see the module docs of `chaos`); any makes the scenario not exact.
    pub crashes: u64,
    pub mttr_ms_p50: Option<u64>,
    pub mttr_ms_p95: Option<u64>,
    /// Per fault kind (`detector-kill9`, `sigterm`, `broker-kill9`, …).
    pub mttr: BTreeMap<String, MttrStats>,
    /// Detector faults only: time until each partition the detector owned has a stored
    /// result for a frame inferred after the fault (see the module docs of `chaos`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_result_ms_p50: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_result_ms_p95: Option<u64>,
    pub max_stall_ms: u64,
    /// Largest RSS growth of a process after its warm-up, percent (soak only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_growth_pct: Option<f64>,
    /// Frames per second sent (0: as fast as possible).
    pub rate: f64,
    pub seconds: f64,
    pub verdict: Verdict,
    /// Where this scenario's logs and database are.
    pub dir: String,
}

impl ScenarioReport {
    /// A scenario that did not run.
    pub(crate) fn skipped(scenario: &str, why: impl Into<String>) -> ScenarioReport {
        ScenarioReport { scenario: scenario.into(), verdict: Verdict::Skipped(why.into()), ..Default::default() }
    }

    /// The human-readable line.
    pub fn line(&self) -> String {
        if let Verdict::Skipped(_) = self.verdict {
            return format!("{:<16} {}", self.scenario, self.verdict);
        }
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut line = format!(
            "{:<16} frames={} rows={} dlq={} missing={} duplicates={} topic_duplicates={} faults={} \
             aborted_txns={} fenced={} crashes={} mttr_ms_p50={} mttr_ms_p95={} max_stall_ms={} seconds={:.1}",
            self.scenario,
            self.frames,
            self.rows,
            self.dlq,
            self.missing,
            self.duplicates,
            self.topic_duplicates,
            self.faults_injected,
            self.aborted_txns,
            self.fenced,
            self.crashes,
            ms(self.mttr_ms_p50),
            ms(self.mttr_ms_p95),
            self.max_stall_ms,
            self.seconds,
        );
        if self.first_result_ms_p50.is_some() {
            line.push_str(&format!(
                " first_result_ms_p50={} first_result_ms_p95={}",
                ms(self.first_result_ms_p50),
                ms(self.first_result_ms_p95)
            ));
        }
        if let Some(growth) = self.rss_growth_pct {
            line.push_str(&format!(" rss_growth_pct={growth:.1}"));
        }
        line.push_str(&format!("  {}", self.verdict));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 95.0), Some(7));
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50.0), Some(10));
        assert_eq!(percentile(&v, 95.0), Some(19));
        assert_eq!(percentile(&v, 100.0), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 50.0), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 95.0), Some(40));
    }

    #[test]
    fn mttr_stats_leave_unrecovered_faults_out_of_the_percentiles() {
        let stats = MttrStats::of(&[Some(300), None, Some(100), Some(200)]);
        assert_eq!((stats.recovered, stats.unrecovered), (3, 1));
        assert_eq!((stats.p50_ms, stats.p95_ms), (Some(200), Some(300)));
        assert_eq!(MttrStats::of(&[None]).p50_ms, None);
    }

    #[test]
    fn verdicts_print_and_decide() {
        assert_eq!(Verdict::Exact.to_string(), "exact");
        assert!(Verdict::Exact.passed() && Verdict::Skipped("x".into()).passed());
        assert!(!Verdict::NoEffect("no rebalance".into()).passed());
        let json = serde_json::to_value(ScenarioReport {
            verdict: Verdict::NotExact("3 missing".into()),
            ..ScenarioReport::default()
        })
        .unwrap();
        assert_eq!(json["verdict"], "NOT EXACT: 3 missing");
        for key in [
            "scenario",
            "frames",
            "rows",
            "dlq",
            "missing",
            "duplicates",
            "topic_duplicates",
            "faults_injected",
            "aborted_txns",
            "fenced",
            "crashes",
            "mttr_ms_p50",
            "mttr_ms_p95",
            "max_stall_ms",
            "seconds",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
    }
}
