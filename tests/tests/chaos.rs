//! `vigil chaos` end to end on the embedded broker: the baseline and kill -9 of
//! detectors, each one JSON line with every field the issue asks for, exact, and the kill
//! effective (counted, with a time to recovery). On a real Kafka (`VIGIL_TEST_BOOTSTRAP`)
//! this test does nothing: CI's `chaos` phase runs the command on the cluster.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{real_kafka, serial, vigil_bin};

/// Fields every scenario line has.
const FIELDS: [&str; 16] = [
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
    "verdict",
];

#[test]
fn quick_baseline_and_detector_kill_are_exact_on_the_embedded_broker() {
    if real_kafka().is_some() {
        eprintln!(
            "[chaos] SKIPPED here: with VIGIL_TEST_BOOTSTRAP set, CI's chaos phase runs vigil chaos on the cluster"
        );
        return;
    }
    let _serial = serial();
    let work = std::env::temp_dir().join(format!("vigil-it-chaos-{}", uuid::Uuid::new_v4().simple()));
    let mut cmd = Command::new(vigil_bin());
    for (key, _) in std::env::vars() {
        if key.starts_with("VIGIL__") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["chaos", "--quick", "--scenario", "baseline", "--scenario", "detector-kill", "--json", "--work-dir"])
        .arg(&work)
        .env("VIGIL__MODEL__DIR", vigil_tests::model_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let child = cmd.spawn().expect("spawn vigil chaos");
    let out = wait_with_timeout(child, Duration::from_secs(900));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "one line per scenario:\n{stdout}");
    for (line, name) in lines.iter().zip(["baseline", "detector-kill"]) {
        for field in FIELDS {
            assert!(line.get(field).is_some(), "{field} missing: {line}");
        }
        assert_eq!(line["scenario"], name, "{line}");
        assert_eq!(line["verdict"], "exact", "logs in {}: {line}", work.display());
        let frames = line["frames"].as_u64().unwrap();
        assert!(frames >= 120, "{line}");
        assert_eq!(line["rows"].as_u64().unwrap() + line["dlq"].as_u64().unwrap(), frames, "{line}");
        assert_eq!((line["missing"].as_u64(), line["duplicates"].as_u64()), (Some(0), Some(0)), "{line}");
    }
    let kill = &lines[1];
    assert!(kill["faults_injected"].as_u64().unwrap() >= 1, "an effective kill: {kill}");
    assert!(kill["mttr_ms_p50"].as_u64().is_some(), "a time to recovery: {kill}");
    assert!(kill["mttr"]["detector-kill9"]["recovered"].as_u64().unwrap() >= 1, "{kill}");
    assert!(out.status.success(), "exit status {} with every scenario exact", out.status);
    eprintln!("[chaos] {:.0} s:\n{stdout}", started.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&work).ok();
}

/// Waits for the child (killing it after `timeout`) and returns its output.
fn wait_with_timeout(mut child: std::process::Child, timeout: Duration) -> std::process::Output {
    use std::io::Read;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).ok();
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for vigil chaos") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("vigil chaos did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::process::Output { status, stdout: reader.join().expect("reader"), stderr: Vec::new() }
}
