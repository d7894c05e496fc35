//! `vigil plan` as a user runs it: the JSON it prints against published M/M/c values, and
//! its usage errors.

use std::process::Command;

use serde_json::Value;
use vigil_tests::vigil_bin;

fn plan(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(vigil_bin()).arg("plan").args(args).output().expect("run vigil plan");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One frame a second at one second a frame is 1 Erlang; at utilisation ≤ 0.5 that takes
/// two workers, where a frame waits with probability 1/3 (Erlang C's textbook case) for
/// (1/3) / (2 - 1) s on average. Twice the rate (2 Erlangs) at ≤ 0.5 needs 4 workers.
#[test]
fn plan_prints_the_published_two_server_figures() {
    let (code, stdout, stderr) = plan(&["--rate", "1", "--service-ms", "1000", "--max-utilization", "0.5", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let p: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(p["workers"], 2, "{p}");
    assert_eq!(p["partitions"], 4, "{p}");
    let near = |key: &str, want: f64| (p[key].as_f64().expect(key) - want).abs() < 1e-9;
    assert!(near("utilization", 0.5) && near("p_wait", 1.0 / 3.0) && near("wait_ms", 1000.0 / 3.0), "{p}");
    assert!(p["mm1"].is_null(), "one worker at ρ = 1 cannot keep up: {p}");
    for key in ["rate", "service_ms", "response_ms", "p99_ms"] {
        assert!(p[key].is_number(), "{key} in {p}");
    }
}

/// M/M/1 at λ = 30/s, μ = 40/s: T = 1/(μ-λ) = 100 ms, Lq = λ²/(μ(μ-λ)) = 2.25.
#[test]
fn plan_prints_the_single_worker_figures() {
    let (code, stdout, stderr) = plan(&["--rate", "30", "--service-ms", "25", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let p: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let mm1 = &p["mm1"];
    assert!((mm1["response_ms"].as_f64().unwrap() - 100.0).abs() < 1e-9, "{p}");
    assert!((mm1["queue_length"].as_f64().unwrap() - 2.25).abs() < 1e-9, "{p}");
}

#[test]
fn impossible_targets_and_bad_values_are_usage_errors_that_say_why() {
    let (code, _, stderr) = plan(&["--rate", "10", "--service-ms", "25", "--p99-ms", "50"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--p99-ms 50") && stderr.contains("115.1 ms"), "{stderr}");
    let (code, _, stderr) = plan(&["--rate", "0", "--service-ms", "25"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--rate must be a positive number"), "{stderr}");
    let (code, _, stderr) = plan(&["--rate", "10"]);
    assert_eq!(code, Some(2), "neither --service-ms nor --measure: {stderr}");
}
