//! Helpers for Vigil's multi-process integration tests (`tests/tests/pipeline.rs`).
//!
//! Every test builds a [`Pipeline`]: random topic and group names, its own SQLite file
//! (or PostgreSQL schema) in a fresh directory, and a broker: by default its own
//! in-memory one (`vigil broker`, the `bootstrap:` line read from its stdout), or the
//! real Kafka named by `VIGIL_TEST_BOOTSTRAP`. Stages run as real `vigil` processes
//! ([`Proc`]), killed on drop so that a failing test leaves nothing behind; their logs
//! are kept in the test directory and printed when a test fails.
//!
//! The `vigil` binary is `VIGIL_BIN` when set, else `target/<profile>/vigil` after a
//! `cargo build` (a no-op when it is up to date), so a test never runs a stale binary.
//!
//! Delivery mode: on the in-memory broker the detectors run `at-least-once` (the mock
//! stores no transactional offsets, see docs/architecture.md) and exactness is checked at the sink
//! (database rows); against a real Kafka they run `exactly-once` and the topic-level
//! checks apply too ([`Pipeline::exactly_once_topics`]).

pub mod cluster;
pub mod http;
pub mod otlp;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// The checkout (parent of `tests/`), or `VIGIL_REPO_ROOT`: a test binary built here and
/// run elsewhere (scripts/gpu-bench.sh on a GPU machine) finds the samples and fixtures
/// of the checkout it runs in.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("VIGIL_REPO_ROOT") {
        Some(root) => PathBuf::from(root),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repo").to_path_buf(),
    }
}

/// A tool directory that scripts/setup-test-deps.sh fills: `$var`, or `~/.cache/vigil/<name>`.
pub fn tool_dir(var: &str, name: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/vigil").join(name),
        PathBuf::from,
    )
}

/// Heavy tests (several model processes each) run one at a time: the machines have
/// two cores.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `VIGIL_TEST_BOOTSTRAP`: a real Kafka to run against instead of the in-memory broker.
pub fn real_kafka() -> Option<String> {
    std::env::var("VIGIL_TEST_BOOTSTRAP").ok().filter(|s| !s.trim().is_empty())
}

/// The `vigil` binary (built once per test process).
pub fn vigil_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("VIGIL_BIN") {
            return PathBuf::from(bin);
        }
        // `--workspace --bins --tests` resolves features exactly like `cargo test
        // --workspace`, so this reuses every artifact of the outer build and only links
        // the binary; cargo names the executable in its JSON messages.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(repo_root())
            .args(["build", "--workspace", "--bins", "--tests", "--message-format=json-render-diagnostics"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let started = Instant::now();
        let output = build.output().expect("run cargo to build the vigil binary");
        assert!(output.status.success(), "cargo build of the vigil binary failed ({})", output.status);
        let bin = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            // Not the unit-test harness of the same target (`profile.test`).
            .filter(|m| {
                m["reason"] == "compiler-artifact" && m["target"]["name"] == "vigil" && m["profile"]["test"] == false
            })
            .filter(|m| m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no executable for the vigil binary");
        eprintln!("[vigil-tests] {} ready in {:.1} s", bin.display(), started.elapsed().as_secs_f64());
        bin
    })
}

/// The model directory: `VIGIL_MODEL_DIR`, else vigil's default `model.dir`,
/// `${XDG_CACHE_HOME:-$HOME/.cache}/vigil/models`, where `scripts/fetch-model.sh` puts the
/// weights (the same rule as `vigil::model::model_dir_for`; the model tests check that they agree).
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIGIL_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    let cache = match (std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from), std::env::var_os("HOME")) {
        (Some(xdg), _) if xdg.is_absolute() => xdg,
        (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".cache"),
        _ => return PathBuf::from("models"),
    };
    cache.join("vigil").join("models")
}

/// A running `vigil` process. Killed (SIGKILL) on drop if still running.
pub struct Proc {
    pub label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.status = Some(status);
                false
            }
            _ => true,
        }
    }

    /// `kill -9`: no chance to commit, flush or leave the group.
    pub fn kill9(&mut self) {
        self.child.kill().ok(); // already gone is fine
        self.status = self.child.wait().ok();
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit (SIGKILL after that).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("[vigil-tests] {} did not stop within {timeout:?} of SIGTERM; killing it", self.label);
        self.kill9();
        self.status.expect("waited")
    }

    /// Waits for the process to kill itself (SIGKILL) at failpoint `point` (`VIGIL_FAILPOINT`,
    /// see `pipeline/src/failpoint.rs`), and checks that it did reach it: a test must not
    /// pass by missing its window.
    pub fn wait_killed_at(&mut self, point: &str, timeout: Duration) {
        use std::os::unix::process::ExitStatusExt;
        let status = self
            .wait(timeout)
            .unwrap_or_else(|| panic!("{} never reached failpoint {point}:\n{}", self.label, self.stderr()));
        assert!(
            self.stderr().contains(&format!("failpoint {point} reached")),
            "{} exited ({status}) without reaching {point}:\n{}",
            self.label,
            self.stderr()
        );
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{} died of SIGKILL at {point}", self.label);
    }

    /// Waits for the process to exit by itself (`Duration::ZERO`: has it exited?).
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits until its stderr contains `needle`; false when `timeout` passes or it exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_where(|log| log.contains(needle), timeout)
    }

    /// Waits until `found` holds for its stderr; false when `timeout` passes or it exits first.
    pub fn wait_for_log_where(&mut self, found: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if found(&self.stderr()) {
                return true;
            }
            if !self.is_running() {
                return found(&self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything it wrote to stderr (logs) so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The `summary: {json}` line a detector prints when it exits.
    pub fn summary(&self) -> Option<Value> {
        self.stdout().lines().find_map(|l| l.strip_prefix("summary: ")).and_then(|j| serde_json::from_str(j).ok())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// Makes the child get SIGKILL when the test thread that started it goes away (a test
/// process killed by a CI timeout leaves no broker or detector behind).
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child being exec'd.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024))).ok();
    let mut text = String::new();
    file.read_to_string(&mut text).ok(); // a log tail for a failure message: best effort
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How long a stage may take to stop after SIGTERM.
pub const STOP: Duration = Duration::from_secs(60);

/// Stops a stage with SIGTERM and checks that it exits cleanly (exit status 0).
pub fn stop(p: &mut Proc) {
    let status = p.terminate(STOP);
    assert!(status.success(), "{} did not stop cleanly ({status}):\n{}", p.label, p.stderr());
}

/// Results a detector committed, from the summary it prints on exit.
pub fn results_of(detector: &Proc) -> u64 {
    let summary =
        detector.summary().unwrap_or_else(|| panic!("{} printed no summary:\n{}", detector.label, detector.stdout()));
    summary["results"].as_u64().expect("results in the summary")
}

/// Knobs of a test pipeline.
#[derive(Debug, Clone)]
pub struct Options {
    /// Partitions of `images` and `detections`.
    pub partitions: i32,
    /// Sink database; `None`: a fresh SQLite file in the test directory.
    pub database_url: Option<String>,
    /// Detector delivery mode; `None`: at-least-once on the in-memory broker,
    /// exactly-once on a real Kafka.
    pub delivery: Option<&'static str>,
    /// Use this bootstrap (a broker the test runs itself) instead of starting one.
    pub bootstrap: Option<String>,
    /// Extra environment for every process.
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options { partitions: 6, database_url: None, delivery: None, bootstrap: None, env: Vec::new() }
    }
}

/// One test's pipeline: broker, names, database, processes.
pub struct Pipeline {
    pub name: String,
    pub dir: PathBuf,
    pub bootstrap: String,
    /// Whether `bootstrap` is a real Kafka (`VIGIL_TEST_BOOTSTRAP`).
    pub real_kafka: bool,
    pub images: String,
    pub detections: String,
    pub dlq: String,
    pub database_url: String,
    pub delivery: &'static str,
    env: Vec<(String, String)>,
    broker: Option<Proc>,
    logs: Mutex<Vec<(String, PathBuf)>>,
    started: Instant,
}

impl Pipeline {
    /// Starts the broker (unless `VIGIL_TEST_BOOTSTRAP` or `options.bootstrap` names
    /// one) and prepares names, directory and environment.
    pub fn start(name: &str, options: Options) -> Pipeline {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let dir = std::env::temp_dir().join(format!("vigil-it-{name}-{suffix}"));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        let real = real_kafka();
        let images = format!("it-{name}-{suffix}-images");
        let detections = format!("it-{name}-{suffix}-detections");
        let dlq = format!("it-{name}-{suffix}-images.dlq");
        let database_url =
            options.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", dir.join("vigil.sqlite").display()));
        let delivery = options.delivery.unwrap_or(if real.is_some() { "exactly-once" } else { "at-least-once" });
        let p = options.partitions.to_string();
        let mut env: Vec<(String, String)> = vec![
            ("VIGIL__KAFKA__TOPICS__IMAGES__NAME".into(), images.clone()),
            ("VIGIL__KAFKA__TOPICS__IMAGES__PARTITIONS".into(), p.clone()),
            ("VIGIL__KAFKA__TOPICS__DETECTIONS__NAME".into(), detections.clone()),
            ("VIGIL__KAFKA__TOPICS__DETECTIONS__PARTITIONS".into(), p),
            ("VIGIL__KAFKA__TOPICS__DLQ__NAME".into(), dlq.clone()),
            ("VIGIL__KAFKA__TOPICS__DLQ__PARTITIONS".into(), "2".into()),
            ("VIGIL__DETECTOR__GROUP_ID".into(), format!("it-{name}-{suffix}-detector")),
            ("VIGIL__SINK__GROUP_ID".into(), format!("it-{name}-{suffix}-sink")),
            ("VIGIL__SINK__DATABASE_URL".into(), database_url.clone()),
            ("VIGIL__DETECTOR__BACKEND".into(), "cpu".into()),
            ("VIGIL__DETECTOR__DELIVERY".into(), delivery.into()),
            // Fast failover: a kill -9'd member's partitions move after ~6 s.
            ("VIGIL__DETECTOR__SESSION_TIMEOUT_MS".into(), "6000".into()),
            ("VIGIL__SINK__SESSION_TIMEOUT_MS".into(), "6000".into()),
            ("VIGIL__DETECTOR__TRANSACTION_TIMEOUT_MS".into(), "20000".into()),
            ("VIGIL__MODEL__DIR".into(), model_dir().display().to_string()),
            ("RUST_LOG".into(), "info,librdkafka=warn,rdkafka=warn".into()),
        ];
        env.extend(options.env.iter().cloned());
        let mut pipeline = Pipeline {
            name: name.to_owned(),
            dir,
            bootstrap: String::new(),
            real_kafka: real.is_some() && options.bootstrap.is_none(),
            images,
            detections,
            dlq,
            database_url,
            delivery,
            env,
            broker: None,
            logs: Mutex::new(Vec::new()),
            started: Instant::now(),
        };
        pipeline.bootstrap = match (options.bootstrap, real) {
            (Some(b), _) => b,
            (None, Some(b)) => b,
            (None, None) => pipeline.start_broker(),
        };
        pipeline.env.push(("VIGIL__KAFKA__BOOTSTRAP_SERVERS".into(), pipeline.bootstrap.clone()));
        eprintln!(
            "[vigil-tests] {name}: bootstrap {} ({}), detector {delivery}, database {}, logs in {}",
            pipeline.bootstrap,
            if pipeline.real_kafka { "real Kafka" } else { "in-memory broker" },
            pipeline.database_url,
            pipeline.dir.display()
        );
        pipeline
    }

    /// `vigil broker` with this test's topics; returns its bootstrap list.
    fn start_broker(&mut self) -> String {
        let mut cmd = self.command(&["broker", "--brokers", "3", "--group-rebalance-delay-ms", "0"]);
        let stderr = self.dir.join("broker.stderr");
        cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr).expect("broker log"));
        let mut child = cmd.spawn().expect("spawn vigil broker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            tx.send(first).ok();
            // Keep draining so the broker never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(line))) => line,
            other => {
                child.kill().ok();
                panic!("vigil broker did not print its bootstrap line ({other:?}); log:\n{}", tail(&stderr, 40));
            }
        };
        let bootstrap =
            line.strip_prefix("bootstrap: ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_owned();
        self.logs.lock().unwrap().push(("broker".into(), stderr.clone()));
        self.broker =
            Some(Proc { label: "broker".into(), child, stdout: self.dir.join("broker.stdout"), stderr, status: None });
        bootstrap
    }

    /// A `vigil` command with this pipeline's environment (inherited `VIGIL__*`
    /// variables removed), run from the checkout.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(vigil_bin());
        for (key, _) in std::env::vars() {
            if key.starts_with("VIGIL__") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(repo_root()).envs(self.env.iter().map(|(k, v)| (k, v))).args(args).stdin(Stdio::null());
        die_with_parent(&mut cmd);
        cmd
    }

    /// Adds an environment variable for processes started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts `vigil <args>` in the background; stdout and stderr go to files.
    pub fn spawn(&self, label: &str, args: &[&str]) -> Proc {
        self.spawn_with_env(label, args, &[])
    }

    /// [`Pipeline::spawn`] with extra environment for this process only.
    pub fn spawn_with_env(&self, label: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let stdout = self.dir.join(format!("{label}.stdout"));
        let stderr = self.dir.join(format!("{label}.stderr"));
        let child = self
            .command(args)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&stdout).expect("log file"))
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn vigil {args:?}: {e}"));
        self.logs.lock().unwrap().push((label.to_owned(), stderr.clone()));
        Proc { label: label.to_owned(), child, stdout, stderr, status: None }
    }

    /// A detector worker (`--instance-id` given for restarts that must fence their
    /// predecessor at once).
    pub fn detector(&self, label: &str, instance_id: Option<&str>) -> Proc {
        match instance_id {
            Some(id) => self.spawn(label, &["detect", "--instance-id", id]),
            None => self.spawn(label, &["detect"]),
        }
    }

    /// Joins the detectors' group as static member `instance` (`group.instance.id`), the way
    /// a second process started under that name would, and leaves again: the broker fences
    /// the member that held the name. Returns once this consumer got an assignment (or was
    /// fenced back itself), at most after `timeout`.
    pub fn join_as_static_member(&self, instance: &str, timeout: Duration) {
        let group = self.env_value("VIGIL__DETECTOR__GROUP_ID").expect("the detectors' group id");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("group.instance.id", instance)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("static member consumer");
        consumer.subscribe(&[&self.images]).expect("subscribe");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
                eprintln!("[vigil-tests] static member {instance}: {e}");
                if consumer.client().fatal_error().is_some() {
                    return;
                }
            }
            if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                return;
            }
        }
        panic!("joining as static member {instance} got no assignment within {timeout:?}");
    }

    /// The value of a setting's environment variable the stages get.
    fn env_value(&self, key: &str) -> Option<String> {
        self.env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// A detector armed with a failpoint (`VIGIL_FAILPOINT`, see the detector's
    /// `failpoint` module): e.g. `kill-after-offsets:3` kills it in its third transaction.
    pub fn detector_with_failpoint(&self, label: &str, instance_id: &str, failpoint: &str) -> Proc {
        self.spawn_with_env(label, &["detect", "--instance-id", instance_id], &[("VIGIL_FAILPOINT", failpoint)])
    }

    /// A sink.
    pub fn sink(&self, label: &str) -> Proc {
        self.spawn(label, &["sink"])
    }

    /// A sink armed with a failpoint: e.g. `sink-kill-before-db-commit:3` kills it while
    /// its third batch is written but not committed.
    pub fn sink_with_failpoint(&self, label: &str, failpoint: &str) -> Proc {
        self.spawn_with_env(label, &["sink"], &[("VIGIL_FAILPOINT", failpoint)])
    }

    /// One past the last record of each non-empty partition of `topic` (read_committed).
    pub fn ends(&self, topic: &str) -> HashMap<i32, i64> {
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for r in self.read_topic(topic) {
            let end = ends.entry(r.partition).or_default();
            *end = (*end).max(r.offset + 1);
        }
        ends
    }

    /// Waits until the sink group `group` has stored the end of every partition of
    /// `detections`: everything the detectors wrote is stored (a sink stopped now has
    /// read all of it).
    pub fn wait_stored_at_end(&self, group: &str, timeout: Duration) -> HashMap<i32, i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let (ends, stored) = (self.ends(&self.detections), stored_offsets(&self.database_url, group));
            if ends.iter().all(|(p, end)| stored.get(p) == Some(end)) {
                return ends;
            }
            assert!(Instant::now() < deadline, "stored offsets {stored:?} did not reach the ends {ends:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `vigil produce <args>` to completion; panics when it fails.
    pub fn produce(&self, args: &[&str]) {
        let mut full = vec!["produce"];
        full.extend_from_slice(args);
        let label = format!("produce-{}", uuid::Uuid::new_v4().simple());
        let mut p = self.spawn(&label[..16], &full);
        let status = p.wait(Duration::from_secs(120)).unwrap_or_else(|| panic!("vigil produce {args:?} hung"));
        assert!(status.success(), "vigil produce {args:?} failed ({status}):\n{}", tail(&p.stderr, 30));
    }

    /// `per_source` synthetic frames from each of `n_sources` cameras `cam-0`, `cam-1`, ...
    /// (spread over partitions by key); returns the number of frames.
    pub fn produce_cameras(&self, n_sources: usize, per_source: u64) -> u64 {
        let names: Vec<String> = (0..n_sources).map(|i| format!("cam-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.produce_synthetic(&refs, per_source);
        n_sources as u64 * per_source
    }

    /// `n` synthetic frames from each of `sources` (frames spread over partitions by key).
    pub fn produce_synthetic(&self, sources: &[&str], n: u64) {
        for source in sources {
            self.produce(&["--synthetic", &n.to_string(), "--source", source]);
        }
    }

    /// Rows in the sink database (0 while the table does not exist yet).
    pub fn rows(&self) -> u64 {
        count_rows(&self.database_url)
    }

    /// Waits until the database holds `n` rows; fails early when one of `alive` exits.
    pub fn wait_rows(&self, n: u64, timeout: Duration, alive: &mut [&mut Proc]) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut last = 0;
        loop {
            let rows = self.rows();
            if rows != last {
                last = rows;
            }
            if rows >= n {
                return rows;
            }
            for p in alive.iter_mut() {
                if !p.is_running() {
                    panic!(
                        "{} exited ({:?}) while waiting for {n} rows (have {rows}); its log:\n{}",
                        p.label,
                        p.status,
                        tail(&p.stderr, 40)
                    );
                }
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {n} rows (have {last})");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs `vigil verify` (with `--topics-exact` on a real Kafka with exactly-once
    /// detectors, where a duplicate in a topic is a failure) and returns its JSON report.
    pub fn verify(&self) -> Value {
        self.verify_with(self.topics_exact())
    }

    /// Runs `vigil verify`, with `--topics-exact` when `topics_exact` (for a real Kafka
    /// reached otherwise than through `VIGIL_TEST_BOOTSTRAP`), and returns its JSON report.
    pub fn verify_with(&self, topics_exact: bool) -> Value {
        let mut args = vec!["verify", "--database", &self.database_url];
        if topics_exact {
            args.push("--topics-exact");
        }
        let out = self.command(&args).output().expect("run vigil verify");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_else(|| {
            panic!("vigil verify printed no report ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr))
        });
        let report: Value = serde_json::from_str(line).expect("verify prints JSON");
        assert_eq!(
            report["exact"].as_bool() == Some(true),
            out.status.success(),
            "verify's exit status ({}) must match its verdict: {report}",
            out.status
        );
        report
    }

    /// Verifies until the report is exact or `timeout` passes; returns the last report.
    pub fn wait_exact(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.verify();
            if report["exact"] == Value::Bool(true) || Instant::now() > deadline {
                return report;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Asserts the report says every frame has exactly one outcome.
    pub fn assert_exact(&self, report: &Value, frames: u64, dlq: u64) {
        assert_eq!(report["frames"], frames, "frames: {report}");
        assert_eq!(report["rows"], frames - dlq, "rows: {report}");
        assert_eq!(report["dlq"], dlq, "dlq: {report}");
        assert_eq!(report["duplicates"], 0, "duplicates: {report}");
        assert_eq!(report["missing"], 0, "missing: {report}");
        assert_eq!(report["unexpected"], 0, "unexpected: {report}");
        assert_eq!(report["exact"], true, "{report}");
        // The table itself: one row per frame id, whatever verify computes.
        let rows = self.rows();
        assert_eq!(rows, frames - dlq, "rows in the database");
        if self.topics_exact() {
            self.exactly_once_topics(report);
        }
    }

    /// Whether the topics themselves must be exact: a real Kafka, exactly-once detectors.
    fn topics_exact(&self) -> bool {
        self.real_kafka && self.delivery == "exactly-once"
    }

    /// Real Kafka only: the topics themselves are exact under read_committed (one result
    /// per frame, one dead letter per bad frame), which the in-memory broker cannot show.
    pub fn exactly_once_topics(&self, report: &Value) {
        assert_eq!(report["topics_exact"], true, "verified with --topics-exact: {report}");
        assert_eq!(report["topic_duplicates"], 0, "outcomes beyond one per images record: {report}");
        assert_eq!(report["open_transactions"], 0, "transactions left open: {report}");
        assert_eq!(report["topics"]["detections_redelivered"], 0, "duplicate results in {}: {report}", self.detections);
        assert_eq!(report["topics"]["dlq_redelivered"], 0, "duplicate dead letters in {}: {report}", self.dlq);
        assert_eq!(report["results"], report["rows"], "results vs rows: {report}");
    }

    /// Every record of `topic`, from the beginning to the current end (read_committed).
    pub fn read_topic(&self, topic: &str) -> Vec<Record> {
        read_topic(&self.bootstrap, topic)
    }

    /// Records of aborted transactions in `topic`: written, never visible to
    /// read_committed readers (control markers are not records and count in neither).
    pub fn aborted_records(&self, topic: &str) -> usize {
        let committed = self.read_topic(topic).len();
        let all = read_topic_with(&self.bootstrap, topic, "read_uncommitted").len();
        all.saturating_sub(committed)
    }

    /// Produces raw bytes to `images` (records that `vigil produce` would never write).
    pub fn produce_raw(&self, key: &str, payload: Option<&[u8]>) {
        produce_raw(&self.bootstrap, &self.images, key, payload)
    }

    /// Prints every process log tail (called when a test fails).
    pub fn dump_logs(&self) {
        eprintln!(
            "==== {} failed after {:.0} s; logs in {} ====",
            self.name,
            self.started.elapsed().as_secs_f64(),
            self.dir.display()
        );
        for (label, path) in self.logs.lock().unwrap().iter() {
            eprintln!("---- {label} ({}) ----\n{}", path.display(), tail(path, 25));
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        } else {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

/// One Kafka record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning to the high watermarks seen now (read_committed).
///
/// On a transactional topic the last offsets are commit markers, which are never
/// delivered: a partition is read when the consumer's position has reached the high
/// watermark (seen at end-of-partition), not when a record at `high - 1` arrived.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<Record> {
    read_topic_with(bootstrap, topic, "read_committed")
}

/// Every record of `topic` under `isolation` (`read_committed`, or `read_uncommitted`,
/// which also returns the records of aborted transactions).
pub fn read_topic_with(bootstrap: &str, topic: &str, isolation: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("it-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("reader");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (lo, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        if hi > lo {
            ends.insert(p, hi);
            tpl.add_partition_offset(topic, p, Offset::Offset(lo)).unwrap();
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&tpl).expect("assign");
    let position = |p: i32| {
        consumer
            .position()
            .ok()
            .and_then(|l| l.find_partition(topic, p).and_then(|e| e.offset().to_raw()))
            .unwrap_or(-1)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() && Instant::now() < deadline {
        let message = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                if ends.get(&p).is_some_and(|end| position(p) >= *end) {
                    ends.remove(&p);
                }
                continue;
            }
            Some(message) => message.expect("read"),
        };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
        if ends.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
            ends.remove(&message.partition());
        }
    }
    assert!(ends.is_empty(), "could not read {topic} to its end: {ends:?} left");
    records
}

/// Produces one raw record (idempotent producer, large records allowed).
pub fn produce_raw(bootstrap: &str, topic: &str, key: &str, payload: Option<&[u8]>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "10000000")
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new().insert(Header { key: "test.origin", value: Some("raw") });
    let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key).headers(headers);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    producer.send(record).map_err(|(e, _)| e).expect("enqueue");
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Rows of `detections` in the database at `url` (0 when it or the table is missing).
pub fn count_rows(url: &str) -> u64 {
    count_table(url, "detections")
}

/// Rows of `table` in the database at `url` (0 when it or the table is missing).
pub fn count_table(url: &str, table: &str) -> u64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    if let Some(path) = url.strip_prefix("sqlite://") {
        let Ok(conn) = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return 0;
        };
        conn.busy_timeout(Duration::from_secs(10)).expect("set the SQLite busy timeout");
        return conn.query_row(&sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0) as u64;
    }
    let Ok(mut client) = postgres::Client::connect(url, postgres::NoTls) else { return 0 };
    client.query_one(&sql, &[]).map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0)
}

/// The counters of the sink's `sink stopped` log line (`batches`, `inserted`,
/// `duplicates`, `rejected`); `None` before it stopped cleanly.
pub fn sink_counts(sink: &Proc) -> Option<HashMap<String, u64>> {
    let log = sink.stderr();
    let line = log.lines().find_map(|l| l.split_once("sink stopped ").map(|(_, fields)| fields.to_owned()))?;
    Some(
        line.split_whitespace()
            .filter_map(|f| f.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

/// The highest `detections` offset of a stored row, per partition (`result_partition`,
/// `result_offset`), in SQLite or PostgreSQL.
pub fn max_row_offsets(url: &str) -> HashMap<i32, i64> {
    let sql = "SELECT result_partition, MAX(result_offset) FROM detections GROUP BY result_partition";
    let Some(path) = url.strip_prefix("sqlite://") else {
        let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
        let rows = client.query(sql, &[]).expect("read detections");
        return rows.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1))).collect();
    };
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

/// Stored next offsets of `group` (sink) per partition, in SQLite or PostgreSQL.
pub fn stored_offsets(url: &str, group: &str) -> HashMap<i32, i64> {
    let Some(path) = url.strip_prefix("sqlite://") else {
        let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
        let rows = client
            .query("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1", &[&group])
            .expect("read consumer_offsets");
        return rows.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1))).collect();
    };
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let mut stmt = conn.prepare("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = ?1").unwrap();
    stmt.query_map([group], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

/// A PostgreSQL schema of its own for one test, dropped on drop.
pub struct PgSchema {
    admin_url: String,
    pub schema: String,
    /// The URL with `search_path` set to the schema.
    pub url: String,
}

impl PgSchema {
    /// `None` (with the reason) when `VIGIL_TEST_DATABASE_URL` is unset or unreachable.
    pub fn create() -> Result<PgSchema, String> {
        let admin_url = std::env::var("VIGIL_TEST_DATABASE_URL")
            .map_err(|_| "VIGIL_TEST_DATABASE_URL is not set (scripts/test.sh sets it when PostgreSQL at postgres://127.0.0.1:5432/test answers)".to_string())?;
        let mut client = postgres::Client::connect(&admin_url, postgres::NoTls)
            .map_err(|e| format!("cannot connect to VIGIL_TEST_DATABASE_URL={admin_url}: {e}"))?;
        let schema = format!("vigil_it_{}", uuid::Uuid::new_v4().simple());
        client.batch_execute(&format!("CREATE SCHEMA {schema}")).map_err(|e| e.to_string())?;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
        Ok(PgSchema { admin_url, schema, url })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema)).ok();
        }
    }
}
