//! The README's list of Python Kafka clients that work, and do not work, with the in-memory
//! broker (`vigil up`, `vigil broker`): each is run (tests/clients/probe.py: bootstrap,
//! produce with acks=all, consume in a group) and must do what the list says. The Java
//! client's pin is checked by tests/client_examples.rs.
//!
//! scripts/setup-test-deps.sh installs each client in a venv of its own under
//! `~/.cache/vigil/py-compat` (step 8).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use vigil_tests::{repo_root, serial, tool_dir, vigil_bin};

/// `(venv under py-compat/, client config, works?)`, as the README's table says.
const CLIENTS: [(&str, &str, bool); 4] = [
    ("kafka-python-2.0.6", "{}", true),
    ("kafka-python-3.0.12", "{}", false),
    ("kafka-python-3.0.12", r#"{"api_version": [2, 3]}"#, true),
    ("confluent-kafka-2.16.1", "{}", true),
];

#[test]
fn python_clients_work_with_the_in_memory_broker_as_the_readme_says() {
    let _serial = serial();
    let mut broker = Command::new(vigil_bin())
        .args(["broker", "--brokers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vigil broker");
    let mut first = String::new();
    BufReader::new(broker.stdout.take().expect("piped")).read_line(&mut first).expect("the bootstrap line");
    let bootstrap = first.trim().strip_prefix("bootstrap: ").expect("`bootstrap: …` first").to_owned();

    let probe = repo_root().join("tests/clients/probe.py");
    let runs: Vec<_> = CLIENTS
        .iter()
        .enumerate()
        .map(|(i, &(venv, config, works))| {
            let python = tool_dir("VIGIL_PY_COMPAT", "py-compat").join(venv).join("bin/python");
            assert!(python.exists(), "no {}: run scripts/setup-test-deps.sh", python.display());
            let (probe, bootstrap) = (probe.clone(), bootstrap.clone());
            std::thread::spawn(move || {
                let out = Command::new(&python)
                    .arg(&probe)
                    .args([&bootstrap, &format!("compat-{i}"), config])
                    .output()
                    .expect("run the probe");
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
                    panic!("{venv}: the probe printed no report:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
                });
                (venv, config, works, report)
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for run in runs {
        let (venv, config, works, report) = run.join().expect("a probe thread");
        eprintln!("[vigil-tests] {venv} {config}: {report}");
        if report["ok"] != works {
            wrong.push(format!("{venv} {config}: README says works={works}, measured {report}"));
        }
        if !works && report["failed_step"] != "metadata" {
            wrong.push(format!("{venv} {config}: README says it cannot bootstrap, measured {report}"));
        }
    }
    broker.kill().ok();
    broker.wait().ok();
    assert!(wrong.is_empty(), "the README's client list is wrong:\n{}", wrong.join("\n"));
}
