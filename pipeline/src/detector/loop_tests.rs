//! The detector loop against the in-memory broker, with a stand-in model (these tests
//! are about Kafka control flow; the product always runs NanoDet-g, which the
//! multi-process tests in `tests/` use).
use std::collections::HashSet;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};

use super::model_thread::preloaded;
use super::test_support::{frame_bytes, limits_of, png, FakeModel};
use super::*;
use crate::codec::DetectionResult;
use crate::kafka::idempotent_producer_config;
use crate::kafka::DevBroker;
use crate::verify::read_topic_to_end;

const GOOD: usize = 30;

fn settings_for(broker: &DevBroker, delivery: Delivery) -> Settings {
    let mut s = Settings::default();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    s.kafka.bootstrap_servers = broker.bootstrap_servers().to_owned();
    s.kafka.topics.images.name = format!("images-{suffix}");
    s.kafka.topics.images.partitions = 3;
    s.kafka.topics.detections.name = format!("detections-{suffix}");
    s.kafka.topics.detections.partitions = 3;
    s.kafka.topics.dlq.name = format!("dlq-{suffix}");
    s.kafka.topics.dlq.partitions = 1;
    s.detector.group_id = format!("detector-{suffix}");
    s.detector.delivery = delivery;
    s.detector.session_timeout_ms = 6_000;
    s.detector.max_batch = 4;
    s.detector.max_wait_ms = 20;
    broker.create_topics(&s.kafka).unwrap();
    s
}

async fn produce_inputs(settings: &Settings) {
    produce_frames(settings, 0..GOOD, true).await;
}

async fn produce_frames(settings: &Settings, ids: std::ops::Range<usize>, junk: bool) {
    let producer: FutureProducer = idempotent_producer_config(&settings.kafka).create().unwrap();
    let topic = &settings.kafka.topics.images.name;
    for i in ids {
        let value = frame_bytes(&format!("frame-{i}"), png(8, 8, [0, 0, 255]));
        let key = format!("cam-{}", i % 3);
        producer.send(FutureRecord::to(topic).key(&key).payload(&value), Duration::from_secs(10)).await.unwrap();
    }
    if junk {
        let junk = b"not avro at all".to_vec();
        producer.send(FutureRecord::to(topic).key("junk").payload(&junk), Duration::from_secs(10)).await.unwrap();
    }
}

/// Distinct frame ids in `detections`, distinct sources in the DLQ.
fn outputs(settings: &Settings) -> (HashSet<String>, HashSet<String>) {
    let stop = CancellationToken::new();
    let mut results = HashSet::new();
    let read = read_topic_to_end(
        &settings.kafka,
        &settings.kafka.topics.detections.name,
        Duration::from_secs(10),
        &stop,
        |m| {
            results.insert(DetectionResult::decode(m.payload().unwrap()).unwrap().frame_id);
        },
    );
    // Polled until complete: a read that fails now (topic still empty) is retried.
    if let Err(e) = read {
        eprintln!("reading detections: {e}");
    }
    let mut dead = HashSet::new();
    let read =
        read_topic_to_end(&settings.kafka, &settings.kafka.topics.dlq.name, Duration::from_secs(10), &stop, |m| {
            let h = m.headers().unwrap();
            let kind = h.iter().find(|h| h.key == "vigil.error.kind").and_then(|h| h.value).unwrap();
            assert_eq!(kind, b"not_avro");
            assert_eq!(m.payload(), Some(&b"not avro at all"[..]), "original bytes");
            let offset = h.iter().find(|h| h.key == "vigil.source.offset").and_then(|h| h.value).unwrap();
            dead.insert(String::from_utf8_lossy(offset).into_owned());
        });
    if let Err(e) = read {
        eprintln!("reading the DLQ: {e}");
    }
    (results, dead)
}

/// Runs a detector until every input has an output (or `timeout`), then stops it.
async fn run_until_done(settings: &Settings, timeout: Duration) -> DetectorSummary {
    run_until(settings, GOOD, timeout).await
}

/// Runs a detector until `detections` holds `results` distinct frames and the DLQ one
/// dead letter (or `timeout`), then stops it.
async fn run_until(settings: &Settings, expected: usize, timeout: Duration) -> DetectorSummary {
    let worker =
        ModelThread::start(preloaded(Box::new(FakeModel { calls: 0 })), limits_of(&settings.detector)).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = {
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { run(&settings, worker, shutdown).await })
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let s = settings.clone();
        let (results, dead) = tokio::task::spawn_blocking(move || outputs(&s)).await.unwrap();
        if results.len() == expected && dead.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_commits_results_dead_letters_and_offsets() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let settings = settings_for(&broker, Delivery::ExactlyOnce);
    produce_inputs(&settings).await;
    let summary = run_until_done(&settings, Duration::from_secs(60)).await;
    let (results, dead) = outputs(&settings);
    assert_eq!((results.len(), dead.len()), (GOOD, 1), "{summary:?}");
    assert_eq!((summary.results, summary.dead_letters, summary.aborts), (GOOD as u64, 1, 0), "{summary:?}");
    assert!(summary.instance_id.starts_with(&settings.detector.group_id), "transactional.id: {summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_commits_offsets_so_a_restart_redoes_nothing() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let settings = settings_for(&broker, Delivery::AtLeastOnce);
    produce_inputs(&settings).await;
    let first = run_until_done(&settings, Duration::from_secs(60)).await;
    assert_eq!((first.results, first.dead_letters), (GOOD as u64, 1), "{first:?}");
    // Same group again, one new frame: the committed offsets are where the first run
    // ended, so only the new frame is processed.
    produce_frames(&settings, GOOD..GOOD + 1, false).await;
    let second = run_until(&settings, GOOD + 1, Duration::from_secs(60)).await;
    assert_eq!((second.results, second.dead_letters), (1, 0), "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_abort_rewind_and_redo() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let settings = settings_for(&broker, Delivery::ExactlyOnce);
    produce_inputs(&settings).await;
    // A produce request of the first transaction fails permanently (abort), and so
    // does an offsets commit (abort): each batch is redone and committed once.
    broker.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]);
    broker.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
    );
    let summary = run_until_done(&settings, Duration::from_secs(90)).await;
    let (results, dead) = outputs(&settings);
    assert_eq!((results.len(), dead.len()), (GOOD, 1), "{summary:?}");
    assert!(summary.aborts >= 2, "{summary:?}");
    assert_eq!(summary.results, GOOD as u64, "each frame committed once: {summary:?}");
}
