//! The overload policy through the detector loop, against the in-memory broker with the
//! stand-in model: stale records expire, a busy source sheds its oldest extras, and every
//! record still gets one outcome with its offset committed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::model_thread::preloaded;
use super::test_support::{frame_bytes, limits_of, png, FakeModel};
use super::{run, Delivery, DetectorSummary, ModelThread};
use crate::codec::{now_us, DetectionResult};
use crate::kafka::{idempotent_producer_config, DevBroker};
use crate::settings::Settings;
use crate::verify::read_topic_to_end;

/// One partition per topic, so the batches hold the records in the order sent.
fn settings_for(broker: &DevBroker) -> Settings {
    let mut s = Settings::default();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    s.kafka.bootstrap_servers = broker.bootstrap_servers().to_owned();
    for (topic, name) in [
        (&mut s.kafka.topics.images, "images"),
        (&mut s.kafka.topics.detections, "detections"),
        (&mut s.kafka.topics.dlq, "dlq"),
    ] {
        topic.name = format!("{name}-{suffix}");
        topic.partitions = 1;
    }
    s.detector.group_id = format!("detector-{suffix}");
    s.detector.delivery = Delivery::AtLeastOnce;
    s.detector.session_timeout_ms = 6_000;
    s.detector.max_batch = 8;
    s.detector.max_wait_ms = 200;
    broker.create_topics(&s.kafka).unwrap();
    s
}

/// Sends one frame per `(source, timestamp_ms)`, keyed by source, in order.
async fn send(settings: &Settings, frames: &[(&str, i64)]) {
    let producer: FutureProducer = idempotent_producer_config(&settings.kafka).create().unwrap();
    for (i, (source, timestamp_ms)) in frames.iter().enumerate() {
        let value = frame_bytes(&format!("{source}-{i}"), png(8, 8, [0, 0, 255]));
        let record =
            FutureRecord::to(&settings.kafka.topics.images.name).key(*source).payload(&value).timestamp(*timestamp_ms);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
}

/// Results as (source, processed_at_us), the source from the frame id; dead letters as
/// (record key, kind).
type Outcomes = (Vec<(String, i64)>, Vec<(String, String)>);

fn outcomes(settings: &Settings) -> Outcomes {
    let stop = CancellationToken::new();
    let topics = &settings.kafka.topics;
    let key =
        |m: &rdkafka::message::BorrowedMessage<'_>| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
    let mut results = Vec::new();
    let read = read_topic_to_end(&settings.kafka, &topics.detections.name, Duration::from_secs(10), &stop, |m| {
        let result = DetectionResult::decode(m.payload().unwrap()).unwrap();
        let source = result.frame_id.rsplit_once('-').map_or("", |(source, _)| source).to_owned();
        results.push((source, result.processed_at_us));
    });
    read.ok(); // empty so far: read again on the next round
    let mut dead = Vec::new();
    let read = read_topic_to_end(&settings.kafka, &topics.dlq.name, Duration::from_secs(10), &stop, |m| {
        let h = m.headers().unwrap();
        let kind = h.iter().find(|h| h.key == "vigil.error.kind").and_then(|h| h.value).unwrap();
        dead.push((key(m), String::from_utf8_lossy(kind).into_owned()));
    });
    read.ok();
    (results, dead)
}

/// Runs a detector until `expected` outcomes are in the topics (or a minute), then stops it.
async fn run_until(settings: &Settings, expected: usize) -> (DetectorSummary, Outcomes) {
    let model =
        ModelThread::start(preloaded(Box::new(FakeModel { calls: 0 })), limits_of(&settings.detector)).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = {
        let (settings, shutdown) = (settings.clone(), shutdown.clone());
        tokio::spawn(async move { run(&settings, model, shutdown).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let s = settings.clone();
        let (results, dead) = tokio::task::spawn_blocking(move || outcomes(&s)).await.unwrap();
        if results.len() + dead.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    let s = settings.clone();
    (summary, tokio::task::spawn_blocking(move || outcomes(&s)).await.unwrap())
}

fn count<'a>(items: impl IntoIterator<Item = &'a (String, String)>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, kind) in items {
        *counts.entry(kind.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_records_expire_as_dead_letters_and_their_offsets_are_committed() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let mut settings = settings_for(&broker);
    settings.detector.max_frame_age_ms = 60_000;
    let now_ms = now_us() / 1000;
    let hour_ago = now_ms - 3_600_000;
    let frames: Vec<(&str, i64)> = (0..10).map(|i| ("cam", if i % 2 == 0 { hour_ago } else { now_ms })).collect();
    send(&settings, &frames).await;

    let (summary, (results, dead)) = run_until(&settings, frames.len()).await;
    assert_eq!((results.len(), dead.len()), (5, 5), "{summary:?} {dead:?}");
    assert_eq!(count(&dead), HashMap::from([("expired".to_string(), 5)]), "{dead:?}");
    assert_eq!((summary.results, summary.dead_letters), (5, 5), "{summary:?}");

    // Committed with their batches: the group's next worker has nothing left to do.
    send(&settings, &[("cam", now_ms)]).await;
    let (again, _) = run_until(&settings, frames.len() + 1).await;
    assert_eq!((again.results, again.dead_letters), (1, 0), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_source_sheds_its_oldest_extras_and_cannot_crowd_the_others_out() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let mut settings = settings_for(&broker);
    settings.detector.max_frames_per_source = 2;
    // One camera floods, two send one frame each behind it: all in one partition.
    let now_ms = now_us() / 1000;
    let mut frames: Vec<(&str, i64)> = vec![("busy", now_ms); 20];
    frames.extend([("quiet-1", now_ms), ("quiet-2", now_ms)]);
    send(&settings, &frames).await;

    let (summary, (results, dead)) = run_until(&settings, frames.len()).await;
    assert_eq!(results.len() + dead.len(), frames.len(), "one outcome per record: {summary:?}");
    assert!(dead.iter().all(|(source, kind)| source == "busy" && kind == "shed"), "{dead:?}");
    assert!(!dead.is_empty(), "the busy camera sheds: {summary:?}");
    for quiet in ["quiet-1", "quiet-2"] {
        assert!(results.iter().any(|(source, _)| source == quiet), "{quiet} got its result: {results:?}");
    }
    // Never more than two of the busy camera's frames per inference batch (a batch's
    // results share their processed_at_us).
    let mut per_batch: HashMap<i64, usize> = HashMap::new();
    for (source, batch) in &results {
        if source == "busy" {
            *per_batch.entry(*batch).or_default() += 1;
        }
    }
    assert!(per_batch.values().all(|n| *n <= 2), "busy frames per batch: {per_batch:?}");
    assert_eq!(summary.results + summary.dead_letters, frames.len() as u64, "{summary:?}");
}
