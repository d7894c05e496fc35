//! The Confluent Schema Registry wire format (`0x00`, 4-byte schema id, Avro body) against
//! a real registry: Apicurio Registry 2.6 (Maven Central, its Confluent-compatible API),
//! with a frame written by confluent-kafka's own `AvroSerializer` and the result read back
//! by its `AvroDeserializer`, through a detector and a sink on the test's Kafka (the real
//! cluster in CI). Frames in the single-object encoding keep working next to them.
//!
//! scripts/setup-test-deps.sh installs Apicurio (`~/.cache/vigil/apicurio`) and the Python
//! client (`~/.cache/vigil/py-registry`), step 9.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{repo_root, serial, tool_dir, Options, Pipeline, STOP};

const APICURIO_JAR: &str = "apicurio-registry-app-2.6.13.Final-runner.jar";
/// Apicurio's Confluent-compatible API.
const CCOMPAT: &str = "/apis/ccompat/v7";

/// A registry process, killed on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start() -> Registry {
        let jar = tool_dir("VIGIL_APICURIO", "apicurio").join(APICURIO_JAR);
        assert!(jar.exists(), "no {}: run scripts/setup-test-deps.sh", jar.display());
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address").port();
        let child = Command::new("java")
            .arg("-Dquarkus.http.host=127.0.0.1")
            .arg(format!("-Dquarkus.http.port={port}"))
            .arg("-jar")
            .arg(&jar)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Apicurio Registry (java)");
        let mut registry = Registry { child, port };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !registry.answers() {
            if let Some(status) = registry.child.try_wait().expect("Apicurio's status") {
                panic!("Apicurio Registry exited ({status}) before it answered: `java -jar {}`", jar.display());
            }
            assert!(Instant::now() < deadline, "Apicurio Registry did not answer on port {port} within 120 s");
            std::thread::sleep(Duration::from_millis(250));
        }
        registry
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{CCOMPAT}", self.port)
    }

    /// `GET /subjects` answers 200 (HTTP/1.0: the registry closes the connection after it).
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let request = format!("GET {CCOMPAT}/subjects HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.lines().next().is_some_and(|status| status.contains(" 200 "))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("[vigil-tests] stopping Apicurio: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("[vigil-tests] reaping Apicurio: {e}");
        }
    }
}

/// `tests/clients/confluent_avro.py <args>`, its stdout parsed as one JSON line.
fn client(args: &[&str]) -> Value {
    let python = tool_dir("VIGIL_PY_REGISTRY", "py-registry").join("bin/python");
    assert!(python.exists(), "no {}: run scripts/setup-test-deps.sh", python.display());
    let script: PathBuf = repo_root().join("tests/clients/confluent_avro.py");
    let Output { status, stdout, stderr } =
        Command::new(python).arg(script).args(args).output().expect("run confluent_avro.py");
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(status.success(), "confluent_avro.py {args:?} ({status}):\n{stdout}\n{}", String::from_utf8_lossy(&stderr));
    serde_json::from_str(stdout.lines().last().expect("a line")).expect("JSON")
}

#[test]
fn confluent_framed_frames_are_detected_and_results_are_written_in_that_framing() {
    let _serial = serial();
    let registry = Registry::start();
    let mut p = Pipeline::start("schema-registry", Options::default());
    // Written before any registry is configured: the single-object encoding.
    p.produce_synthetic(&["single-object"], 2);
    p.set_env("VIGIL__KAFKA__SCHEMA_REGISTRY__URL", &registry.url());
    p.set_env("VIGIL__KAFKA__SCHEMA_REGISTRY__WRITE", "true");
    // Vigil's own producer, now writing the Confluent framing.
    p.produce_synthetic(&["vigil-confluent"], 2);
    let mut detector = p.detector("detector", None);
    let mut sink = p.sink("sink");
    assert!(
        detector.wait_for_log("partitions assigned", Duration::from_secs(120)),
        "the detector never joined:\n{}",
        detector.stderr()
    );

    let dog = repo_root().join("samples/dog.jpg");
    let sent = client(&[
        "produce",
        "--bootstrap",
        &p.bootstrap,
        "--registry",
        &registry.url(),
        "--topic",
        &p.images,
        "--source",
        "confluent-avro",
        dog.to_str().expect("UTF-8"),
    ]);
    let frame_id = sent["frame_id"].as_str().expect("frame_id");
    let result = client(&[
        "consume",
        "--bootstrap",
        &p.bootstrap,
        "--registry",
        &registry.url(),
        "--topic",
        &p.detections,
        "--frame-id",
        frame_id,
    ]);
    assert_eq!(result["magic"], 0, "results are written in the Confluent framing: {result}");
    let labels: Vec<&str> =
        result["detections"].as_array().expect("detections").iter().filter_map(|d| d["label"].as_str()).collect();
    assert!(labels.contains(&"dog"), "dog.jpg comes back with a dog: {result}");

    // A frame framed with an id the registry does not hold is a dead letter that says so.
    let unknown = sent["unknown_frame_id"].as_str().expect("unknown_frame_id");
    let letter = client(&["dead-letters", "--bootstrap", &p.bootstrap, "--topic", &p.dlq, "--frame-id", unknown]);
    assert_eq!(letter["kind"], "unknown_schema", "{letter}");
    let message = letter["message"].as_str().expect("a message");
    assert!(message.contains("schema id 987654") && message.contains("no schema with id"), "{message}");

    // Every frame has exactly one outcome: 2 single-object + 2 Vigil-written Confluent +
    // the serializer's frame stored, the unknown id dead-lettered.
    p.wait_rows(5, Duration::from_secs(180), &mut [&mut detector, &mut sink]);
    let report = p.wait_exact(Duration::from_secs(60));
    p.assert_exact(&report, 6, 1);
    let framings: Vec<u8> = p.read_topic(&p.images).iter().map(|r| r.payload.as_ref().expect("a value")[0]).collect();
    assert_eq!(framings.iter().filter(|&&b| b == 0xC3).count(), 2, "single-object frames: {framings:?}");
    assert_eq!(framings.iter().filter(|&&b| b == 0).count(), 4, "Confluent-framed frames: {framings:?}");
    for record in p.read_topic(&p.detections) {
        assert_eq!(record.payload.expect("a value")[0], 0, "results are Confluent-framed");
    }
    for proc in [&mut detector, &mut sink] {
        let status = proc.terminate(STOP);
        assert!(status.success(), "{} stops cleanly ({status}):\n{}", proc.label, proc.stderr());
    }
}

#[test]
fn a_stage_with_an_unreachable_registry_fails_at_start_and_names_the_setting() {
    let _serial = serial();
    let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address").port();
    let mut p = Pipeline::start("schema-registry-down", Options::default());
    p.set_env("VIGIL__KAFKA__SCHEMA_REGISTRY__URL", &format!("http://127.0.0.1:{port}"));
    p.set_env("VIGIL__KAFKA__SCHEMA_REGISTRY__TIMEOUT_MS", "2000");
    let mut sink = p.sink("sink");
    let status = sink.wait(Duration::from_secs(60)).expect("the sink gives up");
    assert!(!status.success(), "a sink without its registry must not run");
    let stderr = sink.stderr();
    assert!(stderr.contains("kafka.schema_registry.url") && stderr.contains(&port.to_string()), "{stderr}");
}
