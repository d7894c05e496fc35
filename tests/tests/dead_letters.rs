//! Dead letters that do not fit: a record whose dead letter (original bytes, key and
//! headers plus `vigil.error.*`) is larger than the dead-letter topic or the detector's
//! producer accepts must not stall its batch. It is dead-lettered truncated
//! (`vigil.dlq.truncated=true`, `vigil.dlq.original_bytes`, `vigil.dlq.sha256`, the payload
//! cut to what fits) and every other frame of its partitions still gets its result, in
//! bounded time.
//!
//! - On the in-memory broker (always run): a record larger than the producer's
//!   `message.max.bytes` (the mock does not enforce a topic's `max.message.bytes`, but
//!   librdkafka refuses to send what its producer limit forbids).
//! - On a real Kafka (`VIGIL_TEST_BOOTSTRAP`, else SKIPPED): an `images.dlq` created with a
//!   64 KiB `max.message.bytes` under an `images` that accepts 1 MiB; a DLQ whose limit is
//!   lowered while the detector runs (the limit it learned at start is then wrong: bounded
//!   retries end in the truncated form); and the limit Vigil creates the DLQ with.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use serde_json::Value;
use vigil_tests::{count_table, real_kafka, serial, sink_counts, stop, Options, Pipeline, Proc, Record};

/// How long the pipeline may take to give every good frame its row. A stalled batch
/// never gets there; a healthy run needs well under a minute for these few frames.
const BOUND: Duration = Duration::from_secs(240);

/// The small limit of these tests: a DLQ's `max.message.bytes`, or `kafka.max_message_bytes`.
const LIMIT_64K: u32 = 64 * 1024;

fn skipped(test: &str) -> bool {
    if real_kafka().is_some() {
        return false;
    }
    eprintln!("[{test}] SKIPPED: a topic's max.message.bytes is enforced only by a real Kafka; set VIGIL_TEST_BOOTSTRAP=host:port");
    true
}

/// Runs `future` to completion on this thread (the admin client's futures are completed
/// by its own polling thread, so no runtime is needed).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))).request_timeout(Some(Duration::from_secs(30)))
}

/// Creates `(name, partitions, max.message.bytes)` topics and waits until each is visible.
fn create_topics(bootstrap: &str, topics: &[(&str, i32, u32)]) {
    let limits: Vec<String> = topics.iter().map(|(_, _, max)| max.to_string()).collect();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&limits)
        .map(|((name, partitions, _), max)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(-1)).set("max.message.bytes", max)
        })
        .collect();
    for result in block_on(admin(bootstrap).create_topics(&new, &admin_options())).expect("create topics") {
        result.unwrap_or_else(|(name, code)| panic!("create {name}: {code}"));
    }
    for (name, _, _) in topics {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while max_message_bytes(bootstrap, name).is_none() {
            assert!(std::time::Instant::now() < deadline, "{name} never became visible");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The effective `max.message.bytes` of `topic` (override or broker default), `None`
/// while the topic is unknown.
fn max_message_bytes(bootstrap: &str, topic: &str) -> Option<u64> {
    let resource = ResourceSpecifier::Topic(topic);
    let results = block_on(admin(bootstrap).describe_configs([&resource], &admin_options())).ok()?;
    let config = results.into_iter().next()?.ok()?;
    config.get("max.message.bytes")?.value.as_deref()?.parse().ok()
}

fn set_max_message_bytes(bootstrap: &str, topic: &str, bytes: u32) {
    let value = bytes.to_string();
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", &value);
    for result in block_on(admin(bootstrap).alter_configs([&alter], &admin_options())).expect("alter configs") {
        result.unwrap_or_else(|(_, code)| panic!("alter {topic}: {code}"));
    }
    assert_eq!(max_message_bytes(bootstrap, topic), Some(u64::from(bytes)), "{topic}'s new limit");
}

/// Hex SHA-256 of `bytes`, from `sha256sum` (an implementation the detector does not share).
fn sha256_hex(dir: &std::path::Path, bytes: &[u8]) -> String {
    let path = dir.join("poison.bin");
    std::fs::write(&path, bytes).expect("write the poison");
    let out = std::process::Command::new("sha256sum").arg(&path).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("a digest").to_owned()
}

/// A record that is not Avro (a `not_avro` dead letter), `len` bytes of a pattern. It
/// starts with 0x01: a value starting with 0x00 is read as the Confluent Schema Registry
/// framing (an `unknown_schema` dead letter without a registry).
fn poison(len: usize) -> Vec<u8> {
    (0..len).map(|i| (1 + i % 251) as u8).collect()
}

/// Bytes of a record as its size counts against a limit, without batch framing.
fn record_bytes(r: &Record) -> usize {
    r.key.as_ref().map_or(0, Vec::len)
        + r.payload.as_ref().map_or(0, Vec::len)
        + r.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// The poison's dead letter: alone in the DLQ, of `kind`, flagged truncated, digest and
/// original size right, payload a prefix of the original of more than `min_payload` bytes,
/// original key and headers kept, within `limit`.
fn assert_truncated_dead_letter(
    p: &Pipeline,
    poison: &[u8],
    key: &str,
    kind: &str,
    limit: u32,
    min_payload: usize,
) -> Record {
    let dlq = p.read_topic(&p.dlq);
    assert_eq!(dlq.len(), 1, "one dead letter, the poison's: {:?}", dlq.iter().map(|r| &r.headers).collect::<Vec<_>>());
    let letter = dlq.into_iter().next().unwrap();
    let h = &letter.headers;
    assert_eq!(h.get("vigil.error.kind").map(String::as_str), Some(kind), "{h:?}");
    assert_eq!(h.get("vigil.dlq.truncated").map(String::as_str), Some("true"), "flagged truncated: {h:?}");
    assert_eq!(h.get("vigil.dlq.original_bytes"), Some(&poison.len().to_string()), "original size: {h:?}");
    assert_eq!(h.get("vigil.dlq.sha256"), Some(&sha256_hex(&p.dir, poison)), "digest of the original value: {h:?}");
    assert_eq!(h.get("test.origin").map(String::as_str), Some("raw"), "the original headers are kept: {h:?}");
    assert_eq!(letter.key.as_deref(), Some(key.as_bytes()), "the original key is kept");
    let payload = letter.payload.as_deref().unwrap_or_default();
    assert!(payload.len() < poison.len() && poison.starts_with(payload), "the payload is a prefix of the original");
    assert!(payload.len() > min_payload, "the cut keeps what fits ({} bytes, at least {min_payload})", payload.len());
    assert!(record_bytes(&letter) <= limit as usize, "the dead letter fits the limit: {} bytes", record_bytes(&letter));
    letter
}

fn summary_u64(summary: &Value, key: &str) -> u64 {
    summary[key].as_u64().unwrap_or_else(|| panic!("{key} in {summary}"))
}

/// Good frames, then the poison, then more good frames (the poison sits in the middle of
/// its partition and shares batches with every partition); waits for every good frame's
/// row within [`BOUND`]; stops the stages; checks the audit. Returns the detector's summary.
fn run_with_poison(p: &Pipeline, poison: &[u8], key: &str, sink: &mut Proc, detector: &mut Proc) -> Value {
    let mut good = p.produce_cameras(6, 3);
    p.produce_raw(key, Some(poison));
    good += p.produce_cameras(6, 3);
    let started = std::time::Instant::now();
    p.wait_rows(good, BOUND, &mut [&mut *sink, &mut *detector]);
    let report = p.wait_exact(Duration::from_secs(60));
    eprintln!(
        "[{}] {good} good frames and a {} byte poison done in {:.1} s",
        p.name,
        poison.len(),
        started.elapsed().as_secs_f64()
    );
    // The sink's second loop stores the dead letter in a table of its own (the API reports it).
    let deadline = std::time::Instant::now() + BOUND;
    while count_table(&p.database_url, "dead_letters") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(count_table(&p.database_url, "dead_letters"), 1, "the sink stored the dead letter once");
    stop(detector);
    stop(sink);
    assert_eq!(sink_counts(sink).and_then(|c| c.get("dead_letters").copied()), Some(1), "{}", sink.stderr());
    p.assert_exact(&report, good + 1, 1);
    let summary = detector.summary().expect("detector summary");
    assert_eq!(summary_u64(&summary, "dead_letters"), 1, "{summary}");
    summary
}

/// The in-memory broker: `kafka.max_message_bytes` 64 KiB (the producer may send 1 MiB
/// more to the DLQ), a 1.2 MB record that the detector dead-letters as `oversized`. Its
/// dead letter is over the producer's `message.max.bytes`: librdkafka refuses it, every
/// time.
#[test]
fn a_dead_letter_larger_than_the_producer_allows_is_truncated() {
    let _serial = serial();
    let mock = MockCluster::new(3).expect("in-memory cluster");
    let mut options = Options {
        partitions: 3,
        delivery: Some("at-least-once"),
        bootstrap: Some(mock.bootstrap_servers()),
        ..Options::default()
    };
    options.env.push(("VIGIL__KAFKA__MAX_MESSAGE_BYTES".into(), LIMIT_64K.to_string()));
    options.env.push(("VIGIL__DETECTOR__MAX_RECORD_BYTES".into(), "60000".into()));
    let p = Pipeline::start("dlq-producer-limit", options);
    for (topic, partitions) in [(&p.images, 3), (&p.detections, 3), (&p.dlq, 2)] {
        mock.create_topic(topic, partitions, 3).expect("create topic");
    }
    let mut sink = p.sink("sink");
    let mut detector = p.detector("detector", None);
    let poison = poison(1_200_000);
    run_with_poison(&p, &poison, "poison", &mut sink, &mut detector);
    // The producer's limit: kafka.max_message_bytes plus the DLQ's headroom (1 MiB).
    let limit = LIMIT_64K + 1024 * 1024;
    let letter = assert_truncated_dead_letter(&p, &poison, "poison", "oversized", limit, limit as usize / 2);
    eprintln!("[dlq-producer-limit] 1200000 byte record dead-lettered as {} bytes", record_bytes(&letter));
}

/// A real Kafka: `images` accepts 1 MiB, the DLQ only 64 KiB (an existing topic Vigil
/// does not change). A 200 kB record that is not Avro: its dead letter is refused by the
/// broker (MESSAGE_TOO_LARGE), every time. The detector learns the DLQ's limit at start:
/// the dead letter goes truncated at once, no batch is aborted.
#[test]
fn a_dead_letter_larger_than_the_dlq_accepts_is_truncated() {
    if skipped("dlq-small") {
        return;
    }
    let _serial = serial();
    let p = Pipeline::start("dlq-small", Options { partitions: 3, ..Options::default() });
    create_topics(
        &p.bootstrap,
        &[(&p.images, 3, 1024 * 1024), (&p.detections, 3, 1024 * 1024), (&p.dlq, 2, LIMIT_64K)],
    );
    let mut sink = p.sink("sink");
    let mut detector = p.detector("detector", None);
    let poison = poison(200_000);
    let summary = run_with_poison(&p, &poison, "poison", &mut sink, &mut detector);
    assert_eq!(summary_u64(&summary, "aborts"), 0, "sized at once, nothing aborted: {summary}");
    assert!(
        detector.stderr().contains("dead letters larger than that are sent truncated"),
        "the start-up check names the DLQ's small limit:\n{}",
        detector.stderr()
    );
    let letter = assert_truncated_dead_letter(&p, &poison, "poison", "not_avro", LIMIT_64K, LIMIT_64K as usize / 2);
    eprintln!("[dlq-small] 200000 byte record dead-lettered as {} bytes into a 64 KiB DLQ", record_bytes(&letter));
}

/// A real Kafka: the DLQ's limit is lowered to 64 KiB while the detector runs, so what it
/// learned at start is wrong and the full dead letter is refused. After a bounded number
/// of aborted attempts the batch's dead letters go truncated and the batch commits.
#[test]
fn a_dlq_limit_lowered_under_a_running_detector_ends_in_a_truncated_dead_letter() {
    if skipped("dlq-shrunk") {
        return;
    }
    let _serial = serial();
    let p = Pipeline::start("dlq-shrunk", Options { partitions: 3, ..Options::default() });
    create_topics(
        &p.bootstrap,
        &[(&p.images, 3, 1024 * 1024), (&p.detections, 3, 1024 * 1024), (&p.dlq, 2, 1024 * 1024)],
    );
    let mut sink = p.sink("sink");
    let mut detector = p.detector("detector", None);
    assert!(detector.wait_for_log("detector started", BOUND), "detector did not start:\n{}", detector.stderr());
    // Lowered once the detector has learned the limit (1 MiB: a 200 kB dead letter fits).
    let learned = |log: &str| log.contains("dead-letter topic accepts records up to") || log.contains("are sent whole");
    detector.wait_for_log_where(learned, Duration::from_secs(30));
    set_max_message_bytes(&p.bootstrap, &p.dlq, LIMIT_64K);
    let poison = poison(200_000);
    let summary = run_with_poison(&p, &poison, "poison", &mut sink, &mut detector);
    let aborts = summary_u64(&summary, "aborts");
    assert!((3..=10).contains(&aborts), "refused a few times, then truncated: {aborts} aborts: {summary}");
    // Halved per failed attempt: what is left is under the limit, not necessarily near it
    // (a refused record can cost the producer one more failure: "skipped sequence numbers").
    let letter = assert_truncated_dead_letter(&p, &poison, "poison", "not_avro", LIMIT_64K, LIMIT_64K as usize / 8);
    eprintln!("[dlq-shrunk] {aborts} aborted attempts, then a {} byte dead letter", record_bytes(&letter));
}

/// A real Kafka: `images` exists and accepts 2 MiB; the DLQ is missing. The detector
/// creates it with what `images` accepts plus the headroom for headers (1 MiB).
#[test]
fn a_created_dlq_accepts_what_images_accepts_plus_headroom() {
    if skipped("dlq-created") {
        return;
    }
    let _serial = serial();
    let p = Pipeline::start("dlq-created", Options { partitions: 2, ..Options::default() });
    let images_limit = 2 * 1024 * 1024;
    create_topics(&p.bootstrap, &[(&p.images, 2, images_limit)]);
    let mut detector = p.detector("detector", None);
    assert!(detector.wait_for_log("detector started", BOUND), "detector did not start:\n{}", detector.stderr());
    stop(&mut detector);
    assert_eq!(
        max_message_bytes(&p.bootstrap, &p.dlq),
        Some(u64::from(images_limit) + 1024 * 1024),
        "the DLQ's max.message.bytes: images' limit plus the headroom"
    );
}
