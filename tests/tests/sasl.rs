//! The pipeline through the SASL_PLAINTEXT listener of the `scripts/kafka.sh` cluster,
//! with credentials from configuration only (`VIGIL__KAFKA__CLIENT__*`), and a stage
//! refused with a clear message without them or with a wrong password.
//!
//! Needs `VIGIL_TEST_SASL_BOOTSTRAP` (the `sasl-bootstrap:` line of `scripts/kafka.sh up`,
//! exported by `.ci/run`); skipped without it.
//!
//! The mechanism is SCRAM-SHA-512 (librdkafka has it through rdkafka's `ssl` feature, i.e.
//! OpenSSL); Kafka's own (Java) client checks the same user.

use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::cluster::{kafka_tool, run_with_timeout, Sasl};
use vigil_tests::{serial, Options, Pipeline};

const REFUSED_WITHIN: Duration = Duration::from_secs(60);

fn sasl_or_skip() -> Option<Sasl> {
    let sasl = Sasl::from_env();
    if sasl.is_none() {
        eprintln!(
            "SKIPPED: no SASL listener: set VIGIL_TEST_SASL_BOOTSTRAP to the `sasl-bootstrap:` line of scripts/kafka.sh up"
        );
    }
    sasl
}

/// `vigil verify --topics-exact`, logged in like the stages: a duplicate or an open
/// transaction in the topics fails it too.
fn verify_topics_exact(p: &Pipeline) -> Value {
    let report = p.verify_with(true);
    assert_eq!(report["exact"], true, "vigil verify --topics-exact: {report}");
    report
}

/// Produce, detect exactly-once, sink and verify, every client logged in as the
/// cluster's user: nothing lost, nothing doubled, in the database and in the topics.
#[test]
fn the_pipeline_runs_through_the_sasl_listener() {
    let Some(sasl) = sasl_or_skip() else { return };
    let _serial = serial();
    assert!(
        vigil_tests::cluster::librdkafka_has_scram(),
        "this build's librdkafka lacks SCRAM (rdkafka's `ssl` feature)"
    );
    eprintln!("[sasl] {} as {} over {}", sasl.mechanism, sasl.username, sasl.bootstrap);
    let p = Pipeline::start(
        "sasl",
        Options {
            bootstrap: Some(sasl.bootstrap.clone()),
            delivery: Some("exactly-once"),
            env: sasl.env(),
            ..Options::default()
        },
    );
    let started = Instant::now();
    let mut sink = p.sink("sink");
    let mut detector = p.detector("detector", Some("sasl-a"));
    p.produce_synthetic(&["cam-0", "cam-1", "cam-2"], 8);
    let frames = 24;
    p.wait_rows(frames, Duration::from_secs(300), &mut [&mut sink, &mut detector]);
    for stage in [&mut detector, &mut sink] {
        let status = stage.terminate(Duration::from_secs(60));
        assert!(status.success(), "{} did not stop cleanly ({status}):\n{}", stage.label, stage.stderr());
    }
    let report = verify_topics_exact(&p);
    p.assert_exact(&report, frames, 0);
    // The harness checks the topics only on VIGIL_TEST_BOOTSTRAP itself, so it leaves
    // this listener's to the test.
    p.exactly_once_topics(&report);
    assert_eq!(report["topics"]["detections_records"], frames, "one committed result per frame: {report}");
    let summary = detector.summary().expect("detector summary");
    eprintln!(
        "[sasl] {frames} frames over {} ({}): rows {}, results {}, aborts {}, {:.1} s",
        sasl.bootstrap,
        sasl.mechanism,
        report["rows"],
        summary["results"],
        summary["aborts"],
        started.elapsed().as_secs_f64()
    );
}

/// Without credentials, or with a wrong password, `vigil produce` exits 1 within the
/// metadata timeout and says which: the listener closed the connection (check
/// security.protocol) or the broker refused the login (check the SASL settings).
#[test]
fn a_stage_without_valid_credentials_is_refused_with_a_clear_error() {
    let Some(sasl) = sasl_or_skip() else { return };
    let _serial = serial();
    let p = Pipeline::start(
        "sasl-refused",
        Options { bootstrap: Some(sasl.bootstrap.clone()), env: sasl.env(), ..Options::default() },
    );
    let produce = |label: &str, adjust: &dyn Fn(&mut std::process::Command)| {
        let mut cmd = p.command(&["produce", "--synthetic", "1"]);
        adjust(&mut cmd);
        let started = Instant::now();
        let out = run_with_timeout(cmd, &p.dir, label, REFUSED_WITHIN)
            .unwrap_or_else(|| panic!("{label}: vigil produce was not refused within {REFUSED_WITHIN:?} (a hang)"));
        assert_eq!(out.status.code(), Some(1), "{label}: exit status {}:\n{}", out.status, out.stderr);
        eprintln!("[sasl] {label}: exit 1 after {:.1} s", started.elapsed().as_secs_f64());
        out.stderr
    };

    let stderr = produce("no-credentials", &|cmd| {
        for key in ["SECURITY__PROTOCOL", "SASL__MECHANISMS", "SASL__USERNAME", "SASL__PASSWORD"]
            .map(|k| format!("VIGIL__KAFKA__CLIENT__{k}"))
        {
            cmd.env_remove(key);
        }
    });
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("vigil: cannot read metadata")
            && last.contains("security.protocol = plaintext")
            && last.contains("A SASL listener closes connections that do not authenticate"),
        "without credentials the message must point at security.protocol:\n{stderr}"
    );

    let stderr = produce("wrong-password", &|cmd| {
        cmd.env("VIGIL__KAFKA__CLIENT__SASL__PASSWORD", "not-the-password");
    });
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("the broker refused the login") && last.contains("sasl.password"),
        "a wrong password must be named as a refused login:\n{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "the password must not be printed:\n{stderr}");
}

/// The listener's SCRAM-SHA-512 user works with Kafka's own client, and a wrong password
/// is refused, whatever mechanism this build of librdkafka can use.
#[test]
fn the_listener_authenticates_scram_sha_512() {
    let Some(sasl) = sasl_or_skip() else { return };
    let dir = tempfile::tempdir().expect("temporary directory");
    let list = |password: &str| {
        let properties = dir.path().join(format!("client-{password}.properties"));
        std::fs::write(&properties, sasl.java_client_properties(password)).expect("write client properties");
        kafka_tool(&[
            "kafka-topics.sh",
            "--bootstrap-server",
            &sasl.bootstrap,
            "--command-config",
            properties.to_str().expect("UTF-8 path"),
            "--list",
        ])
    };
    let ok = list(&sasl.password);
    assert!(ok.status.success(), "SCRAM-SHA-512 login as {} failed:\n{}", sasl.username, ok.stderr);
    let refused = list("not-the-password");
    assert!(!refused.status.success(), "a wrong password was accepted:\n{}", refused.stdout);
    assert!(refused.stderr.contains("Authentication failed"), "{}", refused.stderr);
}
