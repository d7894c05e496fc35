//! `vigil chaos`: fault injection against a running pipeline, audited with the same code
//! as `vigil verify`.
//!
//! Each scenario gets topics, consumer groups and a database (a SQLite file, or a
//! PostgreSQL schema) of its own, named after the run id, so runs and scenarios never
//! collide. It starts the sink and the detectors as real `vigil` processes (this binary,
//! `current_exe`, or `--vigil-bin`) on the embedded broker (a [`DevBroker`] inside this
//! process, whose fault knobs it drives) or on the cluster named by `--bootstrap`; streams
//! unique frames from 12 cameras (module `frames`); injects its faults while batches are in
//! flight (module `faults`); waits until every good frame is stored (bounded); stops the
//! processes; and audits with [`crate::verify`].
//!
//! Definitions (all times from the scenario's own clock):
//! - a partition has *input waiting* while the frames sent to it (delivery reports) reach
//!   past the highest `source_offset` stored for it;
//! - *in flight*: some partition has input waiting: faults are injected only then (a
//!   fault injected after 30 s with nothing in flight does not count as effective);
//! - *time to recovery* of a fault (MTTR): from the fault (a detector's kill -9 or
//!   SIGTERM, a broker's kill -9 or stop, …) until every partition that had input waiting
//!   at the fault has stored what was waiting (the highest `source_offset` stored reaches
//!   what had been sent at the fault: a row from work begun before the fault is not
//!   recovery), and every partition sent input only after the fault has stored a row for
//!   an offset sent after it;
//!   reported per fault kind and overall as median and 95th percentile (nearest rank).
//!   Faults of one kind come one at a time: the next is injected once this one is
//!   recovered from (at most 90 s later), so that no MTTR is the sum of overlapping outages;
//! - *time to the first result* of a detector's fault (kill -9, SIGTERM): until each
//!   partition that detector owned (its log) has a row stored for a frame inferred after the
//!   fault (the rows' `processed_at_us`): the partitions are served again. MTTR adds the
//!   time to work off the backlog the outage built up, which grows with the load;
//! - *max stall*: the longest time any partition had input waiting with no new row;
//! - *effective fault*: one that took hold: the killed or stopped detector owned
//!   partitions (its log) and its partitions were taken over or it came back; the armed
//!   failpoint was reached; the rebalance happened (assignment lines); a broker fault
//!   showed what that fault causes: a leader or the controller moved, a stopped node
//!   made clients time out or the detectors rebalance, injected offset-commit errors made
//!   a detector log a failed commit, injected heartbeat or join errors (and a coordinator
//!   move) made the detectors rebalance or log the coordinator, a database restart made
//!   the sink log its lost connection; a killed sink had stored rows. Only effective
//!   faults are counted (`faults_injected`); a scenario with faults and none effective
//!   fails with `no effect`;
//! - *crash*: a detector that exits by itself without having been fenced (on the embedded
//!   broker nothing fences, so any such exit: a panic, a lost assignment, a backend
//!   failure, a shutdown timeout), or one that does not stop cleanly on SIGTERM. A fenced
//!   worker stops by design for its restart policy to act and is restarted (that policy);
//!   a crashed one is not. Counted in `crashes`; any crash makes the scenario not exact;
//! - *exact*: no crash, and every frame sent has one outcome (rows + dead letters =
//!   frames, no missing, no duplicates); on a cluster also no topic duplicates and no open
//!   transaction (`topics_exact`). On the embedded broker detectors run at-least-once (the
//!   mock stores no transactional offsets) and `topic_duplicates` is reported, not failed.
//!
//! Files: `scenario` (the list and sizes), `crate::fleet` (child processes), `frames` (the
//! input), `progress` (database sampling, MTTR and stalls), `faults` (what each scenario
//! does), `report` (the line, the JSON object, percentiles).

mod faults;
mod frames;
mod progress;
mod report;
mod scenario;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use self::faults::Fault;
use self::frames::{FrameStream, StreamPlan};
use self::progress::{DbProbe, Sampler};
pub use self::report::{MttrStats, ScenarioReport, Verdict};
pub use self::scenario::Scenario;
use self::scenario::Size;
use crate::codec::CodecError;
use crate::fleet::{self, Fleet, FleetError, ProcId};
use crate::kafka::{DevBroker, KafkaPlumbingError};
use crate::settings::Settings;
use crate::verify::{VerifyError, VerifyOptions};
pub(crate) use report::percentile;

/// Partitions of each scenario's `images` and `detections`.
const PARTITIONS: i32 = 6;
/// Session timeout of the started stages: a kill -9'd member's partitions move after ~6 s.
const SESSION_TIMEOUT_MS: u64 = 6_000;
/// How long a stage may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the detectors may take to load the model and join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// A Kafka cluster; `None`: an embedded broker in this process.
    pub bootstrap: Option<String>,
    /// `sqlite://…` or `postgres://…`; `None`: a SQLite file per scenario in its directory.
    pub database: Option<String>,
    /// Scenarios to run (empty: all), in [`Scenario::ALL`] order.
    pub scenarios: Vec<Scenario>,
    /// Every scenario small (CI).
    pub quick: bool,
    /// Frames per scenario instead of the size's (at least; more while faults go on).
    pub frames: Option<u64>,
    /// Faults, rounds or cycles per scenario instead of the size's: e.g. 20 kill -9 in a
    /// short run, to measure MTTR under one setting without the full run's frames.
    pub faults: Option<u32>,
    /// Frames per second; `None`: 70% of the capacity the baseline measures.
    pub rate: Option<f64>,
    /// Detector processes per scenario (the storm starts with one).
    pub detectors: usize,
    /// `scripts/kafka.sh` (or anything with its `kill ID`, `start ID`, `pid ID` contract).
    pub kafka_script: Option<PathBuf>,
    /// The `--dir` of that cluster.
    pub kafka_dir: Option<PathBuf>,
    /// Restarts the database server (`sh -c`), for `db-restart`.
    pub db_restart_command: Option<String>,
    /// Settings for the started processes, `key=value` (dotted keys, as `vigil config`).
    pub sets: Vec<(String, String)>,
    /// The `vigil` binary the stages run.
    pub vigil_bin: PathBuf,
    /// Logs and databases go here, one directory per scenario.
    pub work_dir: PathBuf,
}

/// Why chaos could not run (a scenario that is not exact is a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("cannot create the frame producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    #[error("cannot send a frame: {0}")]
    Send(rdkafka::error::KafkaError),
    #[error("cannot encode a frame (a bug): {0}")]
    Encode(CodecError),
    #[error(transparent)]
    Kafka(Box<KafkaPlumbingError>),
    #[error(transparent)]
    Verify(Box<VerifyError>),
    #[error("database {url}: {reason}")]
    Database { url: String, reason: String },
    #[error("{0} (a bug)")]
    Bug(String),
    #[error("interrupted")]
    Interrupted,
}

impl From<KafkaPlumbingError> for ChaosError {
    fn from(e: KafkaPlumbingError) -> Self {
        ChaosError::Kafka(Box::new(e))
    }
}

impl From<VerifyError> for ChaosError {
    fn from(e: VerifyError) -> Self {
        ChaosError::Verify(Box::new(e))
    }
}

impl ChaosError {
    pub(crate) fn io(what: impl AsRef<Path>, cause: std::io::Error) -> ChaosError {
        ChaosError::Io { what: what.as_ref().display().to_string(), cause }
    }

    /// A wrong command line: exit code 2.
    pub fn is_usage(&self) -> bool {
        match self {
            ChaosError::Usage(_) => true,
            ChaosError::Kafka(e) => e.is_usage(),
            _ => false,
        }
    }
}

impl ChaosConfig {
    /// Refuses contradictory or incomplete options before anything starts.
    pub fn validate(&self) -> Result<(), ChaosError> {
        let usage = |m: &str| Err(ChaosError::Usage(m.to_string()));
        if self.kafka_script.is_some() != self.kafka_dir.is_some() {
            return usage("--kafka-script and --kafka-dir go together");
        }
        if self.kafka_script.is_some() && self.bootstrap.is_none() {
            return usage(
                "--kafka-script needs --bootstrap: it kills nodes of that cluster, not of the embedded broker",
            );
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return usage("--rate must be a positive number of frames per second");
            }
        }
        if self.frames == Some(0) || self.faults == Some(0) {
            return usage("--frames and --faults must be at least 1");
        }
        if !(1..=8).contains(&self.detectors) {
            return usage("--detectors must be 1..=8");
        }
        if let Some(url) = &self.database {
            if !["sqlite://", "postgres://", "postgresql://"].iter().any(|p| url.starts_with(p)) {
                return usage("--database must be sqlite://PATH or postgres://…");
            }
        }
        if let Some((key, _)) = self.sets.iter().find(|(k, _)| k.is_empty() || k.contains(char::is_whitespace)) {
            return Err(ChaosError::Usage(format!("--set {key:?}: expected KEY=VALUE with a dotted key")));
        }
        Ok(())
    }

    /// A scenario's size: `--quick` or full, with `--frames` and `--faults` applied.
    pub(crate) fn size(&self, scenario: Scenario) -> Size {
        let size = scenario.size(self.quick);
        Size { frames: self.frames.unwrap_or(size.frames), rounds: self.faults.unwrap_or(size.rounds), ..size }
    }

    /// The scenarios to run, in order; the baseline first whenever the rate must be measured.
    pub(crate) fn plan(&self) -> Vec<Scenario> {
        let mut list: Vec<Scenario> =
            if self.scenarios.is_empty() { Scenario::ALL.to_vec() } else { self.scenarios.clone() };
        if self.rate.is_none() && !list.contains(&Scenario::Baseline) && list.iter().any(|s| uses_rate(*s)) {
            list.push(Scenario::Baseline);
        }
        list.sort();
        list.dedup();
        list
    }
}

/// Whether a scenario streams at the configured rate (all but the baseline, which
/// measures the capacity with everything sent at once).
fn uses_rate(s: Scenario) -> bool {
    s != Scenario::Baseline
}

/// `VIGIL__SECTION__KEY` for a dotted settings key (`kafka.client.session.timeout.ms` →
/// `VIGIL__KAFKA__CLIENT__SESSION__TIMEOUT__MS`, as `vigil config` documents).
pub(crate) fn env_key(key: &str) -> String {
    format!("VIGIL__{}", key.to_uppercase().replace('.', "__"))
}

/// Runs the scenarios one after the other; `each` sees every report as it is made. Call
/// it off the async runtime (it blocks); `runtime` runs the audit.
pub fn run(
    settings: &Settings,
    config: &ChaosConfig,
    runtime: &tokio::runtime::Handle,
    stop: &CancellationToken,
    mut each: impl FnMut(&ScenarioReport),
) -> Result<Vec<ScenarioReport>, ChaosError> {
    config.validate()?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    std::fs::create_dir_all(&config.work_dir).map_err(|e| ChaosError::io(&config.work_dir, e))?;
    let (broker, bootstrap) = DevBroker::unless_cluster(config.bootstrap.as_deref(), 3)?;
    eprintln!(
        "chaos: run {run_id} on {} ({bootstrap}), logs in {}",
        if broker.is_some() { "the embedded broker" } else { "the cluster" },
        config.work_dir.display()
    );
    let mut capacity: Option<f64> = None;
    let mut reports = Vec::new();
    for scenario in config.plan() {
        if stop.is_cancelled() {
            return Err(ChaosError::Interrupted);
        }
        let report = match skip_reason(scenario, config) {
            Some(why) => ScenarioReport::skipped(scenario.name(), why),
            None => {
                let rate = if uses_rate(scenario) {
                    config.rate.or(capacity.map(|c| (0.7 * c).max(0.5))).unwrap_or(2.0)
                } else {
                    config.rate.unwrap_or(0.0)
                };
                let env = Env { settings, config, run_id: &run_id, bootstrap: &bootstrap, broker: broker.as_ref() };
                let (report, measured) = run_scenario(&env, scenario, rate, runtime, stop)?;
                if scenario == Scenario::Baseline {
                    capacity = measured;
                }
                report
            }
        };
        each(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// Why a scenario cannot run with this configuration.
fn skip_reason(scenario: Scenario, config: &ChaosConfig) -> Option<String> {
    let cluster = config.bootstrap.is_some();
    match scenario {
        Scenario::TxnFailpoints | Scenario::SlowBatch if !cluster => Some(
            "transaction failpoints run on a cluster only (--bootstrap): detectors on the embedded broker run \
             at-least-once, without transactions"
                .into(),
        ),
        Scenario::BrokerFaults if cluster && config.kafka_script.is_none() => {
            Some("broker faults on a cluster need --kafka-script PATH --kafka-dir DIR (scripts/kafka.sh)".into())
        }
        Scenario::DbRestart if config.db_restart_command.is_none() => {
            Some("needs --db-restart-command CMD (e.g. 'systemctl restart postgresql')".into())
        }
        _ => None,
    }
}

/// What every scenario shares.
pub(crate) struct Env<'a> {
    pub settings: &'a Settings,
    pub config: &'a ChaosConfig,
    pub run_id: &'a str,
    pub bootstrap: &'a str,
    pub broker: Option<&'a DevBroker>,
}

/// One detector position: restarts keep its instance id (on a cluster the restart fences
/// its predecessor's transactional id at once).
pub(crate) struct Slot {
    pub instance: String,
    pub proc: ProcId,
    pub restarts: u32,
    /// Its process crashed (recorded once; a crashed detector is not restarted).
    pub crashed: bool,
}

/// A scenario in progress: what the fault drivers work with.
pub(crate) struct Run<'a> {
    pub env: &'a Env<'a>,
    pub scenario: Scenario,
    pub size: Size,
    pub fleet: Fleet,
    pub slots: Vec<Slot>,
    pub sink: ProcId,
    pub sink_restarts: u32,
    /// Rows when the current sink started (a killed sink that stored nothing had no
    /// batch to lose).
    pub sink_rows_at_start: u64,
    pub sampler: Sampler,
    pub started: Instant,
    pub stop: &'a CancellationToken,
    pub faults: Vec<Fault>,
    pub detector_group: String,
    pub images_topic: String,
    pub kafka: crate::kafka::KafkaConfig,
    pub sent: Arc<AtomicU64>,
    pub db_url: String,
    pub rss_growth_pct: Option<f64>,
    pub notes: Vec<String>,
    /// Crashes (see the module docs): each makes the scenario not exact.
    pub crashes: Vec<String>,
}

impl Run<'_> {
    /// Milliseconds on the scenario clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Sleeps `d` unless stopped.
    pub(crate) fn pause(&self, d: Duration) -> Result<(), ChaosError> {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if self.stop.is_cancelled() {
                return Err(ChaosError::Interrupted);
            }
            std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(100)));
        }
        Ok(())
    }

    /// Waits (up to `timeout`) until some partition has input waiting: a batch in flight.
    /// False when nothing was: a fault injected then proves nothing, and callers count it
    /// as without effect.
    pub(crate) fn wait_in_flight(&mut self, timeout: Duration) -> Result<bool, ChaosError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.sampler.in_flight() {
                return Ok(true);
            }
            self.pause(Duration::from_millis(50))?;
        }
        self.notes.push(format!("nothing was in flight for {} s before a fault", timeout.as_secs()));
        Ok(false)
    }

    /// Starts a detector with `instance` as its id (`extra`: failpoints, settings).
    pub(crate) fn spawn_detector(
        &mut self,
        label: &str,
        instance: &str,
        extra: &[(&str, &str)],
    ) -> Result<ProcId, ChaosError> {
        Ok(self.fleet.spawn(label, &["detect", "--instance-id", instance], extra)?)
    }

    /// Starts detector slot `i` again under its instance id.
    pub(crate) fn restart_slot(&mut self, i: usize, extra: &[(&str, &str)]) -> Result<ProcId, ChaosError> {
        self.slots[i].restarts += 1;
        self.slots[i].crashed = false;
        let (instance, n) = (self.slots[i].instance.clone(), self.slots[i].restarts);
        let id = self.spawn_detector(&format!("{instance}-r{n}"), &instance, extra)?;
        self.slots[i].proc = id;
        Ok(id)
    }

    /// Looks at every detector slot whose process exited by itself: a fenced worker stops,
    /// by design, for its restart policy to act, and is started again (this is that
    /// policy); any other exit is a crash, recorded (once) and not restarted.
    pub(crate) fn revive(&mut self) -> Result<(), ChaosError> {
        for i in 0..self.slots.len() {
            let id = self.slots[i].proc;
            if self.slots[i].crashed || self.fleet.is_running(id) {
                continue;
            }
            let label = self.fleet.label(id).to_string();
            if was_fenced(&self.fleet.log(id)) {
                eprintln!("chaos: {}: {label} was fenced and stopped; restarting it", self.scenario);
                self.restart_slot(i, &[])?;
            } else {
                let status = self.fleet.wait(id, Duration::ZERO);
                self.slots[i].crashed = true;
                self.crash(format!("{label} exited by itself without being fenced ({})", exit_text(status)));
            }
        }
        Ok(())
    }

    /// Records a crash (see the module docs) and prints it.
    pub(crate) fn crash(&mut self, why: String) {
        eprintln!("chaos: {}: CRASH: {why}", self.scenario);
        self.crashes.push(why);
    }

    /// Whether some detector slot still runs.
    pub(crate) fn any_detector_running(&mut self) -> bool {
        (0..self.slots.len()).any(|i| {
            let id = self.slots[i].proc;
            self.fleet.is_running(id)
        })
    }

    /// Starts the sink again (`extra`: failpoints).
    pub(crate) fn restart_sink(&mut self, extra: &[(&str, &str)]) -> Result<ProcId, ChaosError> {
        self.sink_restarts += 1;
        self.sink = self.fleet.spawn(&format!("sink-r{}", self.sink_restarts), &["sink"], extra)?;
        self.sink_rows_at_start = self.sampler.rows();
        Ok(self.sink)
    }

    /// Waits until detector `id` owns partitions.
    pub(crate) fn wait_owns(&mut self, id: ProcId, timeout: Duration) -> bool {
        let stop = self.stop.clone();
        self.fleet.wait_for_log(id, fleet::owns_partitions, timeout, &stop)
    }

    /// Waits (up to `timeout`) until what was waiting at the fault at `at_ms` is stored, so
    /// that the next fault's MTTR is its own and not the sum of overlapping outages.
    pub(crate) fn settle(&mut self, at_ms: u64, timeout: Duration) -> Result<(), ChaosError> {
        let deadline = Instant::now() + timeout;
        while !self.sampler.recovered(at_ms) {
            if Instant::now() >= deadline {
                self.notes.push(format!(
                    "the fault at {:.1} s was not recovered from within {} s; the next one overlaps it",
                    at_ms as f64 / 1000.0,
                    timeout.as_secs()
                ));
                return Ok(());
            }
            self.pause(Duration::from_millis(100))?;
        }
        Ok(())
    }

    /// Records a fault.
    pub(crate) fn fault(&mut self, kind: &'static str, at_ms: u64, effective: bool) {
        if !effective {
            self.notes.push(format!("a {kind} at {:.1} s had no effect", at_ms as f64 / 1000.0));
        }
        self.faults.push(Fault { kind, at_ms, effective, partitions: Vec::new() });
        eprintln!(
            "chaos: {}: {kind} at {:.1} s{} ({} rows, {} frames sent)",
            self.scenario,
            at_ms as f64 / 1000.0,
            if effective { "" } else { ": NO EFFECT" },
            self.sampler.rows(),
            self.sent.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    /// Records a fault of detector `victim`, with the partitions it owned (for the time to
    /// the first result, see the module docs).
    pub(crate) fn detector_fault(&mut self, kind: &'static str, at_ms: u64, effective: bool, partitions: Vec<i32>) {
        self.fault(kind, at_ms, effective);
        if let Some(last) = self.faults.last_mut() {
            last.partitions = partitions;
        }
    }

    /// Assignment lines in every detector log (each a rebalance a member took part in).
    pub(crate) fn assignments(&self) -> usize {
        self.fleet
            .all()
            .into_iter()
            .filter(|id| self.fleet.label(*id) != "sink" && !self.fleet.label(*id).starts_with("sink-"))
            .map(|id| fleet::assignments(&self.fleet.log(id)))
            .sum()
    }
}

/// The per-scenario names and the children's environment.
fn scenario_env(env: &Env<'_>, scenario: Scenario, db_url: &str) -> (Vec<(String, String)>, Settings) {
    let prefix = format!("chaos-{}-{}", env.run_id, scenario.name());
    let mut settings = env.settings.clone();
    settings.kafka.bootstrap_servers = env.bootstrap.to_string();
    settings.kafka.topics.images.name = format!("{prefix}-images");
    settings.kafka.topics.images.partitions = PARTITIONS;
    settings.kafka.topics.detections.name = format!("{prefix}-detections");
    settings.kafka.topics.detections.partitions = PARTITIONS;
    settings.kafka.topics.dlq.name = format!("{prefix}-images.dlq");
    settings.kafka.topics.dlq.partitions = 2;
    settings.detector.group_id = format!("{prefix}-detector");
    settings.sink.group_id = format!("{prefix}-sink");
    settings.sink.database_url = db_url.to_string();
    let delivery = if env.broker.is_some() { "at-least-once" } else { "exactly-once" };
    let mut vars: Vec<(String, String)> = [
        ("kafka.bootstrap_servers", env.bootstrap.to_string()),
        ("kafka.topics.images.name", settings.kafka.topics.images.name.clone()),
        ("kafka.topics.images.partitions", PARTITIONS.to_string()),
        ("kafka.topics.detections.name", settings.kafka.topics.detections.name.clone()),
        ("kafka.topics.detections.partitions", PARTITIONS.to_string()),
        ("kafka.topics.dlq.name", settings.kafka.topics.dlq.name.clone()),
        ("kafka.topics.dlq.partitions", "2".to_string()),
        ("detector.group_id", settings.detector.group_id.clone()),
        ("sink.group_id", settings.sink.group_id.clone()),
        ("sink.database_url", db_url.to_string()),
        ("detector.delivery", delivery.to_string()),
        ("detector.session_timeout_ms", SESSION_TIMEOUT_MS.to_string()),
        ("sink.session_timeout_ms", SESSION_TIMEOUT_MS.to_string()),
        ("detector.transaction_timeout_ms", "20000".to_string()),
        ("model.dir", env.settings.model.dir.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (env_key(k), v))
    .collect();
    if scenario == Scenario::Poison {
        // Low enough that the `oversized` poison frame is above it, far above every good one.
        vars.push((env_key("detector.max_record_bytes"), frames::POISON_MAX_RECORD_BYTES.to_string()));
    }
    vars.extend(env.config.sets.iter().map(|(k, v)| (env_key(k), v.clone())));
    if std::env::var_os("RUST_LOG").is_none() {
        vars.push(("RUST_LOG".into(), "info,librdkafka=warn,rdkafka=warn".into()));
    }
    (vars, settings)
}

/// The scenario's database URL (a PostgreSQL schema is created for it).
fn scenario_database(env: &Env<'_>, scenario: Scenario, dir: &Path) -> Result<String, ChaosError> {
    let Some(url) = &env.config.database else {
        // Named by the run: a --work-dir used before holds an earlier run's database, whose
        // rows would count as this run's.
        return Ok(format!("sqlite://{}", dir.join(format!("vigil-{}.sqlite", env.run_id)).display()));
    };
    if url.starts_with("sqlite://") {
        // One file per scenario next to the one named, so each audit sees its own rows.
        let path = PathBuf::from(url.trim_start_matches("sqlite://"));
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "vigil".into());
        let file = path.with_file_name(format!("{stem}-{}-{}.sqlite", env.run_id, scenario.name()));
        return Ok(format!("sqlite://{}", file.display()));
    }
    let schema = format!("vigil_chaos_{}_{}", env.run_id, scenario.name().replace('-', "_"));
    let db_err = |e: postgres::Error| ChaosError::Database { url: url.clone(), reason: e.to_string() };
    let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(db_err)?;
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).map_err(db_err)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}options=-csearch_path%3D{schema}"))
}

/// The PostgreSQL schema of an exact scenario is not worth keeping: dropped, so that
/// runs do not pile schemas up in a shared database (a failed one stays for inspection).
fn drop_scenario_schema(env: &Env<'_>, scenario: Scenario) {
    let Some(url) = env.config.database.as_ref().filter(|u| !u.starts_with("sqlite://")) else { return };
    let schema = format!("vigil_chaos_{}_{}", env.run_id, scenario.name().replace('-', "_"));
    if let Ok(mut client) = postgres::Client::connect(url, postgres::NoTls) {
        // Best effort: a schema left behind costs only space.
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).ok();
    }
}

/// Runs one scenario end to end; the report and, for the baseline, the capacity
/// (frames per second) it measured.
fn run_scenario(
    env: &Env<'_>,
    scenario: Scenario,
    rate: f64,
    runtime: &tokio::runtime::Handle,
    stop: &CancellationToken,
) -> Result<(ScenarioReport, Option<f64>), ChaosError> {
    let t0 = Instant::now();
    let dir = env.config.work_dir.join(scenario.name());
    std::fs::create_dir_all(&dir).map_err(|e| ChaosError::io(&dir, e))?;
    let db_url = scenario_database(env, scenario, &dir)?;
    let (vars, settings) = scenario_env(env, scenario, &db_url);
    let kafka = settings.kafka.clone();
    match env.broker {
        Some(broker) => broker.create_topics(&kafka)?,
        None => {
            runtime.block_on(crate::kafka::ensure_topics(&kafka, &kafka.topics.all()))?;
        }
    }
    let size = env.config.size(scenario);
    eprintln!("chaos: {scenario}: starting (logs in {})", dir.display());
    let mut fleet = Fleet::new(&env.config.vigil_bin, &dir, vars);
    let sink = fleet.spawn("sink", &["sink"], &[])?;
    let detectors = if scenario == Scenario::Storm { 1 } else { env.config.detectors };
    let mut slots = Vec::new();
    for i in 1..=detectors {
        let instance = format!("det-{i}");
        let proc = fleet.spawn(&instance, &["detect", "--instance-id", &instance], &[])?;
        slots.push(Slot { instance, proc, restarts: 0, crashed: false });
    }
    let mut report =
        ScenarioReport { scenario: scenario.name().into(), rate, dir: dir.display().to_string(), ..Default::default() };
    for slot in &slots {
        if !fleet.wait_for_log(slot.proc, fleet::owns_partitions, JOIN_TIMEOUT, stop) {
            if stop.is_cancelled() {
                return Err(ChaosError::Interrupted);
            }
            report.verdict = Verdict::NotExact(format!(
                "{} got no partitions within {} s:\n{}",
                slot.instance,
                JOIN_TIMEOUT.as_secs(),
                fleet.tails(15)
            ));
            report.seconds = t0.elapsed().as_secs_f64();
            return Ok((report, None));
        }
    }

    let started = Instant::now();
    let more = CancellationToken::new();
    let poison_every = if scenario == Scenario::Poison { frames::poison_every(size.frames) } else { 0 };
    let plan = StreamPlan {
        min_frames: size.frames,
        more: more.clone(),
        rate,
        poison_every,
        scenario: scenario.name().into(),
    };
    let stream = FrameStream::start(&kafka, PARTITIONS as usize, plan, stop.child_token())?;
    let sampler = Sampler::start(scenario.name(), &db_url, PARTITIONS as usize, stream.sent.clone(), started);
    let mut run = Run {
        env,
        scenario,
        size,
        fleet,
        slots,
        sink,
        sink_restarts: 0,
        sink_rows_at_start: 0,
        sampler,
        started,
        stop,
        faults: Vec::new(),
        detector_group: settings.detector.group_id.clone(),
        images_topic: kafka.topics.images.name.clone(),
        kafka: kafka.clone(),
        sent: stream.count.clone(),
        db_url: db_url.clone(),
        rss_growth_pct: None,
        notes: Vec::new(),
        crashes: Vec::new(),
    };
    let driven = faults::drive(&mut run);
    more.cancel();
    let streamed = stream.finish();
    driven?;
    let streamed = streamed?;
    if stop.is_cancelled() {
        return Err(ChaosError::Interrupted);
    }
    report.frames = streamed.frames;
    let good = streamed.frames - streamed.poison;

    // Drain: every good frame stored, within a deadline that grows with the work.
    let drain_budget = Duration::from_secs(120) + Duration::from_secs_f64(streamed.frames as f64 / rate.max(1.0));
    let drained = drain(&mut run, good, drain_budget)?;
    let capacity = (scenario == Scenario::Baseline && drained.is_none())
        .then(|| streamed.frames as f64 / started.elapsed().as_secs_f64().max(0.001));
    let samples = run.sampler.finish();

    // Stop everything cleanly and read what the detectors say about themselves.
    let all = run.fleet.all();
    let sink = run.sink;
    for id in all.iter().copied().filter(|id| *id != sink) {
        if run.fleet.is_running(id) {
            let status = run.fleet.terminate(id, STOP_TIMEOUT);
            if !status.is_some_and(|s| s.success()) {
                let label = run.fleet.label(id).to_string();
                run.crash(format!("{label} did not stop cleanly on SIGTERM at the end ({})", exit_text(status)));
            }
        }
    }
    run.fleet.terminate(run.sink, STOP_TIMEOUT);
    for id in all {
        let log = run.fleet.log(id);
        if was_fenced(&log) {
            report.fenced += 1;
        }
        let summary = run.fleet.stdout(id);
        if let Some(json) = summary.lines().find_map(|l| l.strip_prefix("summary: ")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(json) {
                report.aborted_txns += v["aborts"].as_u64().unwrap_or(0);
            }
        }
    }

    // The audit: the same code as `vigil verify`.
    let options = VerifyOptions { timeout: Duration::from_secs(30), topics_exact: env.broker.is_none() };
    let mut audit = runtime.block_on(crate::verify::run(&settings, &options, stop.child_token()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !audit.exact && Instant::now() < deadline && !stop.is_cancelled() {
        std::thread::sleep(Duration::from_secs(2));
        audit = runtime.block_on(crate::verify::run(&settings, &options, stop.child_token()))?;
    }
    report.rows = audit.rows;
    report.dlq = audit.dlq;
    report.missing = audit.missing;
    report.duplicates = audit.duplicates;
    report.topic_duplicates = audit.topic_duplicates;

    // Times to recovery and stalls.
    let mut by_kind: std::collections::BTreeMap<String, Vec<Option<u64>>> = Default::default();
    let mut overall = Vec::new();
    for f in run.faults.iter().filter(|f| f.effective) {
        let ms = progress::recovery_ms(&samples, f.at_ms);
        by_kind.entry(f.kind.to_string()).or_default().push(ms);
        overall.push(ms);
    }
    report.mttr = by_kind.iter().map(|(k, v)| (k.clone(), MttrStats::of(v))).collect();
    let wall_start_us = wall_clock_us() - run.started.elapsed().as_micros() as i64;
    let mut probe = progress::DbProbe::new(&run.db_url);
    let first: Vec<Option<u64>> = run
        .faults
        .iter()
        .filter(|f| f.effective && !f.partitions.is_empty())
        .map(|f| progress::first_result_ms(&mut probe, wall_start_us + f.at_ms as i64 * 1000, &f.partitions))
        .collect();
    if !first.is_empty() {
        let stats = MttrStats::of(&first);
        (report.first_result_ms_p50, report.first_result_ms_p95) = (stats.p50_ms, stats.p95_ms);
    }
    let stats = MttrStats::of(&overall);
    (report.mttr_ms_p50, report.mttr_ms_p95) = (stats.p50_ms, stats.p95_ms);
    report.max_stall_ms = progress::max_stall_ms(&samples);
    report.faults_injected = run.faults.iter().filter(|f| f.effective).count() as u64;
    report.faults_without_effect = run.faults.len() as u64 - report.faults_injected;
    report.rss_growth_pct = run.rss_growth_pct;
    report.crashes = run.crashes.len() as u64;
    if scenario == Scenario::Poison {
        report.faults_injected = streamed.poison;
    }

    report.verdict = verdict(scenario, &report, &audit, &streamed, drained, &run);
    report.seconds = t0.elapsed().as_secs_f64();
    if report.verdict != Verdict::Exact {
        std::fs::write(dir.join("audit.json"), serde_json::to_string_pretty(&audit).unwrap_or_default()).ok();
    } else {
        drop_scenario_schema(env, scenario);
    }
    Ok((report, capacity))
}

/// Waits until `good` rows are stored; `None` when drained, else why not.
fn drain(run: &mut Run<'_>, good: u64, budget: Duration) -> Result<Option<String>, ChaosError> {
    let deadline = Instant::now() + budget;
    let mut probe = DbProbe::new(&run.db_url);
    let mut last_print = Instant::now();
    loop {
        let rows = probe.rows();
        if rows >= good {
            return Ok(None);
        }
        if run.stop.is_cancelled() {
            return Err(ChaosError::Interrupted);
        }
        if !run.fleet.is_running(run.sink) {
            return Ok(Some(format!("the sink exited while draining ({rows} of {good} rows)")));
        }
        run.revive()?;
        if !run.crashes.is_empty() && !run.any_detector_running() {
            return Ok(Some(format!("no detector is left running ({rows} of {good} rows stored)")));
        }
        if Instant::now() > deadline {
            return Ok(Some(format!("did not drain within {} s: {rows} of {good} rows stored", budget.as_secs())));
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!("chaos: {}: draining, {rows} of {good} rows", run.scenario);
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Microseconds since the Unix epoch (the clock of the rows' `processed_at_us`).
fn wall_clock_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Whether a detector's log says it stopped because it was fenced (the detector's
/// `Fenced` error, or its batch loop's line).
pub(crate) fn was_fenced(log: &str) -> bool {
    log.contains("this worker was fenced") || log.contains("fenced by another producer")
}

/// An exit status in words.
pub(crate) fn exit_text(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        None => "status unknown".into(),
    }
}

/// The verdict from the audit, the drain and the faults.
fn verdict(
    scenario: Scenario,
    report: &ScenarioReport,
    audit: &crate::verify::VerifyReport,
    streamed: &frames::StreamSummary,
    drained: Option<String>,
    run: &Run<'_>,
) -> Verdict {
    if streamed.failed > 0 {
        return Verdict::NotExact(format!(
            "{} frames were not delivered to images ({})",
            streamed.failed,
            streamed.first_error.clone().unwrap_or_default()
        ));
    }
    if !run.crashes.is_empty() {
        return Verdict::NotExact(format!("{} crash(es): {}", run.crashes.len(), run.crashes.join("; ")));
    }
    if let Some(why) = drained {
        return Verdict::NotExact(why);
    }
    if !audit.exact || audit.frames != streamed.frames {
        return Verdict::NotExact(format!(
            "frames sent {}, audited {}, rows {}, dlq {}, missing {}, duplicates {}, unexpected {}, topic_duplicates {}, \
             open_transactions {}",
            streamed.frames,
            audit.frames,
            audit.rows,
            audit.dlq,
            audit.missing,
            audit.duplicates,
            audit.unexpected,
            audit.topic_duplicates,
            audit.open_transactions
        ));
    }
    if scenario == Scenario::Poison && report.dlq != streamed.poison {
        return Verdict::NotExact(format!("{} poison frames sent, {} dead-lettered", streamed.poison, report.dlq));
    }
    if let Some(growth) = report.rss_growth_pct {
        if growth >= 10.0 {
            return Verdict::NotExact(format!("a process's RSS grew {growth:.1}% after its warm-up (limit 10%)"));
        }
    }
    let expects_faults = !matches!(scenario, Scenario::Baseline);
    if expects_faults && report.faults_injected == 0 {
        let why = if run.notes.is_empty() { "no fault was injected".to_string() } else { run.notes.join("; ") };
        return Verdict::NoEffect(why);
    }
    Verdict::Exact
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ChaosConfig {
        ChaosConfig {
            bootstrap: None,
            database: None,
            scenarios: Vec::new(),
            quick: true,
            frames: None,
            faults: None,
            rate: None,
            detectors: 2,
            kafka_script: None,
            kafka_dir: None,
            db_restart_command: None,
            sets: Vec::new(),
            vigil_bin: PathBuf::from("vigil"),
            work_dir: PathBuf::from("/tmp/x"),
        }
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        assert!(config().validate().is_ok());
        let bad = [
            ChaosConfig { kafka_script: Some("k.sh".into()), ..config() },
            ChaosConfig { kafka_script: Some("k.sh".into()), kafka_dir: Some("d".into()), ..config() },
            ChaosConfig { rate: Some(0.0), ..config() },
            ChaosConfig { rate: Some(f64::NAN), ..config() },
            ChaosConfig { detectors: 0, ..config() },
            ChaosConfig { frames: Some(0), ..config() },
            ChaosConfig { faults: Some(0), ..config() },
            ChaosConfig { database: Some("mysql://x".into()), ..config() },
            ChaosConfig { sets: vec![("".into(), "1".into())], ..config() },
        ];
        for c in bad {
            let err = c.validate().unwrap_err();
            assert!(err.is_usage(), "{err}");
        }
        let cluster = ChaosConfig {
            bootstrap: Some("h:1".into()),
            kafka_script: Some("k.sh".into()),
            kafka_dir: Some("d".into()),
            ..config()
        };
        assert!(cluster.validate().is_ok());
    }

    #[test]
    fn only_a_fenced_exit_is_not_a_crash() {
        let fenced =
            "ERROR vigil::detector::batch_loop: fenced by another producer with this transactional.id; stopping";
        assert!(was_fenced(fenced));
        assert!(was_fenced("Error: this worker was fenced: another producer took over transactional.id x"));
        for crash in [
            "thread 'model' panicked at src/detector/model_thread.rs:10:5",
            "Error: the consumer lost its assignment",
            "ERROR vigil::detector: offset commit failed",
            "",
        ] {
            assert!(!was_fenced(crash), "{crash}");
        }
        use std::os::unix::process::ExitStatusExt;
        let status = |raw| Some(std::process::ExitStatus::from_raw(raw));
        assert_eq!(exit_text(status(1 << 8)), "exit code 1");
        assert_eq!(exit_text(status(9)), "killed by signal 9");
        assert_eq!(exit_text(None), "status unknown");
    }

    #[test]
    fn frames_and_faults_override_the_size() {
        let c = ChaosConfig { frames: Some(50), faults: Some(20), ..config() };
        let quick = Scenario::DetectorKill.size(true);
        assert_eq!(c.size(Scenario::DetectorKill), Size { frames: 50, rounds: 20, ..quick });
        assert_eq!(config().size(Scenario::DetectorKill), quick);
    }

    #[test]
    fn the_baseline_runs_first_when_the_rate_is_measured() {
        let c = ChaosConfig { scenarios: vec![Scenario::Zombie, Scenario::DetectorKill], ..config() };
        assert_eq!(c.plan(), [Scenario::Baseline, Scenario::DetectorKill, Scenario::Zombie]);
        let c = ChaosConfig { rate: Some(5.0), ..c };
        assert_eq!(c.plan(), [Scenario::DetectorKill, Scenario::Zombie]);
        assert_eq!(config().plan(), Scenario::ALL);
    }

    #[test]
    fn skips_say_what_is_missing() {
        assert!(skip_reason(Scenario::TxnFailpoints, &config()).unwrap().contains("--bootstrap"));
        let cluster = ChaosConfig { bootstrap: Some("h:1".into()), ..config() };
        assert!(skip_reason(Scenario::TxnFailpoints, &cluster).is_none());
        assert!(skip_reason(Scenario::BrokerFaults, &cluster).unwrap().contains("--kafka-script"));
        assert!(skip_reason(Scenario::BrokerFaults, &config()).is_none());
        assert!(skip_reason(Scenario::DbRestart, &config()).unwrap().contains("--db-restart-command"));
    }

    #[test]
    fn settings_keys_become_environment_variables() {
        assert_eq!(env_key("detector.static_membership"), "VIGIL__DETECTOR__STATIC_MEMBERSHIP");
        assert_eq!(env_key("kafka.client.session.timeout.ms"), "VIGIL__KAFKA__CLIENT__SESSION__TIMEOUT__MS");
    }
}
