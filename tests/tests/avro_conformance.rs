//! Vigil's Avro against the reference implementation (Apache Avro for Java, from Maven
//! Central) and fastavro (PyPI), both run in this test, so the expected values cannot
//! drift: every schema version's Parsing Canonical Form and fingerprint, the single-object
//! bytes of a sample `Frame` and `DetectionResult`, and each side decoding the others'.
//!
//! scripts/setup-test-deps.sh installs both (`~/.cache/vigil/avro-java`, the Python venv
//! `~/.cache/vigil/py-clients`). Without them, outside CI, the Java output recorded in
//! `tests/conformance/recorded.json` stands in; in CI (`CI` set) a missing tool fails.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use vigil_tests::{repo_root, tool_dir};

const RECORDS: [&str; 2] = ["Frame", "DetectionResult"];

/// Runs one implementation's conformance program; `None` when it is not installed.
fn run(program: &Path, args: &[&str], extra: Option<&Path>) -> Option<Value> {
    if !program.exists() && program.components().count() > 1 {
        return None;
    }
    let root = repo_root();
    let mut command = Command::new(program);
    command.args(args).arg(root.join("schemas")).arg(root.join("tests/conformance/samples.json"));
    if let Some(extra) = extra {
        command.arg(extra);
    }
    let out = command.output().ok()?;
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the conformance program prints JSON"))
}

fn java(extra: Option<&Path>) -> Option<Value> {
    let jars = tool_dir("VIGIL_AVRO_JAVA", "avro-java");
    if !jars.join("lib").is_dir() {
        return None;
    }
    let classpath = format!("{}/*", jars.join("lib").display());
    let source = repo_root().join("tests/conformance/AvroConformance.java");
    let source = source.to_str().expect("a UTF-8 path");
    run(Path::new("java"), &["-cp", &classpath, source], extra)
}

fn fastavro(extra: Option<&Path>) -> Option<Value> {
    let python = tool_dir("VIGIL_PY_CLIENTS", "py-clients").join("bin/python");
    let script = repo_root().join("tests/conformance/fastavro_conformance.py");
    run(&python, &[script.to_str().expect("a UTF-8 path")], extra)
}

/// `hex` as bytes.
fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(record, canonical form, fingerprint)` of every version an implementation reports.
fn versions(report: &Value) -> Vec<(String, String, String)> {
    let mut all: Vec<_> = report["schemas"]
        .as_array()
        .expect("schemas")
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().expect("a string").to_owned();
            (field("record"), field("canonical_form"), field("fingerprint"))
        })
        .collect();
    all.sort();
    all
}

#[test]
fn vigil_writes_and_reads_avro_as_the_java_reference_and_fastavro_do() {
    let in_ci = std::env::var_os("CI").is_some();
    let recorded_path = repo_root().join("tests/conformance/recorded.json");
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(&recorded_path).expect("tests/conformance/recorded.json"))
            .expect("recorded.json is JSON");
    let live_java = java(None);
    let live_fastavro = fastavro(None);
    if in_ci {
        assert!(live_java.is_some(), "CI needs Java Avro: run scripts/setup-test-deps.sh");
        assert!(live_fastavro.is_some(), "CI needs fastavro: run scripts/setup-test-deps.sh");
    }
    let mut references = Vec::new();
    match &live_java {
        Some(report) => {
            // The recorded stand-in must be what Java computes today.
            assert_eq!(
                (versions(report), &report["encoded"]),
                (versions(&recorded), &recorded["encoded"]),
                "tests/conformance/recorded.json is stale: write Java's output there again (the command is in \
                 tests/conformance/README.md)"
            );
            references.push(report.clone());
        }
        None => {
            eprintln!("no Java Avro here (scripts/setup-test-deps.sh): comparing with tests/conformance/recorded.json");
            references.push(recorded.clone());
        }
    }
    references.extend(live_fastavro.clone());

    let ours: Vec<(String, String, String)> = {
        let mut all: Vec<_> = vigil::testing::avro::schema_versions()
            .into_iter()
            .map(|(record, form, fingerprint)| (record, form, hex(&fingerprint)))
            .collect();
        all.sort();
        all
    };
    for reference in &references {
        let name = reference["implementation"].as_str().unwrap_or("?");
        assert_eq!(versions(reference), ours, "canonical forms and fingerprints: Vigil against {name}");
        for compat in reference["compatibility"].as_array().into_iter().flatten() {
            assert_eq!(compat["result"], "COMPATIBLE", "{name}: the newest version reads every older one: {compat}");
        }
        for record in RECORDS {
            let theirs = unhex(reference["encoded"][record].as_str().expect("an encoded sample"));
            let again = vigil::testing::avro::reencode(record, &theirs)
                .unwrap_or_else(|e| panic!("Vigil cannot read {name}'s {record}: {e}"));
            assert_eq!(hex(&again), hex(&theirs), "Vigil writes {record} byte for byte as {name} does");
        }
    }

    // And the other way: each reference decodes what Vigil wrote.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ours_path = dir.path().join("vigil-records.json");
    let encoded = &references[0]["encoded"];
    let vigil_records: serde_json::Map<String, Value> = RECORDS
        .iter()
        .map(|r| {
            let bytes = vigil::testing::avro::reencode(r, &unhex(encoded[*r].as_str().expect("hex"))).expect("reads");
            (r.to_string(), json!(hex(&bytes)))
        })
        .collect();
    std::fs::write(&ours_path, Value::Object(vigil_records.clone()).to_string()).expect("write the records");
    for report in [java(Some(&ours_path)), fastavro(Some(&ours_path))].into_iter().flatten() {
        let name = report["implementation"].as_str().unwrap_or("?");
        for record in RECORDS {
            assert_eq!(
                report["reencoded"][record], vigil_records[record],
                "{name} decodes Vigil's {record} to the same value"
            );
        }
    }
    eprintln!(
        "compared with: {}",
        references.iter().map(|r| r["implementation"].as_str().unwrap_or("?")).collect::<Vec<_>>().join(", ")
    );
}
