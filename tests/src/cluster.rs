//! The real cluster of `scripts/kafka.sh` itself, for tests that need more than a
//! bootstrap: killing and restarting its nodes, finding partition leaders and transaction
//! coordinators, and its SASL listener.
//!
//! Environment (`.ci/run` exports all of them from `scripts/kafka.sh up`):
//! - `VIGIL_TEST_BOOTSTRAP`: the PLAINTEXT bootstrap (first line of `up`);
//! - `VIGIL_TEST_KAFKA_DIR`: the cluster's `--dir`, for `kill ID` / `start ID`;
//! - `VIGIL_TEST_SASL_BOOTSTRAP`: the SASL_PLAINTEXT bootstrap (`sasl-bootstrap:`, second
//!   line of `up`), with `VIGIL_TEST_SASL_USERNAME` / `VIGIL_TEST_SASL_PASSWORD` defaulting
//!   to the user the script creates (`vigil` / `vigil-secret`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::{real_kafka, repo_root};

/// A `scripts/kafka.sh` cluster the test may kill nodes of.
pub struct Cluster {
    pub bootstrap: String,
    pub dir: PathBuf,
}

impl Cluster {
    /// From `VIGIL_TEST_BOOTSTRAP` and `VIGIL_TEST_KAFKA_DIR`; `Err` says what is missing.
    pub fn from_env() -> Result<Cluster, String> {
        let bootstrap = real_kafka().ok_or("VIGIL_TEST_BOOTSTRAP is not set (a real Kafka)")?;
        let dir = std::env::var_os("VIGIL_TEST_KAFKA_DIR")
            .filter(|d| !d.is_empty())
            .ok_or("VIGIL_TEST_KAFKA_DIR is not set (the --dir of the scripts/kafka.sh cluster, to kill its nodes)")?;
        Ok(Cluster { bootstrap, dir: PathBuf::from(dir) })
    }

    /// `scripts/kafka.sh ARGS --dir DIR`; panics unless it exits 0.
    fn script(&self, args: &[&str]) -> String {
        let out = Command::new(repo_root().join("scripts/kafka.sh"))
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/kafka.sh");
        assert!(
            out.status.success(),
            "scripts/kafka.sh {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kill -9` of node `id`. The node comes back when the guard is restarted or dropped,
    /// so that a failing test does not leave the shared cluster a node short.
    pub fn kill(&self, id: i32) -> KilledNode<'_> {
        self.script(&["kill", &id.to_string()]);
        KilledNode { cluster: self, id, restarted: false }
    }

    /// Starts node `id` again; returns once it is back in the ISR of all its partitions.
    fn start(&self, id: i32) {
        self.script(&["start", &id.to_string()]);
    }

    /// Leader node of each partition of `topic`.
    pub fn leaders(&self, topic: &str) -> HashMap<i32, i32> {
        let consumer = metadata_consumer(&self.bootstrap);
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| (p.id(), p.leader()))).collect()
    }

    /// Records in each partition of `topic` now (high minus low watermark).
    pub fn records(&self, topic: &str) -> HashMap<i32, i64> {
        let consumer = metadata_consumer(&self.bootstrap);
        self.leaders(topic)
            .into_keys()
            .map(|partition| {
                let (low, high) =
                    consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
                (partition, high - low)
            })
            .collect()
    }

    /// The node that coordinates `transactional_id` (`kafka-transactions.sh describe`).
    pub fn transaction_coordinator(&self, transactional_id: &str) -> i32 {
        let out = kafka_tool(&[
            "kafka-transactions.sh",
            "--bootstrap-server",
            &self.bootstrap,
            "describe",
            "--transactional-id",
            transactional_id,
        ]);
        assert!(out.status.success(), "describe {transactional_id} failed:\n{}", out.stderr);
        coordinator_id(&out.stdout)
            .unwrap_or_else(|| panic!("no CoordinatorId in the description of {transactional_id}:\n{}", out.stdout))
    }
}

/// A node killed by [`Cluster::kill`].
pub struct KilledNode<'a> {
    cluster: &'a Cluster,
    pub id: i32,
    restarted: bool,
}

impl KilledNode<'_> {
    /// `scripts/kafka.sh start ID`: back, and in the ISR of all its partitions.
    pub fn restart(mut self) {
        self.restarted = true;
        self.cluster.start(self.id);
    }
}

impl Drop for KilledNode<'_> {
    fn drop(&mut self) {
        if !self.restarted {
            eprintln!("[vigil-tests] restarting node {} that the test killed", self.id);
            self.cluster.start(self.id);
        }
    }
}

/// The CoordinatorId column of `kafka-transactions.sh describe` (tab-separated, padded).
fn coordinator_id(table: &str) -> Option<i32> {
    let mut lines = table.lines().map(|l| l.split('\t').map(str::trim).collect::<Vec<_>>());
    let header = lines.next()?;
    let column = header.iter().position(|h| *h == "CoordinatorId")?;
    lines.next()?.get(column)?.parse().ok()
}

fn metadata_consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("metadata client")
}

/// What a command printed, and how it ended.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// `scripts/kafka.sh tool ARGS` (a Kafka command-line tool in a JVM).
pub fn kafka_tool(args: &[&str]) -> Output {
    let out = Command::new(repo_root().join("scripts/kafka.sh"))
        .arg("tool")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/kafka.sh tool");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd` to its end with stdout and stderr in `dir`; `None` when it was still
/// running after `timeout` (it is killed then).
pub fn run_with_timeout(mut cmd: Command, dir: &Path, label: &str, timeout: Duration) -> Option<Output> {
    let stdout = dir.join(format!("{label}.stdout"));
    let stderr = dir.join(format!("{label}.stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&stdout).expect("log file"))
        .stderr(std::fs::File::create(&stderr).expect("log file"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok(); // it may have exited just now
            child.wait().ok();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    Some(Output { status, stdout: read(&stdout), stderr: read(&stderr) })
}

/// The SASL listener of the cluster and the credentials of its user.
pub struct Sasl {
    pub bootstrap: String,
    pub username: String,
    pub password: String,
    /// SCRAM-SHA-512 (the listener also accepts PLAIN, which the tests do not use).
    pub mechanism: &'static str,
}

impl Sasl {
    /// From `VIGIL_TEST_SASL_BOOTSTRAP`; `None` when the cluster has no SASL listener.
    pub fn from_env() -> Option<Sasl> {
        let bootstrap = std::env::var("VIGIL_TEST_SASL_BOOTSTRAP").ok().filter(|s| !s.trim().is_empty())?;
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Some(Sasl {
            bootstrap,
            username: var("VIGIL_TEST_SASL_USERNAME", "vigil"),
            password: var("VIGIL_TEST_SASL_PASSWORD", "vigil-secret"),
            mechanism: "SCRAM-SHA-512",
        })
    }

    /// The `VIGIL__KAFKA__CLIENT__*` environment that makes every stage log in.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("VIGIL__KAFKA__CLIENT__SECURITY__PROTOCOL", "SASL_PLAINTEXT"),
            ("VIGIL__KAFKA__CLIENT__SASL__MECHANISMS", self.mechanism),
            ("VIGIL__KAFKA__CLIENT__SASL__USERNAME", &self.username),
            ("VIGIL__KAFKA__CLIENT__SASL__PASSWORD", &self.password),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Kafka's own client (Java) properties for the listener, SCRAM-SHA-512.
    pub fn java_client_properties(&self, password: &str) -> String {
        format!(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{}\" password=\"{}\";\n",
            self.username, password
        )
    }
}

/// Whether librdkafka (as linked into the tests, the same build as `vigil`) has SCRAM.
pub fn librdkafka_has_scram() -> bool {
    ClientConfig::new()
        .create_native_config()
        .and_then(|c| c.get("builtin.features"))
        .is_ok_and(|features| features.split(',').any(|f| f == "sasl_scram"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinator_column_is_found() {
        let table = "CoordinatorId\tTransactionalId   \tProducerId\n3            \tg-a\t1         \n";
        assert_eq!(coordinator_id(table), Some(3));
        assert_eq!(coordinator_id("TransactionalId\tProducerId\ng-a\t1\n"), None);
        assert_eq!(coordinator_id(""), None);
    }
}
