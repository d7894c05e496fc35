//! `vigil bench pipeline` as a user runs it: a short saturated run on the embedded broker
//! (producers, a detector and a sink as processes) reports every frame and figures that
//! hang together; a mode the embedded broker cannot run is a usage error.

use std::process::Command;

use serde_json::Value;
use vigil_tests::{model_dir, repo_root, serial, vigil_bin};

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(vigil_bin())
        .args(["bench", "pipeline"])
        .args(args)
        .arg("--images")
        .arg(repo_root().join("samples"))
        .env("VIGIL__MODEL__DIR", model_dir())
        .env("VIGIL__DETECTOR__BACKEND", "cpu")
        .output()
        .expect("run vigil bench pipeline")
}

#[test]
fn a_short_run_reports_every_frame_with_consistent_figures() {
    let _serial = serial();
    let work = tempfile::tempdir().expect("a temp dir");
    let out = bench(&[
        "--frames",
        "24",
        "--sources",
        "4",
        "--model-seconds",
        "1",
        "--json",
        "--work-dir",
        work.path().to_str().expect("UTF-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    let r: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(r["frames"], 24, "{r}");
    assert_eq!(r["dead_letters"], 0, "{r}");
    assert_eq!((r["workers"].as_u64(), r["delivery"].as_str()), (Some(1), Some("at-least-once")), "{r}");
    let f = |path: &[&str]| path.iter().fold(&r, |v, k| &v[*k]).as_f64().unwrap_or_else(|| panic!("{path:?} in {r}"));
    assert!(f(&["frames_per_s"]) > 0.0 && f(&["model_frames_per_s"]) > 0.0, "{r}");
    assert!((f(&["efficiency"]) - f(&["frames_per_s"]) / f(&["model_frames_per_s"])).abs() < 1e-9, "{r}");
    assert!((f(&["frames_per_s"]) - 24.0 / f(&["seconds"])).abs() < 1e-6, "{r}");
    let (p50, p95, p99) = (f(&["latency_ms", "p50"]), f(&["latency_ms", "p95"]), f(&["latency_ms", "p99"]));
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= f(&["seconds"]) * 1e3, "{r}");
    // Each row's two parts add up to its total, so each part's percentile is at most the total's.
    for part in ["capture_to_processed", "processed_to_stored"] {
        let q = |p: &str| f(&["latency_split_ms", part, p]);
        assert!(0.0 < q("p50") && q("p50") <= q("p95") && q("p95") <= q("p99"), "{part}: {r}");
        assert!(q("p50") <= p50 && q("p95") <= p95 && q("p99") <= p99, "{part}: {r}");
    }
    let model_ms = 1e3 / f(&["model_frames_per_s"]);
    assert!(
        f(&["latency_split_ms", "capture_to_processed", "p50"]) >= 0.5 * model_ms,
        "the model runs before processed_at: {r}"
    );
    let batch = f(&["batch_mean"]);
    assert!((1.0..=8.0).contains(&batch), "detector.max_batch is 8: {r}");
    assert!(f(&["usage", "detector", "cpu_s"]) > 0.0 && f(&["usage", "detector", "peak_rss_mib"]) > 10.0, "{r}");
    assert!(f(&["usage", "producer", "peak_rss_mib"]) > 1.0 && f(&["usage", "sink", "peak_rss_mib"]) > 1.0, "{r}");
}

#[test]
fn exactly_once_on_the_embedded_broker_is_a_usage_error_that_says_what_to_do() {
    let out = bench(&["--delivery", "exactly-once", "--frames", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--delivery at-least-once") && stderr.contains("--bootstrap"), "{stderr}");
}
