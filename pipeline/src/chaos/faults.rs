//! What each scenario does to the running pipeline, while frames stream. Every fault is
//! recorded with its time and whether it took hold (see the `chaos` module docs for what
//! counts as effective); the drivers wait for the pipeline to recover before the next
//! fault, so that each time to recovery is measured on its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::{ChaosError, Run, Scenario, SESSION_TIMEOUT_MS, STOP_TIMEOUT};
use crate::fleet::{self, ProcId};

/// How long a restarted or joining detector may take to own partitions.
const OWN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a kill or SIGTERM to be recovered from before the next one.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for a batch in flight before injecting anyway.
const FLIGHT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an armed process may take to reach its failpoint.
const FAILPOINT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after a fault its effect (a rebalance, a warning) may take to show.
const EFFECT_WINDOW: Duration = Duration::from_secs(15);

/// One injected fault.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub kind: &'static str,
    pub at_ms: u64,
    pub effective: bool,
    /// The partitions the faulted detector owned (empty: not a detector's fault).
    pub partitions: Vec<i32>,
}

/// Runs the scenario's faults; returns when they are done (the stream then ends).
pub(crate) fn drive(run: &mut Run<'_>) -> Result<(), ChaosError> {
    match run.scenario {
        Scenario::Baseline | Scenario::Poison => Ok(()),
        Scenario::DetectorKill => {
            for _ in 0..run.size.rounds {
                run.pause(Duration::from_millis(1_500))?;
                detector_kill(run)?;
            }
            Ok(())
        }
        Scenario::RollingSigterm => rolling(run),
        Scenario::Zombie => zombie(run),
        Scenario::Storm => {
            for cycle in 0..run.size.rounds {
                storm_cycle(run, cycle, 2)?;
            }
            Ok(())
        }
        Scenario::SinkKill => sink_kills(run),
        Scenario::TxnFailpoints => txn_failpoints(run),
        Scenario::SlowBatch => slow_batch(run),
        Scenario::BrokerFaults => broker_faults(run),
        Scenario::DbRestart => db_restart(run),
        Scenario::Soak => soak(run),
    }
}

/// A small random number (xorshift over the clock): which detector to kill.
fn random_below(n: usize) -> usize {
    let mut x = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % n.max(1) as u64) as usize
}

/// kill -9 of a random detector that owns partitions, restarted under its instance id.
fn detector_kill(run: &mut Run<'_>) -> Result<(), ChaosError> {
    run.revive()?;
    let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
    let owners: Vec<usize> =
        (0..run.slots.len()).filter(|i| fleet::owns_partitions(&run.fleet.log(run.slots[*i].proc))).collect();
    let i = if owners.is_empty() { random_below(run.slots.len()) } else { owners[random_below(owners.len())] };
    let victim = run.slots[i].proc;
    let partitions = fleet::owned_partitions(&run.fleet.log(victim));
    let at = run.now_ms();
    run.fleet.kill9(victim);
    let back = run.restart_slot(i, &[])?;
    let recovered = run.wait_owns(back, OWN_TIMEOUT);
    let effective = busy && !partitions.is_empty() && recovered;
    run.detector_fault("detector-kill9", at, effective, partitions);
    run.settle(at, SETTLE_TIMEOUT)
}

/// SIGTERM of every detector in turn (it commits its batch and leaves), restarted.
fn rolling(run: &mut Run<'_>) -> Result<(), ChaosError> {
    for _ in 0..run.size.rounds {
        for i in 0..run.slots.len() {
            run.revive()?;
            run.pause(Duration::from_millis(1_000))?;
            if run.slots[i].crashed {
                continue;
            }
            let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
            let victim = run.slots[i].proc;
            if !run.fleet.is_running(victim) {
                // It exited by itself meanwhile: not a SIGTERM's doing.
                run.revive()?;
                continue;
            }
            let partitions = fleet::owned_partitions(&run.fleet.log(victim));
            let at = run.now_ms();
            let status = run.fleet.terminate(victim, STOP_TIMEOUT);
            if !status.is_some_and(|s| s.success()) {
                // A stop that loses nothing is the point of SIGTERM: anything else fails.
                let label = run.fleet.label(victim).to_string();
                run.crash(format!("{label} did not stop cleanly on SIGTERM ({})", super::exit_text(status)));
            }
            let back = run.restart_slot(i, &[])?;
            let recovered = run.wait_owns(back, OWN_TIMEOUT);
            let effective = busy && !partitions.is_empty() && recovered;
            run.detector_fault("sigterm", at, effective, partitions);
            run.settle(at, SETTLE_TIMEOUT)?;
        }
    }
    Ok(())
}

/// Waits until the assignment lines of all detectors exceed `before`.
fn wait_rebalance(run: &mut Run<'_>, before: usize, timeout: Duration) -> Result<bool, ChaosError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if run.assignments() > before {
            return Ok(true);
        }
        run.pause(Duration::from_millis(100))?;
    }
    Ok(false)
}

/// A detector frozen (SIGSTOP) past the session timeout, then thawed. On a cluster it
/// freezes itself inside a transaction, right before the commit (failpoint
/// `pause-before-commit`), past the transaction timeout too: it must be fenced and stop.
fn zombie(run: &mut Run<'_>) -> Result<(), ChaosError> {
    let freeze = Duration::from_millis(SESSION_TIMEOUT_MS + 2_000);
    if run.env.broker.is_none() {
        let zombie = run.spawn_detector(
            "zombie",
            "zombie",
            &[("VIGIL_FAILPOINT", "pause-before-commit:3"), ("VIGIL__DETECTOR__TRANSACTION_TIMEOUT_MS", "8000")],
        )?;
        let stop = run.stop.clone();
        let reached = run.fleet.wait_for_log(
            zombie,
            |l| l.contains("failpoint pause-before-commit reached"),
            FAILPOINT_TIMEOUT,
            &stop,
        );
        let at = run.now_ms();
        let before = run.assignments();
        // Past the session timeout (its partitions move) and the transaction timeout 8 s.
        run.pause(Duration::from_secs(15))?;
        let moved = run.assignments() > before;
        run.fleet.signal(zombie, libc::SIGCONT);
        let exited = run.fleet.wait(zombie, Duration::from_secs(120)).is_some();
        if !exited {
            run.notes.push("the thawed zombie did not stop".into());
            run.fleet.terminate(zombie, STOP_TIMEOUT);
        }
        let fenced = run.fleet.log(zombie).contains("this worker was fenced");
        if reached && !fenced {
            run.notes.push("the thawed zombie was not fenced".into());
        }
        run.fault("zombie-sigstop", at, reached && moved && fenced);
        return Ok(());
    }
    let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
    let owners: Vec<usize> =
        (0..run.slots.len()).filter(|i| fleet::owns_partitions(&run.fleet.log(run.slots[*i].proc))).collect();
    let i = owners.first().copied().unwrap_or(0);
    let victim = run.slots[i].proc;
    let owned = fleet::owns_partitions(&run.fleet.log(victim));
    let before = run.assignments();
    let at = run.now_ms();
    run.fleet.signal(victim, libc::SIGSTOP);
    // Frozen past the session timeout, and until the survivors have taken its partitions
    // over (the group's rebalance may take a while longer), within a bound.
    let frozen = run.pause(freeze).and_then(|()| wait_rebalance(run, before, Duration::from_secs(60)));
    run.fleet.signal(victim, libc::SIGCONT);
    let moved = frozen?;
    // Thawed, it finds itself out of the group and rejoins; should it exit, `revive`
    // restarts it if it was fenced and records a crash otherwise.
    run.fleet.wait(victim, Duration::from_secs(5));
    run.revive()?;
    run.fault("zombie-sigstop", at, busy && owned && moved);
    Ok(())
}

/// One cycle of the rebalance storm: `joiners` detectors join (1 → 1 + joiners), own
/// partitions, and leave with SIGTERM (→ 1).
fn storm_cycle(run: &mut Run<'_>, cycle: u32, joiners: usize) -> Result<(), ChaosError> {
    run.revive()?;
    let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
    let at = run.now_ms();
    let mut ids: Vec<ProcId> = Vec::new();
    for j in 0..joiners {
        let name = format!("storm-{cycle}-{j}");
        ids.push(run.spawn_detector(&name, &name, &[])?);
    }
    let mut joined = true;
    for id in &ids {
        joined &= run.wait_owns(*id, OWN_TIMEOUT);
    }
    run.fault("rebalance-join", at, busy && joined);
    run.pause(Duration::from_secs(2))?;
    let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
    let before = run.assignments();
    let at = run.now_ms();
    for id in &ids {
        let status = run.fleet.terminate(*id, STOP_TIMEOUT);
        if !status.is_some_and(|s| s.success()) {
            let label = run.fleet.label(*id).to_string();
            run.crash(format!("{label} did not stop cleanly on SIGTERM ({})", super::exit_text(status)));
        }
    }
    let rebalanced = wait_rebalance(run, before, EFFECT_WINDOW)?;
    run.fault("rebalance-leave", at, busy && rebalanced);
    Ok(())
}

/// kill -9 of the sink, in turn: anywhere, right before its database COMMIT and right
/// after it (the sink's failpoints `sink-kill-before-db-commit`, `sink-kill-after-db-commit`).
fn sink_kills(run: &mut Run<'_>) -> Result<(), ChaosError> {
    const POINTS: [&str; 2] = ["sink-kill-before-db-commit", "sink-kill-after-db-commit"];
    for round in 0..run.size.rounds {
        run.pause(Duration::from_millis(1_500))?;
        let point = match round % 3 {
            0 => None,
            k => Some(POINTS[k as usize - 1]),
        };
        if let Some(point) = point {
            // Armed only now, by a clean restart (it stores what it read, then leaves): a
            // sink armed when the last fault restarted it could reach its point while that
            // fault was still being recovered from, and stall the recovery it is part of.
            let stopped = run.fleet.terminate(run.sink, Duration::from_secs(30));
            if !stopped.is_some_and(|s| s.success()) {
                run.notes.push(format!("the sink did not stop cleanly before {point} was armed: {stopped:?}"));
            }
            run.restart_sink(&[("VIGIL_FAILPOINT", &format!("{point}:2"))])?;
        }
        let sink = run.sink;
        let (at, effective) = match point {
            None => {
                // A sink that has stored nothing yet has no batch to lose: wait for its first.
                let deadline = Instant::now() + FLIGHT_TIMEOUT;
                while run.sampler.rows() <= run.sink_rows_at_start && Instant::now() < deadline {
                    run.pause(Duration::from_millis(100))?;
                }
                let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
                let stored = run.sampler.rows() > run.sink_rows_at_start;
                let at = run.now_ms();
                run.fleet.kill9(sink);
                (at, busy && stored)
            }
            Some(point) => {
                let stop = run.stop.clone();
                let needle = format!("failpoint {point} reached");
                // The sink writes a batch every few hundred milliseconds while frames flow.
                let reached = run.fleet.wait_for_log(sink, |l| l.contains(&needle), Duration::from_secs(60), &stop);
                let died = run.fleet.wait(sink, Duration::from_secs(10)).is_some();
                let at = run.now_ms();
                if !(reached && died) {
                    run.notes.push(format!("the sink never reached {point} (does this binary have it?)"));
                    run.fleet.kill9(sink);
                }
                (at, reached && died)
            }
        };
        run.restart_sink(&[])?;
        run.fault(if point.is_some() { "sink-failpoint-kill9" } else { "sink-kill9" }, at, effective);
        run.settle(at, SETTLE_TIMEOUT)?;
    }
    Ok(())
}

/// kill -9 of a detector at each failpoint of a transaction (cluster only), restarted
/// under the same instance id, which aborts the dead worker's open transaction.
fn txn_failpoints(run: &mut Run<'_>) -> Result<(), ChaosError> {
    const POINTS: [&str; 3] = ["kill-after-produce", "kill-after-offsets", "kill-during-commit"];
    for round in 0..run.size.rounds {
        for point in POINTS {
            let spec = format!("{point}:3");
            let armed =
                run.spawn_detector(&format!("armed-{point}-{round}"), "armed", &[("VIGIL_FAILPOINT", &spec)])?;
            let stop = run.stop.clone();
            let needle = format!("failpoint {point} reached");
            let reached = run.fleet.wait_for_log(armed, |l| l.contains(&needle), FAILPOINT_TIMEOUT, &stop);
            let status = run.fleet.wait(armed, Duration::from_secs(10));
            let at = run.now_ms();
            use std::os::unix::process::ExitStatusExt;
            let killed = status.is_some_and(|s| s.signal() == Some(libc::SIGKILL));
            if !(reached && killed) {
                run.notes.push(format!("{point} was not reached"));
                run.fleet.kill9(armed);
            }
            run.fault("failpoint-kill9", at, reached && killed);
        }
    }
    // The last armed worker's successor: aborts what it left open and works on.
    let last = run.spawn_detector("armed-final", "armed", &[])?;
    run.wait_owns(last, OWN_TIMEOUT);
    Ok(())
}

/// A batch slower than `transaction.timeout.ms` (cluster only): a worker frozen before its
/// commit for longer than its 5 s transaction timeout, within its session timeout; the
/// coordinator aborts the transaction, the worker's commit fails and the batch is redone
/// (by it, or by its successor if it was fenced).
fn slow_batch(run: &mut Run<'_>) -> Result<(), ChaosError> {
    let slow = run.spawn_detector(
        "slow",
        "slow",
        &[
            ("VIGIL_FAILPOINT", "pause-before-commit:3"),
            ("VIGIL__DETECTOR__TRANSACTION_TIMEOUT_MS", "5000"),
            ("VIGIL__DETECTOR__SESSION_TIMEOUT_MS", "45000"),
            ("VIGIL__DETECTOR__MAX_POLL_INTERVAL_MS", "60000"),
        ],
    )?;
    let stop = run.stop.clone();
    let reached =
        run.fleet.wait_for_log(slow, |l| l.contains("failpoint pause-before-commit reached"), FAILPOINT_TIMEOUT, &stop);
    let at = run.now_ms();
    run.pause(Duration::from_secs(10))?;
    run.fleet.signal(slow, libc::SIGCONT);
    let effect = |l: &str| l.contains("abort") || l.contains("fenced");
    let noticed = reached && run.fleet.wait_for_log(slow, effect, Duration::from_secs(60), &stop);
    if run.fleet.wait(slow, Duration::ZERO).is_some() {
        let next = run.spawn_detector("slow-r1", "slow", &[])?;
        run.wait_owns(next, OWN_TIMEOUT);
    }
    run.fault("slow-batch", at, noticed);
    Ok(())
}

/// Which processes' logs show a fault's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Detectors,
    Sink,
    All,
}

/// Lines of `stage`'s logs that `effect` matches, plus (`rebalances`) the detectors'
/// assignment lines: what one fault kind causes, counted before and after it.
fn effects(run: &Run<'_>, stage: Stage, effect: fn(&str) -> bool, rebalances: bool) -> usize {
    let matched: usize = run
        .fleet
        .all()
        .into_iter()
        .filter(|id| {
            let sink = run.fleet.label(*id).starts_with("sink");
            match stage {
                Stage::Detectors => !sink,
                Stage::Sink => sink,
                Stage::All => true,
            }
        })
        .map(|id| run.fleet.log(id).lines().filter(|l| effect(l)).count())
        .sum();
    matched + if rebalances { run.assignments() } else { 0 }
}

/// Waits up to [`EFFECT_WINDOW`] for [`effects`] to grow past `before`.
fn wait_effect(
    run: &mut Run<'_>,
    stage: Stage,
    effect: fn(&str) -> bool,
    rebalances: bool,
    before: usize,
) -> Result<bool, ChaosError> {
    let deadline = Instant::now() + EFFECT_WINDOW;
    while Instant::now() < deadline {
        if effects(run, stage, effect, rebalances) > before {
            return Ok(true);
        }
        run.pause(Duration::from_millis(200))?;
    }
    Ok(false)
}

/// A detector's offset commit failed (injected `OffsetCommit` errors).
pub(crate) fn commit_failed(line: &str) -> bool {
    line.contains("offset commit failed")
}

/// A client noticed its group coordinator change or fail (injected `JoinGroup` and
/// `Heartbeat` errors, a coordinator move): librdkafka's warnings name it.
pub(crate) fn coordinator_trouble(line: &str) -> bool {
    (line.contains(" WARN ") || line.contains(" ERROR ")) && line.to_ascii_lowercase().contains("coordinator")
}

/// A client lost a broker (a node stopped or killed): librdkafka's request time-outs and
/// disconnections, its session time-out.
pub(crate) fn broker_trouble(line: &str) -> bool {
    (line.contains(" WARN ") || line.contains(" ERROR "))
        && ["REQTMOUT", "SESSTMOUT", "Disconnected", "timed out", "Connection refused", "FAIL"]
            .iter()
            .any(|m| line.contains(m))
}

/// The sink lost its database and retries (a database restart).
pub(crate) fn database_trouble(line: &str) -> bool {
    (line.contains(" WARN ") || line.contains(" ERROR "))
        && ["database connection lost", "database unavailable", "database write failed", "cannot read stored offsets"]
            .iter()
            .any(|m| line.contains(m))
}

fn broker_faults(run: &mut Run<'_>) -> Result<(), ChaosError> {
    if run.env.broker.is_some() {
        embedded_broker_faults(run)
    } else {
        cluster_broker_faults(run)
    }
}

/// The embedded broker's injected errors, one kind at a time while batches are in
/// flight, and coordinator moves.
fn embedded_broker_faults(run: &mut Run<'_>) -> Result<(), ChaosError> {
    use RDKafkaRespErr::*;
    let broker = run.env.broker.expect("called for the embedded broker");
    let group = run.detector_group.clone();
    // The mock answers the next requests of an API with the errors, whichever client
    // sends them; so each step is judged by what the detectors' logs show. No Produce
    // step: the frame stream (in this process) takes those errors as often as the
    // detectors, and librdkafka retries them without a trace.
    // Detectors here run at-least-once: they send no TxnOffsetCommit or EndTxn, so their
    // commit is hit where it happens, in OffsetCommit, with an error librdkafka does not
    // retry (it retries COORDINATOR_NOT_AVAILABLE silently): the detector logs the
    // failed commit.
    let steps: [(&'static str, RDKafkaApiKey, &[RDKafkaRespErr]); 3] = [
        ("offset-commit-errors", RDKafkaApiKey::OffsetCommit, &[RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3]),
        ("joingroup-errors", RDKafkaApiKey::JoinGroup, &[RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 3]),
        ("heartbeat-errors", RDKafkaApiKey::Heartbeat, &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 3]),
    ];
    for (kind, api, errors) in steps {
        run.pause(Duration::from_secs(2))?;
        let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
        // The commit step counts the detectors' failed commits; the group steps their
        // rebalances (and coordinator warnings).
        let rebalances = api != RDKafkaApiKey::OffsetCommit;
        let effect: fn(&str) -> bool = if rebalances { coordinator_trouble } else { commit_failed };
        let before = effects(run, Stage::Detectors, effect, rebalances);
        let at = run.now_ms();
        broker.request_errors(api, errors);
        if api == RDKafkaApiKey::JoinGroup {
            // A join happens only in a rebalance: start one (the sink may take some).
            broker.request_errors(RDKafkaApiKey::Heartbeat, &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 3]);
        }
        let effective = wait_effect(run, Stage::Detectors, effect, rebalances, before)?;
        broker.clear_request_errors(api);
        broker.clear_request_errors(RDKafkaApiKey::Heartbeat);
        run.fault(kind, at, busy && effective);
    }
    for target in [2, 3] {
        run.pause(Duration::from_secs(2))?;
        let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
        let before = effects(run, Stage::Detectors, coordinator_trouble, true);
        let at = run.now_ms();
        broker.group_coordinator(&group, target)?;
        // Clients notice a moved coordinator on their next request to the old one.
        let effective = wait_effect(run, Stage::Detectors, coordinator_trouble, true, before)?;
        run.fault("coordinator-move", at, busy && effective);
    }
    Ok(())
}

/// `--kafka-script ARGS… --dir DIR` (`tool` without `--dir`): its stdout, or why it failed.
fn kafka_script(run: &Run<'_>, args: &[&str]) -> Result<String, String> {
    let (Some(script), Some(dir)) = (&run.env.config.kafka_script, &run.env.config.kafka_dir) else {
        return Err("no --kafka-script".into());
    };
    call_script(script, dir, args)
}

fn call_script(script: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(script)
        .args(script_args(args, dir))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{} {args:?}: {} {}", script.display(), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A cluster node about to be killed: started again by [`DownedNode::start`], or when
/// this drops (an error, Ctrl-C), so that no path leaves a node of the cluster dead.
struct DownedNode {
    script: Option<(PathBuf, PathBuf)>,
    node: String,
    started: bool,
}

impl DownedNode {
    fn new(run: &Run<'_>, node: i32) -> DownedNode {
        let script = run.env.config.kafka_script.clone().zip(run.env.config.kafka_dir.clone());
        DownedNode { script, node: node.to_string(), started: false }
    }

    /// Starts the node again; why not, if it failed.
    fn start(mut self) -> Result<String, String> {
        self.started = true;
        self.call_start()
    }

    fn call_start(&self) -> Result<String, String> {
        let Some((script, dir)) = &self.script else { return Err("no --kafka-script".into()) };
        call_script(script, dir, &["start", &self.node])
    }
}

impl Drop for DownedNode {
    fn drop(&mut self) {
        if !self.started {
            if let Err(e) = self.call_start() {
                eprintln!("chaos: cannot start node {} again: {e}", self.node);
            }
        }
    }
}

/// The script's arguments: `--dir DIR` after the command's, except for `tool CLASS
/// ARGS…`, which hands every argument to the Kafka class.
fn script_args(args: &[&str], dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    if args.first() != Some(&"tool") {
        all.push("--dir".into());
        all.push(dir.into());
    }
    all
}

/// Leader broker id of every partition of `images`.
fn leaders(run: &Run<'_>) -> HashMap<i32, i32> {
    let Ok(client) = crate::kafka::metadata_client(&run.kafka) else { return HashMap::new() };
    let Ok(md) = client.fetch_metadata(Some(&run.images_topic), Duration::from_secs(10)) else {
        return HashMap::new();
    };
    md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| (p.id(), p.leader()))).collect()
}

/// Waits until partition 0 of `images` is led by another node than `leader`.
fn wait_leader_moved(run: &Run<'_>, leader: i32, timeout: Duration) -> Result<bool, ChaosError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if leaders(run).get(&0).is_some_and(|l| *l != leader && *l >= 0) {
            return Ok(true);
        }
        run.pause(Duration::from_millis(500))?;
    }
    Ok(false)
}

/// The active KRaft controller, through the script's `tool` command.
fn controller(run: &Run<'_>) -> Option<i32> {
    let out = kafka_script(
        run,
        &["tool", "kafka-metadata-quorum.sh", "--bootstrap-server", run.env.bootstrap, "describe", "--status"],
    )
    .ok()?;
    out.lines().find_map(|l| l.trim().strip_prefix("LeaderId:")).and_then(|v| v.trim().parse().ok())
}

/// On a cluster: kill -9 of the leader of a busy partition, of the controller, and a
/// broker stopped (SIGSTOP) for 30 s; each node started again afterwards.
fn cluster_broker_faults(run: &mut Run<'_>) -> Result<(), ChaosError> {
    run.revive()?;
    // kill -9 of a leader.
    let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
    let before = leaders(run);
    if let Some(&leader) = before.get(&0) {
        let node = DownedNode::new(run, leader);
        let at = run.now_ms();
        let killed = kafka_script(run, &["kill", &leader.to_string()]);
        // The controller moves the leadership once the node's session expires (9 s).
        let moved = wait_leader_moved(run, leader, Duration::from_secs(30))?;
        if let Err(e) = &killed {
            run.notes.push(e.clone());
        }
        if let Err(e) = node.start() {
            run.notes.push(e);
        }
        run.fault("broker-kill9", at, busy && killed.is_ok() && moved);
    }
    // kill -9 of the controller.
    run.revive()?;
    run.pause(Duration::from_secs(3))?;
    let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
    match controller(run) {
        Some(id) => {
            let node = DownedNode::new(run, id);
            let at = run.now_ms();
            let killed = kafka_script(run, &["kill", &id.to_string()]);
            run.pause(Duration::from_secs(10))?;
            let moved = controller(run).is_some_and(|now| now != id);
            if let Err(e) = node.start() {
                run.notes.push(e);
            }
            run.fault("controller-kill9", at, busy && killed.is_ok() && moved);
        }
        None => run.notes.push("could not find the controller (kafka-metadata-quorum.sh)".into()),
    }
    // SIGSTOP of a broker (the leader of partition 0 now) for 30 s.
    run.revive()?;
    run.pause(Duration::from_secs(3))?;
    let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
    if let Some(&leader) = leaders(run).get(&0) {
        let pid = kafka_script(run, &["pid", &leader.to_string()]).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let before = effects(run, Stage::All, broker_trouble, true);
            let at = run.now_ms();
            // SAFETY: kill(2) on the pid the script reports for its node; SIGSTOP/SIGCONT only.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            let paused = run.pause(Duration::from_secs(30));
            // SAFETY: as above; the node must be thawed even when interrupted.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            paused?;
            // Clients timed out on it or lost it, the detectors rebalanced, or a leader moved.
            let effective = effects(run, Stage::All, broker_trouble, true) > before
                || leaders(run).get(&0).is_some_and(|l| *l != leader);
            run.fault("broker-sigstop", at, busy && effective);
        } else {
            run.notes.push(format!("no pid for node {leader}"));
        }
    }
    Ok(())
}

/// The database server restarted (`--db-restart-command`) while batches are stored.
fn db_restart(run: &mut Run<'_>) -> Result<(), ChaosError> {
    let Some(cmd) = run.env.config.db_restart_command.clone() else { return Ok(()) };
    run.pause(Duration::from_secs(3))?;
    let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
    let before = effects(run, Stage::Sink, database_trouble, false);
    let at = run.now_ms();
    let status = Command::new("sh").arg("-c").arg(&cmd).stdin(std::process::Stdio::null()).status();
    let ok = status.as_ref().is_ok_and(|s| s.success());
    if !ok {
        run.notes.push(format!("{cmd:?} failed: {status:?}"));
    }
    let effective = ok && wait_effect(run, Stage::Sink, database_trouble, false, before)?;
    run.fault("db-restart", at, busy && effective);
    Ok(())
}

/// Kills, rebalances and broker faults mixed for the soak's duration; the RSS of every
/// process that lives through it is sampled, and growth after the warm-up (the first
/// third of its life) reported.
fn soak(run: &mut Run<'_>) -> Result<(), ChaosError> {
    let until = Instant::now() + run.size.soak;
    let mut rss: HashMap<ProcId, Vec<u64>> = HashMap::new();
    let mut step = 0u32;
    let mut next_fault = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        run.revive()?;
        for id in run.fleet.all() {
            if let Some(kib) = run.fleet.rss_kib(id) {
                rss.entry(id).or_default().push(kib);
            }
        }
        if Instant::now() >= next_fault {
            match step % 3 {
                0 => detector_kill(run)?,
                1 => storm_cycle(run, step, 1)?,
                _ => {
                    if run.env.broker.is_some() {
                        let broker = run.env.broker.expect("checked");
                        let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
                        let before = run.assignments();
                        let at = run.now_ms();
                        broker.request_errors(
                            RDKafkaApiKey::Heartbeat,
                            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 2],
                        );
                        let effective = wait_rebalance(run, before, EFFECT_WINDOW)?;
                        run.fault("heartbeat-errors", at, busy && effective);
                    } else if run.env.config.kafka_script.is_some() {
                        let leader = leaders(run).get(&0).copied();
                        if let Some(leader) = leader {
                            let node = DownedNode::new(run, leader);
                            let busy = run.wait_in_flight(FLIGHT_TIMEOUT)?;
                            let at = run.now_ms();
                            let killed = kafka_script(run, &["kill", &leader.to_string()]).is_ok();
                            let moved = wait_leader_moved(run, leader, Duration::from_secs(30))?;
                            if let Err(e) = node.start() {
                                run.notes.push(e);
                            }
                            run.fault("broker-kill9", at, busy && killed && moved);
                        }
                    } else {
                        detector_kill(run)?;
                    }
                }
            }
            step += 1;
            next_fault = Instant::now() + Duration::from_secs(10);
        }
        run.pause(Duration::from_secs(1))?;
    }
    let mut worst: Option<(f64, ProcId)> = None;
    for (id, samples) in rss.iter().filter(|(_, v)| v.len() >= 20) {
        if let Some(g) = rss_growth_pct(samples) {
            if worst.is_none_or(|(w, _)| g > w) {
                worst = Some((g, *id));
            }
        }
    }
    if let Some((g, id)) = worst {
        let label = run.fleet.label(id).to_string();
        run.notes.push(format!("largest RSS growth after warm-up: {label} {g:.1}%"));
        eprintln!("chaos: soak: largest RSS growth after warm-up: {label} {g:.1}%");
    }
    run.rss_growth_pct = worst.map(|(g, _)| g);
    Ok(())
}

/// RSS growth after the warm-up, percent: the peak of the last quarter of the samples
/// over the peak of the warm-up (the first half: model loading, allocator pools and
/// librdkafka buffers reach their working size there).
pub(crate) fn rss_growth_pct(samples: &[u64]) -> Option<f64> {
    let (warm_up, rest) = samples.split_at(samples.len() / 2);
    let warm = *warm_up.iter().max()?;
    let last = *rest[rest.len() - rest.len().div_ceil(2).min(rest.len())..].iter().max()?;
    (warm > 0).then(|| (last as f64 - warm as f64) * 100.0 / warm as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kafka_script_gets_its_dir_except_for_tool() {
        let dir = std::path::Path::new("/tmp/k");
        assert_eq!(script_args(&["kill", "2"], dir), ["kill", "2", "--dir", "/tmp/k"]);
        let tool = ["tool", "kafka-metadata-quorum.sh", "--bootstrap-server", "b:1", "describe", "--status"];
        assert_eq!(script_args(&tool, dir), tool);
    }

    #[test]
    fn each_fault_counts_only_what_it_causes() {
        let commit = "2026-11-30T06:59:29Z  WARN vigil::detector::transaction: offset commit failed; the batch may be \
                      processed again error=Consumer commit error: OffsetMetadataTooLarge";
        let session = "2026-11-30T06:59:44Z  WARN librdkafka: librdkafka: SESSTMOUT [thrd:main]: Consumer group \
                       session timed out (in join-state steady) after 6017 ms without a successful response from the \
                       group coordinator (broker 3, last error was Broker: Not coordinator)";
        let db = "2026-11-30T07:00:00Z  WARN vigil::sink::db: database connection lost; the next attempt reconnects";
        let unrelated = "2026-11-30T07:00:00Z  WARN vigil::detector::judge: dead letter sent kind=corrupt_image";
        let info_db = "2026-11-30T07:00:00Z  INFO vigil::sink: database ready (schema migrated)";
        assert!(commit_failed(commit) && !commit_failed(session) && !commit_failed(db));
        assert!(coordinator_trouble(session) && !coordinator_trouble(commit) && !coordinator_trouble(db));
        assert!(broker_trouble(session) && !broker_trouble(commit) && !broker_trouble(db));
        assert!(database_trouble(db) && !database_trouble(commit) && !database_trouble(info_db));
        for effect in [commit_failed, coordinator_trouble, broker_trouble, database_trouble] {
            assert!(!effect(unrelated), "any warning is not an effect");
        }
    }

    #[test]
    fn rss_growth_is_measured_after_the_warm_up() {
        // Growth within the warm-up (100 → 200) does not count; its peak 200 → 210 is 5%.
        assert_eq!(rss_growth_pct(&[100, 150, 200, 190, 205, 210, 200, 210]), Some(5.0));
        assert_eq!(rss_growth_pct(&[]), None);
        assert_eq!(rss_growth_pct(&[7]), None, "no warm-up");
        assert_eq!(rss_growth_pct(&[0, 0, 0, 0]), None);
        assert!(rss_growth_pct(&[300, 300, 250, 250]).unwrap() < 0.0);
        // A leak shows: the warm-up peak 110, then 130 at the end (+18.2%).
        let leak = rss_growth_pct(&[100, 100, 110, 120, 125, 130]).unwrap();
        assert!((leak - 200.0 / 11.0).abs() < 1e-9, "{leak}");
    }
}
