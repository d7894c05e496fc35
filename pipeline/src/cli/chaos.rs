//! `vigil chaos`: fault-injection scenarios against real detector and sink processes,
//! audited like `vigil verify`.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use vigil::chaos::{ChaosConfig, Scenario};
use vigil::settings::Settings;

use super::failure::Failure;
use super::{EXIT_OK, EXIT_RUNTIME};

/// `vigil chaos` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Inject faults (kill -9, SIGTERM, SIGSTOP, rebalances, broker and database faults) and audit the outcome",
    long_about = "Run fault scenarios against a real pipeline and audit each with the same code as `vigil verify`.\n\n\
        Each scenario gets topics, groups and a database of its own (names start with chaos-<run id>), starts the \
        sink and the detectors as `vigil` processes, streams unique 64x64 JPEG frames from 12 cameras at a fixed rate \
        (--rate; default 70% of the capacity the baseline measures), injects its faults while batches are in flight, \
        waits until every frame is stored, stops everything and audits. Without --bootstrap it runs on an embedded \
        in-memory broker (detectors at-least-once; exact = database rows + dead letters, topic_duplicates reported \
        only); with --bootstrap on that cluster (detectors exactly-once; topic duplicates and open transactions fail \
        too).\n\n\
        Scenarios: baseline, detector-kill (kill -9 of a detector owning partitions, restarted), txn-failpoints \
        (kill -9 inside a transaction; cluster), rolling-sigterm, zombie (SIGSTOP past the session timeout), storm \
        (1 -> 3 -> 1 detectors), slow-batch (a batch slower than the transaction timeout; cluster), broker-faults \
        (cluster: kill -9 of a leader and of the controller, a broker stopped 30 s, through --kafka-script; embedded: \
        request errors and coordinator moves), sink-kill (also right before and after the database commit), \
        db-restart (--db-restart-command), poison (every bad-input kind: not_avro, unknown_schema, bad_record, \
        oversized, invalid_field, empty, unknown_format, corrupt_image, too_large; 1% of the frames, 1 in 13 with \
        --quick), soak (everything mixed; RSS growth < 10%).\n\n\
        Prints one line per scenario (one JSON object with --json): scenario, frames, rows, dlq, missing, \
        duplicates, topic_duplicates, faults_injected (effective faults only: injected while frames were in flight, \
        and showing what that fault causes), aborted_txns, fenced, crashes (detectors that exited without being \
        fenced, or did not stop cleanly on SIGTERM: any fails the scenario), mttr_ms_p50, mttr_ms_p95 (fault -> \
        what was waiting at the fault is stored in every partition), first_result_ms_p50/p95 (a detector's kill or \
        SIGTERM -> each partition it owned has a stored result for a frame inferred after the fault), max_stall_ms, \
        seconds, verdict. A scenario \
        whose faults had no effect fails with `no effect`. Progress goes to stderr. Exit status 0 only when every \
        scenario that ran is exact; scenarios that cannot run here are reported as skipped, with the reason.",
    after_help = "Examples:\n  \
        vigil chaos --quick                                     # every scenario, small, embedded broker (~8 min on 2 cores)\n  \
        vigil chaos --quick --scenario baseline --scenario detector-kill --json\n  \
        vigil --bootstrap 127.0.0.1:9092 chaos --kafka-script scripts/kafka.sh --kafka-dir ~/.cache/vigil/kafka-cluster \\\n      \
        --database postgres://vigil:vigil@127.0.0.1:5432/vigil_test      # the full run on a cluster\n  \
        vigil chaos --scenario zombie --set detector.static_membership=true --set detector.group_protocol=cooperative-sticky"
)]
pub(crate) struct ChaosArgs {
    /// Scenario to run (repeatable; default: all).
    #[arg(long = "scenario", value_name = "NAME", value_parser = parse_scenario)]
    scenarios: Vec<Scenario>,
    /// Every scenario small enough for CI (120 frames each, a 60 s soak: ~8 minutes in all on 2 cores, ~10 on a cluster).
    #[arg(long)]
    quick: bool,
    /// Frames per scenario instead of the --quick or full size (at least: more are sent while
    /// faults are still being injected).
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Faults (kills, rounds, cycles) per scenario instead of the --quick or full size, e.g.
    /// `--scenario detector-kill --frames 200 --faults 20` for 20 kill -9 under one setting.
    #[arg(long, value_name = "N")]
    faults: Option<u32>,
    /// One JSON object per scenario instead of a line.
    #[arg(long)]
    json: bool,
    /// Sink database, sqlite://PATH or postgres://… (a schema per scenario); default: a
    /// SQLite file per scenario in the work directory.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Frames per second (default: 70% of the capacity the baseline measures).
    #[arg(long, value_name = "F")]
    rate: Option<f64>,
    /// Detector processes per scenario.
    #[arg(long, default_value_t = 2, value_name = "N")]
    detectors: usize,
    /// A script with the scripts/kafka.sh contract (`kill ID`, `start ID`, `pid ID`, `--dir DIR`)
    /// for broker faults on the cluster.
    #[arg(long, value_name = "PATH", requires = "kafka_dir")]
    kafka_script: Option<PathBuf>,
    /// The cluster's directory, passed to --kafka-script as --dir.
    #[arg(long, value_name = "DIR", requires = "kafka_script")]
    kafka_dir: Option<PathBuf>,
    /// Command (run with sh -c) that restarts the database server, for db-restart.
    #[arg(long, value_name = "CMD")]
    db_restart_command: Option<String>,
    /// A setting for the started detectors and sinks, KEY=VALUE (repeatable), e.g.
    /// detector.static_membership=true or detector.session_timeout_ms=3000.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    sets: Vec<(String, String)>,
    /// Where logs and databases go (a directory per scenario); default: a fresh temporary directory.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The vigil binary the stages run (default: this one).
    #[arg(long, hide = true, value_name = "PATH")]
    vigil_bin: Option<PathBuf>,
    /// The global --bootstrap: a cluster instead of the embedded broker.
    #[arg(from_global)]
    bootstrap: Option<String>,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse()
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    if k.trim().is_empty() {
        return Err("expected a non-empty KEY".into());
    }
    Ok((k.trim().to_string(), v.to_string()))
}

impl ChaosArgs {
    fn config(&self) -> Result<ChaosConfig, Failure> {
        let vigil_bin = match &self.vigil_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe().map_err(Failure::runtime)?,
        };
        let work_dir = match &self.work_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("vigil-chaos-{}", uuid::Uuid::new_v4().simple())),
        };
        // The settings the children get must load (known keys, valid values): refuse
        // them here rather than in every child.
        let mut loader = Settings::loader();
        for (k, v) in &self.sets {
            loader = loader.set(k.clone(), v.clone());
        }
        loader.load().map_err(|e| vigil::chaos::ChaosError::Usage(format!("--set: {e}")))?;
        Ok(ChaosConfig {
            bootstrap: self.bootstrap.clone(),
            database: self.database.clone(),
            scenarios: self.scenarios.clone(),
            quick: self.quick,
            frames: self.frames,
            faults: self.faults,
            rate: self.rate,
            detectors: self.detectors,
            kafka_script: self.kafka_script.clone(),
            kafka_dir: self.kafka_dir.clone(),
            db_restart_command: self.db_restart_command.clone(),
            sets: self.sets.clone(),
            vigil_bin,
            work_dir,
        })
    }
}

/// `vigil chaos`: runs the scenarios, prints a line (or JSON object) per scenario; exit 1
/// unless every scenario that ran is exact.
pub(crate) async fn run(settings: &Settings, args: ChaosArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let config = args.config()?;
    config.validate()?;
    let settings = settings.clone();
    let runtime = tokio::runtime::Handle::current();
    let json = args.json;
    let reports = tokio::task::spawn_blocking(move || {
        vigil::chaos::run(&settings, &config, &runtime, &shutdown, |report| {
            if json {
                println!("{}", serde_json::to_string(report).unwrap_or_default());
            } else {
                println!("{}", report.line());
            }
        })
    })
    .await
    .map_err(Failure::runtime)??;
    let failed = reports.iter().filter(|r| !r.verdict.passed()).count();
    if failed > 0 {
        eprintln!("vigil chaos: {failed} of {} scenarios are not exact", reports.len());
        return Ok(EXIT_RUNTIME);
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    fn args(argv: &[&str]) -> Result<ChaosArgs, clap::Error> {
        match Cli::try_parse_from(argv)?.command {
            Command::Chaos(a) => Ok(a),
            other => panic!("{argv:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn flags_parse_and_bad_ones_are_refused() {
        let a =
            args(&["vigil", "chaos", "--quick", "--scenario", "baseline", "--scenario", "zombie", "--json"]).unwrap();
        assert_eq!(a.scenarios, [Scenario::Baseline, Scenario::Zombie]);
        assert!(a.quick && a.json && a.bootstrap.is_none());
        let a = args(&["vigil", "--bootstrap", "h:1", "chaos", "--set", "detector.static_membership=true"]).unwrap();
        assert_eq!(a.bootstrap.as_deref(), Some("h:1"));
        assert_eq!(a.sets, [("detector.static_membership".to_string(), "true".to_string())]);
        let c = a.config().unwrap();
        assert!(c.work_dir.starts_with(std::env::temp_dir()));

        assert!(args(&["vigil", "chaos", "--scenario", "earthquake"]).is_err());
        assert!(args(&["vigil", "chaos", "--kafka-script", "scripts/kafka.sh"]).is_err(), "needs --kafka-dir");
        assert!(args(&["vigil", "chaos", "--set", "novalue"]).is_err());
        let unknown_key = args(&["vigil", "chaos", "--set", "detector.no_such_key=1"]).unwrap();
        assert!(unknown_key.config().is_err());
        let no_cluster = args(&["vigil", "chaos", "--kafka-script", "k.sh", "--kafka-dir", "d"]).unwrap();
        assert!(no_cluster.config().unwrap().validate().is_err(), "--kafka-script needs --bootstrap");
    }
}
