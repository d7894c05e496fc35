//! End-to-end tests of the pipeline with the real `vigil` binary: broker, producer,
//! detectors (NanoDet-g on the CPU backend), sink, `vigil verify`.
//!
//! Each test has its own broker (in-memory by default, `VIGIL_TEST_BOOTSTRAP` for a real
//! Kafka), random topic and group names, and its own database. On the in-memory broker
//! the detectors run at-least-once and exactness is checked in the database (see
//! `vigil_tests` docs and docs/architecture.md for why); on a real Kafka they run exactly-once
//! and the topics are checked too.
//!
//! Sizes: test 1 uses the 500 frames of the spec; the failure tests use 300, the others
//! fewer, to keep the suite within CI's budget on two cores (the model runs at roughly
//! 5-15 frames/s there). Frames are small generated JPEGs spread over several sources
//! (the record key), hence over partitions.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;
use vigil::testing::png_bomb;
use vigil_tests::{
    count_rows, max_row_offsets, real_kafka, results_of, serial, sink_counts, stop, stored_offsets, Options, PgSchema,
    Pipeline, Proc,
};

/// After everything drained: the sink's stored offsets are the end of `detections`.
fn assert_offsets_at_end(p: &Pipeline, group: &str) {
    let stored = stored_offsets(&p.database_url, group);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for r in p.read_topic(&p.detections) {
        let e = ends.entry(r.partition).or_default();
        *e = (*e).max(r.offset + 1);
    }
    for (partition, end) in &ends {
        assert_eq!(
            stored.get(partition),
            Some(end),
            "stored offset of detections/{partition} (stored {stored:?}, ends {ends:?})"
        );
    }
}

/// After a sink died with a batch written but not committed: that batch was rolled back
/// with its offsets, so no stored row lies at or past a stored offset.
fn assert_rows_within_stored(p: &Pipeline, stored: &HashMap<i32, i64>) {
    for (partition, last) in max_row_offsets(&p.database_url) {
        let next = stored.get(&partition).copied().unwrap_or(0);
        assert!(last < next, "detections/{partition}: a row at offset {last} is stored, offsets only up to {next}");
    }
}

/// A sink started after a crash, then stopped once everything was stored, must have read
/// from the offsets stored at the crash: at most what lies past them (exactly that on the
/// in-memory broker; on a transactional topic commit markers take offsets too), never a
/// stored batch again. Returns (records it read, records past the stored offsets).
fn assert_read_past_stored(
    p: &Pipeline,
    sink: &Proc,
    stored: &HashMap<i32, i64>,
    ends: &HashMap<i32, i64>,
) -> (u64, u64) {
    let counts = sink_counts(sink).unwrap_or_else(|| panic!("no 'sink stopped' line:\n{}", sink.stderr()));
    let read = counts["inserted"] + counts["duplicates"] + counts["rejected"];
    let past: i64 = ends.iter().map(|(p, end)| end - stored.get(p).copied().unwrap_or(0)).sum();
    let past = past as u64;
    assert!(
        read <= past,
        "{} read {read} records; only {past} lie past the stored offsets {stored:?} (ends {ends:?})",
        sink.label
    );
    if !p.real_kafka {
        assert_eq!(read, past, "{} reads everything past the stored offsets {stored:?} (ends {ends:?})", sink.label);
    }
    (read, past)
}

fn sink_group(p: &Pipeline) -> String {
    p.detections.replace("-detections", "-sink")
}

/// Test 1: 500 frames, two detectors sharing the partitions, SQLite sink → exact.
#[test]
fn five_hundred_frames_two_detectors_exact() {
    let _serial = serial();
    let p = Pipeline::start("two-detectors", Options::default());
    let mut sink = p.sink("sink");
    let mut d1 = p.detector("detector-1", None);
    let mut d2 = p.detector("detector-2", None);
    let started = Instant::now();
    let frames = p.produce_cameras(10, 50);
    p.wait_rows(frames, Duration::from_secs(900), &mut [&mut sink, &mut d1, &mut d2]);
    let elapsed = started.elapsed();
    stop(&mut d1);
    stop(&mut d2);
    stop(&mut sink);
    let (r1, r2) = (results_of(&d1), results_of(&d2));
    assert!(r1 > 0 && r2 > 0, "both detectors must have had partitions: {r1} and {r2} results");
    assert!(r1 + r2 >= frames, "every frame went through a detector: {r1} + {r2} < {frames}");
    let report = p.verify();
    p.assert_exact(&report, frames, 0);
    assert_offsets_at_end(&p, &sink_group(&p));
    eprintln!(
        "[test 1] {frames} frames, 2 detectors ({r1} + {r2} results), rows {}, dlq {}, duplicates {}, {:.1} s ({:.1} frames/s)",
        report["rows"],
        report["dlq"],
        report["duplicates"],
        elapsed.as_secs_f64(),
        frames as f64 / elapsed.as_secs_f64()
    );
}

/// Test 2: a detector and the sink are `kill -9`'d inside their critical windows (the
/// failpoints of `VIGIL_FAILPOINT`) and restarted → still exact: nothing lost, no row twice.
///
/// - detector-1 dies with its 4th batch's results delivered but its offsets not committed
///   (`kill-after-produce`), its restart right after committing the offsets of its 3rd
///   (`kill-after-offsets`); restarts reuse the instance id (on a real Kafka that fences
///   the dead transaction at once);
/// - the sink dies with a batch written but not committed (`sink-kill-before-db-commit`):
///   no row of it may be stored; its restart dies right after a COMMIT
///   (`sink-kill-after-db-commit`); the last sink must start at the offsets stored with
///   the rows: it reads exactly what lies past them, never a stored batch again.
#[test]
fn kill_nine_detector_and_sink_exact() {
    let _serial = serial();
    let p = Pipeline::start("kill9", Options::default());
    let group = sink_group(&p);
    let long = Duration::from_secs(600);
    let mut sink = p.sink_with_failpoint("sink", "sink-kill-before-db-commit:5");
    let mut d1 = p.detector_with_failpoint("detector-1", "kill9-a", "kill-after-produce:4");
    let mut d2 = p.detector("detector-2", Some("kill9-b"));
    let started = Instant::now();
    // Enough cameras for every partition, so that both detectors have batches to fail in.
    let frames = p.produce_cameras(12, 25);

    d1.wait_killed_at("kill-after-produce", long);
    let mut d1b = p.detector_with_failpoint("detector-1-restarted", "kill9-a", "kill-after-offsets:3");
    sink.wait_killed_at("sink-kill-before-db-commit", long);
    // The batch being written was rolled back with its offsets: no stored row lies at or
    // past a stored offset.
    let stored_at_first_kill = stored_offsets(&p.database_url, &group);
    assert_rows_within_stored(&p, &stored_at_first_kill);
    eprintln!(
        "[test 2] sink killed before a database commit at {} rows, stored offsets {stored_at_first_kill:?}",
        p.rows()
    );
    let mut sink2 = p.sink_with_failpoint("sink-restarted", "sink-kill-after-db-commit:3");

    d1b.wait_killed_at("kill-after-offsets", long);
    let mut d1c = p.detector("detector-1-restarted-2", Some("kill9-a"));
    sink2.wait_killed_at("sink-kill-after-db-commit", long);
    let stored = stored_offsets(&p.database_url, &group);
    assert!(
        stored.iter().any(|(partition, offset)| stored_at_first_kill.get(partition).is_none_or(|o| offset > o)),
        "the restarted sink stored batches: {stored_at_first_kill:?} -> {stored:?}"
    );
    eprintln!("[test 2] restarted sink killed after a database commit at {} rows, stored offsets {stored:?}", p.rows());
    let mut sink3 = p.sink("sink-restarted-2");

    p.wait_rows(frames, Duration::from_secs(900), &mut [&mut sink3, &mut d1c, &mut d2]);
    stop(&mut d1c);
    stop(&mut d2);
    let ends = p.wait_stored_at_end(&group, Duration::from_secs(120));
    stop(&mut sink3);
    let elapsed = started.elapsed();
    let (read, past_stored) = assert_read_past_stored(&p, &sink3, &stored, &ends);
    let report = p.verify();
    p.assert_exact(&report, frames, 0);
    assert_offsets_at_end(&p, &group);
    eprintln!(
        "[test 2] {frames} frames, detector killed after produce and after offsets, sink before and after a database commit: rows {}, dlq {}, duplicates {}, results redelivered in the topic {}, last sink read {read} records ({past_stored} past the stored offsets), {:.1} s",
        report["rows"],
        report["dlq"],
        report["duplicates"],
        report["topics"]["detections_redelivered"],
        elapsed.as_secs_f64()
    );
}

/// Test 3: a third detector joins mid-stream and one leaves (SIGTERM: finishes its
/// batch, commits, leaves the group) → exact.
#[test]
fn rebalance_join_and_leave_exact() {
    let _serial = serial();
    let p = Pipeline::start("rebalance", Options::default());
    let mut sink = p.sink("sink");
    let mut d1 = p.detector("detector-1", None);
    let mut d2 = p.detector("detector-2", None);
    let started = Instant::now();
    let frames = p.produce_cameras(6, 50);

    p.wait_rows(frames / 5, Duration::from_secs(600), &mut [&mut sink, &mut d1, &mut d2]);
    let mut d3 = p.detector("detector-3", None);
    let joined_at = p.rows();
    // Let the newcomer get partitions and work before the other one leaves.
    p.wait_rows(joined_at + frames / 5, Duration::from_secs(600), &mut [&mut sink, &mut d1, &mut d2, &mut d3]);
    stop(&mut d1);
    let left_at = p.rows();
    eprintln!("[test 3] detector-3 joined at {joined_at} rows, detector-1 left at {left_at} rows");

    p.wait_rows(frames, Duration::from_secs(900), &mut [&mut sink, &mut d2, &mut d3]);
    let elapsed = started.elapsed();
    stop(&mut d2);
    stop(&mut d3);
    stop(&mut sink);
    let (r1, r2, r3) = (results_of(&d1), results_of(&d2), results_of(&d3));
    assert!(r3 > 0, "the detector that joined got partitions and work");
    assert!(r1 > 0, "the detector that left had done work before leaving");
    let rebalances = d2.summary().unwrap()["rebalances"].as_u64().unwrap();
    assert!(rebalances >= 3, "detector-2 saw the join and the leave ({rebalances} assignment changes)");
    let report = p.verify();
    p.assert_exact(&report, frames, 0);
    eprintln!(
        "[test 3] {frames} frames, join + leave: results {r1}/{r2}/{r3}, rows {}, dlq {}, duplicates {}, {:.1} s",
        report["rows"],
        report["dlq"],
        report["duplicates"],
        elapsed.as_secs_f64()
    );
}

/// Test 4: bad inputs mixed into a good stream → every good frame a row, every bad one
/// a dead letter with the right kind, its original bytes and key, never a blocked
/// partition.
#[test]
fn bad_inputs_go_to_the_dlq_with_the_right_kind() {
    let _serial = serial();
    let mut options = Options { partitions: 3, ..Options::default() };
    // Records above 300 kB are "oversized" for this test (default: 20 MiB).
    options.env.push(("VIGIL__DETECTOR__MAX_RECORD_BYTES".into(), "300000".into()));
    let p = Pipeline::start("bad-inputs", options);
    let mut sink = p.sink("sink");
    let mut detector = p.detector("detector", None);

    // Files sent by `vigil produce`, as they are.
    let sample = std::fs::read(vigil_tests::repo_root().join("samples/dog.jpg")).expect("samples/dog.jpg");
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.jpg", vec![], "empty"),
        ("truncated.jpg", sample[..sample.len() / 3].to_vec(), "corrupt_image"),
        ("notes.txt", b"this is a text file, not an image".to_vec(), "unknown_format"),
        ("bomb.png", png_bomb(60_000, 60_000), "too_large"),
        ("huge.jpg", [&sample[..], &vec![0u8; 400_000][..]].concat(), "oversized"),
    ];
    let good_a = 15;
    p.produce_synthetic(&["good-a", "good-b"], good_a);
    for (name, bytes, _) in &files {
        let path = p.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        p.produce(&["--source", "bad-files", path.to_str().unwrap()]);
    }
    // Records `vigil produce` never writes.
    let not_avro = b"{\"frame\": \"json, not avro\"}".to_vec();
    let mut unknown_schema = vec![0xC3, 0x01];
    unknown_schema.extend_from_slice(&[0xAB; 8]);
    unknown_schema.extend_from_slice(b"body of a schema nobody knows");
    p.produce_raw("bad-raw", Some(&not_avro));
    p.produce_raw("bad-raw", Some(&unknown_schema));
    p.produce_raw("bad-raw", None);
    p.produce_synthetic(&["good-c"], good_a);

    let good = 3 * good_a;
    let bad = files.len() as u64 + 3;
    let frames = good + bad;
    p.wait_rows(good, Duration::from_secs(600), &mut [&mut sink, &mut detector]);
    // Dead letters are committed with the offsets: by now all of them are in the DLQ.
    let report = p.wait_exact(Duration::from_secs(60));
    stop(&mut detector);
    stop(&mut sink);
    let summary = detector.summary().unwrap();
    assert_eq!(summary["dead_letters"], bad, "{summary}");
    p.assert_exact(&report, frames, bad);

    // Each bad record: in the DLQ exactly once, original key and bytes, the right kind.
    let images: HashMap<(i32, i64), vigil_tests::Record> =
        p.read_topic(&p.images).into_iter().map(|r| ((r.partition, r.offset), r)).collect();
    let dlq = p.read_topic(&p.dlq);
    assert_eq!(dlq.len() as u64, bad, "dead letters");
    let mut kinds_seen = HashMap::new();
    let mut sources_seen = HashSet::new();
    for letter in &dlq {
        let h = &letter.headers;
        let kind = h.get("vigil.error.kind").unwrap_or_else(|| panic!("no kind header: {h:?}"));
        assert!(h.get("vigil.error.message").is_some_and(|m| !m.is_empty()), "message header: {h:?}");
        let partition: i32 = h["vigil.source.partition"].parse().unwrap();
        let offset: i64 = h["vigil.source.offset"].parse().unwrap();
        assert!(sources_seen.insert((partition, offset)), "one dead letter per bad record");
        let original = &images[&(partition, offset)];
        assert_eq!(letter.payload, original.payload, "DLQ keeps the original bytes ({kind})");
        assert_eq!(letter.key, original.key, "DLQ keeps the original key ({kind})");
        // Which input was it?
        let payload = original.payload.clone().unwrap_or_default();
        let name = if original.payload.is_none() {
            "tombstone".to_string()
        } else if payload == not_avro {
            "not-avro".to_string()
        } else if payload == unknown_schema {
            "unknown-schema".to_string()
        } else {
            files
                .iter()
                .find(|(name, _, _)| payload.windows(name.len()).any(|w| w == name.as_bytes()))
                .map(|(name, _, _)| name.to_string())
                .unwrap_or_else(|| panic!("a good frame was dead-lettered as {kind}: {h:?}"))
        };
        kinds_seen.insert(name, kind.clone());
    }
    let mut expected: HashMap<String, String> =
        files.iter().map(|(name, _, kind)| (name.to_string(), kind.to_string())).collect();
    expected.insert("not-avro".into(), "not_avro".into());
    expected.insert("unknown-schema".into(), "unknown_schema".into());
    expected.insert("tombstone".into(), "not_avro".into());
    assert_eq!(kinds_seen, expected);
    eprintln!(
        "[test 4] {frames} frames ({good} good, {bad} bad): rows {}, dlq {}, duplicates {}; kinds {kinds_seen:?}",
        report["rows"], report["dlq"], report["duplicates"]
    );
}

/// Test 5: the sink on PostgreSQL (its own schema), killed with a batch written but not
/// committed (the server must roll it back with its offsets) and restarted → exact, the
/// restart reading from the stored offsets.
#[test]
fn postgres_sink_exact() {
    let schema = match PgSchema::create() {
        Ok(schema) => schema,
        Err(reason) => {
            eprintln!("[test 5] SKIPPED: PostgreSQL sink test: {reason}");
            return;
        }
    };
    let _serial = serial();
    let p = Pipeline::start("postgres", Options { database_url: Some(schema.url.clone()), ..Options::default() });
    let group = sink_group(&p);
    let mut sink = p.sink_with_failpoint("sink", "sink-kill-before-db-commit:4");
    let mut detector = p.detector("detector", None);
    let started = Instant::now();
    let frames = p.produce_cameras(4, 30);
    sink.wait_killed_at("sink-kill-before-db-commit", Duration::from_secs(600));
    let stored_at_kill = stored_offsets(&p.database_url, &group);
    assert_rows_within_stored(&p, &stored_at_kill);
    let mut sink2 = p.sink("sink-restarted");
    p.wait_rows(frames, Duration::from_secs(600), &mut [&mut sink2, &mut detector]);
    stop(&mut detector);
    let ends = p.wait_stored_at_end(&group, Duration::from_secs(120));
    stop(&mut sink2);
    let (read, past) = assert_read_past_stored(&p, &sink2, &stored_at_kill, &ends);
    let report = p.verify();
    p.assert_exact(&report, frames, 0);
    // Offsets are in PostgreSQL, in the schema of this test, one past the last record of
    // each partition (on a transactional topic commit markers follow, so offsets do not
    // add up to the record count).
    let mut client = postgres::Client::connect(&schema.url, postgres::NoTls).unwrap();
    let stored: HashMap<i32, i64> = client
        .query("SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1", &[&p.detections])
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, i32>(0), row.get::<_, i64>(1)))
        .collect();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for r in p.read_topic(&p.detections) {
        let end = ends.entry(r.partition).or_default();
        *end = (*end).max(r.offset + 1);
    }
    assert_eq!(stored, ends, "stored offsets are the end of every partition of {}", p.detections);
    assert_eq!(count_rows(&schema.url), frames);
    eprintln!(
        "[test 5] PostgreSQL: {frames} frames, sink killed before a database commit and restarted (read {read} records, {past} past the stored offsets): rows {}, dlq {}, duplicates {}, {:.1} s",
        report["rows"],
        report["dlq"],
        report["duplicates"],
        started.elapsed().as_secs_f64()
    );
}

/// Failed batches in the detector log: aborted, or given up with an unusable producer.
fn failures(detector: &Proc) -> usize {
    let log = detector.stderr();
    log.matches("batch aborted").count() + log.matches("producer unusable; recreating it").count()
}

/// Runs `inject` (which arms the errors and may produce frames; it returns how many),
/// waits until the detector reports a failed batch, then until it has committed two
/// more batches: the step's errors are consumed (including follow-up failures, e.g. an
/// epoch bump after a failed produce) before the next step.
///
/// Two batches must be left to follow the failed one. Frames produced before the errors
/// are armed may all be committed by then, leaving the redone batch as the last one (a
/// CI run waited out the timeout so); `inject` produces its frames after arming.
fn step(detector: &mut Proc, what: &str, inject: impl FnOnce() -> u64) -> u64 {
    let timeout = Duration::from_secs(180);
    let count = |d: &Proc, s: &str| d.stderr().matches(s).count();
    let before = failures(detector);
    let frames = inject();
    let deadline = Instant::now() + timeout;
    while failures(detector) <= before {
        assert!(detector.is_running(), "detector exited after {what}:\n{}", detector.stderr());
        assert!(Instant::now() < deadline, "no failed batch after {what} within {timeout:?}:\n{}", detector.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let committed = count(detector, "batch committed");
    while count(detector, "batch committed") < committed + 2 {
        assert!(detector.is_running(), "detector exited after {what}:\n{}", detector.stderr());
        assert!(Instant::now() < deadline, "no recovery after {what} within {timeout:?}:\n{}", detector.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("[test 6] {what}: {} failed batch(es) so far, recovered", failures(detector));
    frames
}

/// Test 6: errors injected into the in-memory broker (produce, TxnOffsetCommit, EndTxn,
/// coordinator errors and moves, then a fenced producer) → the exactly-once detector
/// aborts, rewinds and retries; fenced, it stops (exit 1); restarted, it ends exact.
///
/// Runs its own in-memory cluster in this process, whatever `VIGIL_TEST_BOOTSTRAP` says:
/// fault injection is a mock feature. The detector runs exactly-once here (one worker,
/// no rebalance, so the mock's unstored transactional offsets do not matter).
#[test]
fn injected_broker_errors_abort_retry_and_end_exact() {
    let _serial = serial();
    let mock = MockCluster::new(3).expect("in-memory cluster");
    let bootstrap = mock.bootstrap_servers();
    let mut options =
        Options { partitions: 4, delivery: Some("exactly-once"), bootstrap: Some(bootstrap), ..Options::default() };
    // "batch committed" is a debug line.
    options.env.push(("RUST_LOG".into(), "info,vigil::detector=debug,librdkafka=warn,rdkafka=warn".into()));
    let p = Pipeline::start("errors", options);
    for (topic, partitions) in [(&p.images, 4), (&p.detections, 4), (&p.dlq, 2)] {
        mock.create_topic(topic, partitions, 3).expect("create topic");
    }
    let mut frames = p.produce_cameras(4, 40);
    let mut sink = p.sink("sink");
    let mut detector = p.detector("detector", Some("errors"));
    let group = p.detections.replace("-detections", "-detector");
    let txn_id = format!("{group}-errors");
    p.wait_rows(8, Duration::from_secs(600), &mut [&mut sink, &mut detector]);
    use RDKafkaRespErr::*;

    // 1. Produce: a retriable error (librdkafka retries it), then a permanent one: the
    //    transaction must be aborted and the batch redone. No frames are produced here:
    //    `vigil produce` would meet the errors itself; the 150-odd frames not yet stored
    //    are the batches that follow.
    frames += step(&mut detector, "produce errors", || {
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        0
    });

    // 2. TxnOffsetCommit: coordinator unavailable (retried), then a permanent error.
    frames += step(&mut detector, "TxnOffsetCommit errors", || {
        mock.request_errors(
            RDKafkaApiKey::TxnOffsetCommit,
            &[RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
        );
        p.produce_cameras(4, 8)
    });

    // 3. EndTxn (the commit): not coordinator (retried), then a permanent error.
    frames += step(&mut detector, "EndTxn errors", || {
        mock.request_errors(
            RDKafkaApiKey::EndTxn,
            &[RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        p.produce_cameras(4, 8)
    });

    // 4. Coordinators: lookups fail for a while, then both coordinators move. No batch has
    //    to fail for this (librdkafka retries), so only the outcome is checked.
    frames += p.produce_cameras(4, 8);
    mock.request_errors(
        RDKafkaApiKey::FindCoordinator,
        &[RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE],
    );
    mock.request_errors(RDKafkaApiKey::AddPartitionsToTxn, &[RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS]);
    mock.coordinator(MockCoordinator::Transaction(txn_id), 2).expect("move the transaction coordinator");
    mock.coordinator(MockCoordinator::Group(group), 3).expect("move the group coordinator");

    p.wait_rows(frames, Duration::from_secs(600), &mut [&mut sink, &mut detector]);
    stop(&mut detector);
    let summary: Value = detector.summary().unwrap();
    let aborts = summary["aborts"].as_u64().unwrap();
    assert!(aborts >= 3, "a failed batch per step at least: {summary}");
    assert_eq!(failures(&detector) as u64, aborts, "every failed batch is logged: {summary}");

    // 5. EndTxn says the producer is fenced: another producer owns the transactional.id.
    //    Re-initialising would fence that one in turn: the worker must stop instead, with
    //    exit status 1 and a message that says what to do; its restart finishes the work.
    //    The error is armed before the worker starts, so its first commit meets it.
    frames += p.produce_cameras(4, 8);
    mock.request_errors(RDKafkaApiKey::EndTxn, &[RD_KAFKA_RESP_ERR_PRODUCER_FENCED]);
    let mut detector = p.detector("detector-fenced", Some("errors"));
    let status = detector.wait(Duration::from_secs(120)).expect("a fenced detector stops");
    let log = detector.stderr();
    assert_eq!(status.code(), Some(1), "fenced: exit 1:\n{log}");
    assert!(log.contains("this worker was fenced") && log.contains("--instance-id"), "{log}");
    assert_eq!(log.matches("transactions initialised").count(), 1, "no second producer: {log}");
    let mut detector = p.detector("detector-restarted", Some("errors"));
    p.wait_rows(frames, Duration::from_secs(600), &mut [&mut sink, &mut detector]);
    stop(&mut detector);
    stop(&mut sink);
    let report = p.verify();
    p.assert_exact(&report, frames, 0);
    eprintln!(
        "[test 6] {frames} frames with injected errors: {aborts} failed batches redone, then fenced and stopped; rows {}, dlq {}, duplicates {}; results of aborted transactions still visible in the topic (mock: no read_committed filtering): {}",
        report["rows"],
        report["dlq"],
        report["duplicates"],
        report["topics"]["detections_redelivered"]
    );
}

/// Test 9: frames as large as real camera images (samples/kite.jpg is 1.4 MB, above a
/// default broker's 1 MB record limit) go through: the stages create their topics with
/// `max.message.bytes` from `kafka.max_message_bytes`.
#[test]
fn camera_sized_frames_cross_the_broker() {
    let _serial = serial();
    let p = Pipeline::start("large-frames", Options { partitions: 2, ..Options::default() });
    let kite = vigil_tests::repo_root().join("samples/kite.jpg");
    let size = std::fs::metadata(&kite).expect("samples/kite.jpg").len();
    assert!(size > 1024 * 1024, "kite.jpg is {size} bytes: the test needs a frame above 1 MiB");
    let mut sink = p.sink("sink");
    let mut detector = p.detector("detector", None);
    for source in ["cam-a", "cam-b", "cam-c"] {
        p.produce(&["--source", source, kite.to_str().unwrap()]);
    }
    p.wait_rows(3, Duration::from_secs(300), &mut [&mut sink, &mut detector]);
    stop(&mut detector);
    stop(&mut sink);
    let report = p.verify();
    p.assert_exact(&report, 3, 0);
    eprintln!("[test 9] 3 frames of {size} bytes through {}: rows {}", p.bootstrap, report["rows"]);
}

/// Test 10: `vigil produce` refuses a frame larger than `kafka.max_message_bytes` with a
/// message that says what to do, sends the others, and exits 1.
#[test]
fn produce_refuses_a_frame_that_cannot_fit() {
    let _serial = serial();
    let mut p = Pipeline::start("too-large", Options { partitions: 1, ..Options::default() });
    p.set_env("VIGIL__KAFKA__MAX_MESSAGE_BYTES", "1000000");
    p.set_env("VIGIL__DETECTOR__MAX_RECORD_BYTES", "1000000");
    let samples = vigil_tests::repo_root().join("samples");
    let (kite, dog) = (samples.join("kite.jpg"), samples.join("dog.jpg"));
    let mut produce = p.spawn("produce", &["produce", kite.to_str().unwrap(), dog.to_str().unwrap()]);
    let status = produce.wait(Duration::from_secs(120)).expect("vigil produce finishes");
    assert_eq!(status.code(), Some(1), "a refused frame is a failure:\n{}", produce.stderr());
    let stderr = produce.stderr();
    assert!(stderr.contains("kite.jpg") && stderr.contains("above kafka.max_message_bytes = 1000000"), "{stderr}");
    assert!(produce.stdout().contains("delivered 1 frames"), "dog.jpg still goes: {}", produce.stdout());
    let records = p.read_topic(&p.images);
    assert_eq!(records.len(), 1, "only dog.jpg is in {}", p.images);
}

/// `vigil up`: in-memory broker, producer over samples/, detector, SQLite sink in one
/// process; the real model finds the dog in dog.jpg.
#[test]
fn vigil_up_runs_the_samples_end_to_end() {
    let _serial = serial();
    if real_kafka().is_some() {
        eprintln!("(vigil up always uses its own in-memory broker; VIGIL_TEST_BOOTSTRAP does not apply)");
    }
    let dir = std::env::temp_dir().join(format!("vigil-it-up-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("up.sqlite").display());
    let p = Pipeline::start("up", Options { bootstrap: Some("unused:9092".into()), ..Options::default() });
    let mut up = p.spawn(
        "up",
        &[
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
        up.wait(Duration::from_secs(600)).unwrap_or_else(|| panic!("vigil up did not finish:\n{}", up.stderr()));
    let out = up.stdout();
    assert!(status.success(), "vigil up failed ({status}):\n{out}\n{}", up.stderr());
    assert_eq!(count_rows(&db), 7, "{out}");
    assert!(out.contains("  dog ") || out.contains(", dog "), "NanoDet-g finds the dog in samples/dog.jpg:\n{out}");
    assert!(out.contains("stored 7 rows"), "{out}");
    assert!(out.contains("viewer and API on http://127.0.0.1:"), "vigil up serves the viewer:\n{out}");
    std::fs::remove_dir_all(&dir).ok();
}
