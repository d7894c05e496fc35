//! Broker failures under load on the real cluster of `scripts/kafka.sh`, and `vigil up`
//! against that cluster.
//!
//! A node is `kill -9`'d while a producer sends (idempotent, acks=all) and two
//! exactly-once detectors and a sink run: the leader of the busiest `images` partition,
//! or the transaction coordinator of a detector's transactional id. It is started again
//! (`scripts/kafka.sh start`, back in the ISR) and the run finishes: nothing lost, nothing
//! doubled, in the database and in the topics (read_committed).
//!
//! Needs `VIGIL_TEST_BOOTSTRAP` and `VIGIL_TEST_KAFKA_DIR` (the cluster's `--dir`, to kill
//! and start its nodes); skipped without them. `scripts/test.sh` runs this file after the
//! rest of the suite (its second pass), so that a node coming back cannot slow the other
//! tests down.

use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::cluster::Cluster;
use vigil_tests::{count_rows, serial, Options, Pipeline, Proc};

/// Frames per source and the producer's rate: about 16 s of sending, so that the kill
/// lands while frames flow. `cam-0` sends most: its partition is the busiest.
const SOURCES: [(&str, u64, u32); 3] = [("cam-0", 96, 6), ("cam-1", 32, 2), ("cam-2", 32, 2)];
const FRAMES: u64 = 160;
/// How long the node stays down: past broker.session.timeout.ms (9 s), so that the
/// controller fences it and leaders and coordinators move.
const DOWN_FOR: Duration = Duration::from_secs(12);

fn cluster_or_skip() -> Option<Cluster> {
    match Cluster::from_env() {
        Ok(cluster) => Some(cluster),
        Err(why) => {
            eprintln!("SKIPPED: broker fault tests need the scripts/kafka.sh cluster: {why}");
            None
        }
    }
}

/// The running pipeline of one scenario.
struct Run {
    p: Pipeline,
    sink: Proc,
    detectors: Vec<Proc>,
    producers: Vec<Proc>,
    started: Instant,
}

impl Run {
    fn start(name: &str) -> Run {
        let p = Pipeline::start(name, Options { delivery: Some("exactly-once"), ..Options::default() });
        let sink = p.sink("sink");
        let detectors = vec![p.detector("detector-a", Some("faults-a")), p.detector("detector-b", Some("faults-b"))];
        let producers = SOURCES
            .iter()
            .map(|(source, n, fps)| {
                p.spawn(
                    &format!("produce-{source}"),
                    &["produce", "--synthetic", &n.to_string(), "--source", source, "--fps", &fps.to_string()],
                )
            })
            .collect();
        Run { p, sink, detectors, producers, started: Instant::now() }
    }

    /// The detector group's transactional id of instance `instance`.
    fn transactional_id(&self, instance: &str) -> String {
        format!("{}-{instance}", self.p.detections.replace("-detections", "-detector"))
    }

    /// Waits for `n` rows while checking that no stage died.
    fn wait_rows(&mut self, n: u64) -> u64 {
        let mut alive: Vec<&mut Proc> = self.detectors.iter_mut().collect();
        alive.push(&mut self.sink);
        self.p.wait_rows(n, Duration::from_secs(300), &mut alive)
    }

    /// Waits until `images` holds `n` records; returns its busiest partition and how many
    /// records that has.
    fn wait_images(&self, cluster: &Cluster, n: i64) -> (i32, i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let records = cluster.records(&self.p.images);
            if records.values().sum::<i64>() >= n {
                return records.into_iter().max_by_key(|(_, n)| *n).expect("partitions");
            }
            assert!(Instant::now() < deadline, "{} did not reach {n} records: {records:?}", self.p.images);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Producers delivered everything; all rows stored; stages stop cleanly; exact.
    fn finish(mut self, scenario: &str) {
        for producer in &mut self.producers {
            let status = producer
                .wait(Duration::from_secs(240))
                .unwrap_or_else(|| panic!("{} did not finish:\n{}", producer.label, producer.stderr()));
            assert!(status.success(), "{} failed ({status}):\n{}", producer.label, producer.stderr());
        }
        self.wait_rows(FRAMES);
        let elapsed = self.started.elapsed();
        for stage in self.detectors.iter_mut().chain([&mut self.sink]) {
            let status = stage.terminate(Duration::from_secs(60));
            assert!(status.success(), "{} did not stop cleanly ({status}):\n{}", stage.label, stage.stderr());
        }
        let report = self.p.verify();
        self.p.assert_exact(&report, FRAMES, 0);
        assert_eq!(report["topics"]["detections_records"], FRAMES, "one committed result per frame: {report}");
        let summaries: Vec<Value> = self
            .detectors
            .iter()
            .map(|d| d.summary().unwrap_or_else(|| panic!("{} printed no summary:\n{}", d.label, d.stdout())))
            .collect();
        let sum = |key: &str| summaries.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum::<u64>();
        eprintln!(
            "[{scenario}] frames {FRAMES}, committed results {}, rows {}, aborts {}, producer restarts {}, {:.1} s",
            sum("results"),
            report["rows"],
            sum("aborts"),
            sum("producer_restarts"),
            elapsed.as_secs_f64()
        );
    }
}

/// kill -9 of the node leading the busiest `images` partition while frames flow.
#[test]
fn kill_nine_of_the_busiest_partition_leader_while_frames_flow_is_exact() {
    let Some(cluster) = cluster_or_skip() else { return };
    let _serial = serial();
    let mut run = Run::start("fault-leader");
    run.wait_rows(1);
    let (partition, records) = run.wait_images(&cluster, 20);
    let leader = cluster.leaders(&run.p.images)[&partition];
    let killed = cluster.kill(leader);
    eprintln!(
        "[leader] killed node {leader}, leader of {}/{partition} ({records} records), at {} rows, {:.1} s in",
        run.p.images,
        run.p.rows(),
        run.started.elapsed().as_secs_f64()
    );
    // The controller moves leadership once the node's broker session expires (9 s), later
    // on a loaded machine: poll for it, and keep the node down for DOWN_FOR at least.
    let down_since = Instant::now();
    let deadline = down_since + DOWN_FOR + Duration::from_secs(30);
    let moved = loop {
        let now = cluster.leaders(&run.p.images)[&partition];
        if now != leader || Instant::now() >= deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_ne!(
        moved,
        leader,
        "{}/{partition} has no new leader {:.0} s after node {leader} went down",
        run.p.images,
        down_since.elapsed().as_secs_f64()
    );
    eprintln!(
        "[leader] node {moved} leads {}/{partition} after {:.1} s",
        run.p.images,
        down_since.elapsed().as_secs_f64()
    );
    std::thread::sleep(DOWN_FOR.saturating_sub(down_since.elapsed()));
    killed.restart();
    eprintln!(
        "[leader] node {leader} back in the ISR at {} rows, {:.1} s in",
        run.p.rows(),
        run.started.elapsed().as_secs_f64()
    );
    run.finish("leader");
}

/// kill -9 of the transaction coordinator of a detector's transactional id while frames
/// flow.
#[test]
fn kill_nine_of_a_detectors_transaction_coordinator_while_frames_flow_is_exact() {
    let Some(cluster) = cluster_or_skip() else { return };
    let _serial = serial();
    let mut run = Run::start("fault-txn");
    // Both workers have committed transactions: their ids have coordinators.
    run.wait_rows(16);
    let transactional_id = run.transactional_id("faults-a");
    let coordinator = cluster.transaction_coordinator(&transactional_id);
    let killed = cluster.kill(coordinator);
    eprintln!(
        "[coordinator] killed node {coordinator}, coordinator of {transactional_id}, at {} rows, {:.1} s in",
        run.p.rows(),
        run.started.elapsed().as_secs_f64()
    );
    std::thread::sleep(DOWN_FOR);
    killed.restart();
    eprintln!(
        "[coordinator] node {coordinator} back in the ISR at {} rows, {:.1} s in",
        run.p.rows(),
        run.started.elapsed().as_secs_f64()
    );
    run.finish("coordinator");
}

/// `vigil up --bootstrap` starts no broker and runs the exactly-once detector on the
/// cluster: 7 rows, and `vigil verify --topics-exact` is exact.
#[test]
fn vigil_up_with_a_bootstrap_runs_exactly_once_on_the_cluster() {
    let Some(cluster) = cluster_or_skip() else { return };
    let _serial = serial();
    let p = Pipeline::start("up-real", Options::default());
    let db = p.database_url.clone();
    let started = Instant::now();
    let mut up = p.spawn(
        "up",
        &[
            "--bootstrap",
            &cluster.bootstrap,
            "up",
            "--fps",
            "0",
            "--count",
            "7",
            "--exit-when-done",
            "--database",
            &db,
            "--backend",
            "cpu",
            "--api-addr",
            "127.0.0.1:0",
        ],
    );
    let status =
        up.wait(Duration::from_secs(300)).unwrap_or_else(|| panic!("vigil up did not finish:\n{}", up.stderr()));
    let out = up.stdout();
    assert!(status.success(), "vigil up failed ({status}):\n{out}\n{}", up.stderr());
    assert!(
        out.contains(&format!("broker {}, detector exactly-once", cluster.bootstrap)),
        "up uses the cluster, exactly-once:\n{out}"
    );
    assert!(!up.stderr().contains("in-memory broker up"), "no in-memory broker:\n{}", up.stderr());
    assert_eq!(count_rows(&db), 7, "{out}");
    let report = p.verify_with(true);
    assert_eq!(report["exact"], true, "vigil verify --topics-exact: {report}");
    assert_eq!((report["frames"].as_u64(), report["rows"].as_u64()), (Some(7), Some(7)), "{report}");
    assert_eq!(report["topics"]["detections_redelivered"], 0, "{report}");
    eprintln!("[up] vigil up --bootstrap: 7 frames, 7 rows, exact, {:.1} s", started.elapsed().as_secs_f64());
}
