//! The client examples in `examples/` (Python: kafka-python + fastavro; Java: kafka-clients +
//! Avro's own single-object encoder) push `samples/dog.jpg` as a Frame and read its result
//! back, decoded against `schemas/DetectionResult.avsc`: once through `vigil up` on its
//! in-memory broker, as the README shows a newcomer, and once through a detector and a sink
//! on the test's Kafka (the real cluster in CI).
//!
//! scripts/setup-test-deps.sh installs what they need (step 8): the Python venv
//! `~/.cache/vigil/py-clients` and the Java examples built in `examples/java/target`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vigil_tests::{repo_root, serial, tool_dir, Options, Pipeline, STOP};

#[derive(Debug, Clone, Copy)]
enum Client {
    Python,
    Java,
}

fn python() -> PathBuf {
    let python = tool_dir("VIGIL_PY_CLIENTS", "py-clients").join("bin/python");
    assert!(python.exists(), "no {}: run scripts/setup-test-deps.sh", python.display());
    python
}

/// The command line of one example program: `producer` or `consumer`.
fn example(client: Client, program: &str) -> Command {
    let root = repo_root();
    match client {
        Client::Python => {
            let script = match program {
                "producer" => "produce_frame.py",
                _ => "consume_detections.py",
            };
            let mut command = Command::new(python());
            command.arg(root.join("examples/python").join(script));
            command
        }
        Client::Java => {
            let target = root.join("examples/java/target");
            assert!(target.join("classes").is_dir(), "examples/java is not built: run scripts/setup-test-deps.sh");
            let class = match program {
                "producer" => "io.vigil.examples.FrameProducer",
                _ => "io.vigil.examples.DetectionConsumer",
            };
            let mut command = Command::new("java");
            let classpath = format!("{}:{}/*", target.join("classes").display(), target.join("dependency").display());
            command.args(["-cp", &classpath, class]);
            command
        }
    }
}

fn run(mut command: Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Sends dog.jpg with `client`'s producer and reads its result with its consumer.
fn dog_round_trip(client: Client, bootstrap: &str, images: &str, detections: &str) {
    let root = repo_root();
    let schemas = root.join("schemas");
    let source = format!("example-{client:?}").to_lowercase();
    let mut producer = example(client, "producer");
    producer.args(["--bootstrap", bootstrap, "--topic", images, "--source", &source]);
    producer.arg("--schemas").arg(&schemas).arg(root.join("samples/dog.jpg"));
    let sent = run(producer, &format!("{client:?} producer"));
    let sent: Value = serde_json::from_str(sent.lines().next().expect("one line per frame")).expect("JSON");
    let frame_id = sent["frame_id"].as_str().expect("a frame_id").to_owned();
    assert_eq!(sent["source"], source.as_str(), "{sent}");

    let mut consumer = example(client, "consumer");
    consumer.args(["--bootstrap", bootstrap, "--topic", detections, "--frame-id", &frame_id]);
    consumer.args(["--timeout", "180", "--from-beginning"]).arg("--schemas").arg(&schemas);
    let read = run(consumer, &format!("{client:?} consumer"));
    let result: Value = read
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["frame_id"] == frame_id.as_str())
        .unwrap_or_else(|| panic!("{client:?} consumer printed no result for {frame_id}:\n{read}"));
    let labels: Vec<&str> =
        result["detections"].as_array().expect("detections").iter().filter_map(|d| d["label"].as_str()).collect();
    assert!(labels.contains(&"dog"), "{client:?}: dog.jpg comes back with a dog: {result}");
    assert_eq!(result["source"], source.as_str(), "{result}");
    eprintln!("[vigil-tests] {client:?} example: {frame_id} -> {labels:?}");
}

#[test]
fn the_examples_round_trip_a_frame_through_vigil_up_on_its_in_memory_broker() {
    let _serial = serial();
    // The names of this test's topics and groups; `vigil up` starts the broker itself.
    let p = Pipeline::start("examples-up", Options { bootstrap: Some("unused:9092".into()), ..Options::default() });
    let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address").port();
    let port = port.to_string();
    let samples = repo_root().join("samples/person.jpg");
    let mut up = p.spawn(
        "up",
        &["up", "--broker-port", &port, "--no-api", "--fps", "0.2", "--samples", samples.to_str().expect("UTF-8")],
    );
    assert!(
        up.wait_for_log("partitions assigned", Duration::from_secs(120)),
        "vigil up never started:\n{}",
        up.stderr()
    );
    let bootstrap = format!("127.0.0.1:{port}");
    for client in [Client::Python, Client::Java] {
        dog_round_trip(client, &bootstrap, &p.images, &p.detections);
    }
    let status = up.terminate(STOP);
    assert!(status.success(), "vigil up stops cleanly ({status}):\n{}", up.stderr());
}

#[test]
fn the_examples_round_trip_a_frame_through_a_detector_and_a_sink() {
    let _serial = serial();
    let p = Pipeline::start("examples", Options::default());
    let mut detector = p.detector("detector", None);
    let mut sink = p.sink("sink");
    // The detector creates the topics; the examples' producers do not.
    let ready = detector.wait_for_log("partitions assigned", Duration::from_secs(120));
    assert!(ready, "the detector never joined:\n{}", detector.stderr());
    for client in [Client::Python, Client::Java] {
        dog_round_trip(client, &p.bootstrap, &p.images, &p.detections);
    }
    for proc in [&mut detector, &mut sink] {
        let status = proc.terminate(STOP);
        assert!(status.success(), "{} stops cleanly ({status}):\n{}", proc.label, proc.stderr());
    }
}
