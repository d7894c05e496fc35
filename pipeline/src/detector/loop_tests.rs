//! The detector loop against the in-memory broker, with a stand-in model (these tests
//! are about Kafka control flow; the product always runs NanoDet-g, which the
//! multi-process tests in `tests/` use).
use std::collections::HashSet;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};

use super::model_thread::preloaded;
use super::test_support::{frame_bytes, limits_of, png, BrokenModel, FakeModel, PanickingModel, SlowModel};
use super::*;
use crate::codec::DetectionResult;
use crate::kafka::idempotent_producer_config;
use crate::kafka::DevBroker;
use crate::verify::read_topic_to_end;

const GOOD: usize = 30;

/// Settings for `broker` with topics of their own (created), for `delivery`.
pub(super) fn settings_for(broker: &DevBroker, delivery: Delivery) -> Settings {
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

/// A broker blip longer than a few attempts (here: the dead letter's produce request fails
/// five times, for a reason that is not its size) must not cost a dead letter its bytes:
/// only size refusals count towards truncation. `outputs` asserts the original bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_blip_does_not_truncate_dead_letters() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let settings = settings_for(&broker, Delivery::ExactlyOnce);
    produce_frames(&settings, 0..0, true).await;
    broker.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5]);
    let summary = run_until(&settings, 0, Duration::from_secs(90)).await;
    let (results, dead) = outputs(&settings);
    assert_eq!((results.len(), dead.len()), (0, 1), "{summary:?}");
    assert!(summary.aborts >= 4, "the blip outlasted the truncation threshold: {summary:?}");
}

/// Starts a detector worker with `model`; returns its shutdown token and task.
async fn start(
    settings: &Settings,
    model: Box<dyn crate::model::Detector>,
) -> (CancellationToken, tokio::task::JoinHandle<Result<DetectorSummary, DetectorError>>) {
    start_with(settings, model, Health::new()).await
}

/// [`start`], the worker keeping `health` up to date.
async fn start_with(
    settings: &Settings,
    model: Box<dyn crate::model::Detector>,
    health: Health,
) -> (CancellationToken, tokio::task::JoinHandle<Result<DetectorSummary, DetectorError>>) {
    let worker = ModelThread::start(preloaded(model), limits_of(&settings.detector)).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = {
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { run_with_health(&settings, worker, shutdown, health).await })
    };
    (shutdown, task)
}

/// Distinct result frame ids, and the kind of every dead letter, in the output topics now.
fn results_and_dead_letter_kinds(settings: &Settings) -> (HashSet<String>, Vec<String>) {
    let stop = CancellationToken::new();
    let kafka = &settings.kafka;
    let mut results = HashSet::new();
    let read = read_topic_to_end(kafka, &kafka.topics.detections.name, Duration::from_secs(10), &stop, |m| {
        results.insert(DetectionResult::decode(m.payload().unwrap()).unwrap().frame_id);
    });
    if let Err(e) = read {
        eprintln!("reading detections: {e}");
    }
    let mut kinds = Vec::new();
    let read = read_topic_to_end(kafka, &kafka.topics.dlq.name, Duration::from_secs(10), &stop, |m| {
        let kind = m.headers().and_then(|h| h.iter().find(|h| h.key == "vigil.error.kind").and_then(|h| h.value));
        kinds.push(String::from_utf8_lossy(kind.unwrap_or_default()).into_owned());
    });
    if let Err(e) = read {
        eprintln!("reading the DLQ: {e}");
    }
    (results, kinds)
}

/// Polls the outputs until `done` holds for them or `timeout` passes; returns the last read.
async fn wait_for_outputs(
    settings: &Settings,
    timeout: Duration,
    done: impl Fn(&HashSet<String>, &[String]) -> bool,
) -> (HashSet<String>, Vec<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = settings.clone();
        let (results, kinds) = tokio::task::spawn_blocking(move || results_and_dead_letter_kinds(&s)).await.unwrap();
        if done(&results, &kinds) || Instant::now() >= deadline {
            return (results, kinds);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits up to `timeout` for the worker to stop by itself; stops it otherwise. Returns its
/// outcome and whether it stopped by itself.
async fn outcome_within(
    shutdown: &CancellationToken,
    mut task: tokio::task::JoinHandle<Result<DetectorSummary, DetectorError>>,
    timeout: Duration,
) -> (Result<DetectorSummary, DetectorError>, bool) {
    match tokio::time::timeout(timeout, &mut task).await {
        Ok(outcome) => (outcome.unwrap(), true),
        Err(_) => {
            shutdown.cancel();
            (task.await.unwrap(), false)
        }
    }
}

/// A lost device with `max_frame_age_ms` set: while the backend fails, the redone backlog
/// ages past the limit, but it must not be committed as `expired` dead letters (nothing is
/// committed while the backend is down): the worker stops after the limit, as without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_backend_expires_nothing() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let mut settings = settings_for(&broker, Delivery::ExactlyOnce);
    // Fresh when first read (sent once the worker is starting, read within the limit),
    // older than the limit on the redos (backoff 0.2 s, 0.4 s, ... adds up to 6.2 s after
    // the fifth failure), still short of the backend limit.
    settings.detector.backend_failure_limit_ms = 10_000;
    settings.detector.max_frame_age_ms = 4_000;
    let (shutdown, task) = start(&settings, Box::new(BrokenModel::forever())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce_frames(&settings, 0..GOOD, false).await;
    let (outcome, by_itself) = outcome_within(&shutdown, task, Duration::from_secs(40)).await;
    let (results, kinds) = results_and_dead_letter_kinds(&settings);
    assert_eq!((results.len(), kinds.as_slice()), (0, &[][..]), "nothing may be committed: {outcome:?}");
    assert!(by_itself, "the worker must stop by itself after the limit: {outcome:?}");
    assert!(matches!(outcome, Err(DetectorError::BackendUnavailable { .. })), "{outcome:?}");
}

/// A lost device: every model call fails. The worker must not turn the frames into
/// `inference_failed` dead letters and commit them; it commits nothing, retries, and
/// after `detector.backend_failure_limit_ms` stops with an error, so that another worker
/// (here: the next one, with a healthy model) gets every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_backend_commits_nothing_and_stops_the_worker() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let mut settings = settings_for(&broker, Delivery::AtLeastOnce);
    settings.detector.backend_failure_limit_ms = 2_000;
    produce_frames(&settings, 0..GOOD, false).await;
    let started = Instant::now();
    let broken = BrokenModel::forever();
    let (shutdown, task) = start(&settings, Box::new(broken)).await;
    let (outcome, by_itself) = outcome_within(&shutdown, task, Duration::from_secs(30)).await;
    let stopped_after = started.elapsed();
    let (results, kinds) = results_and_dead_letter_kinds(&settings);
    assert_eq!((results.len(), kinds.as_slice()), (0, &[][..]), "nothing may be committed: {outcome:?}");
    assert!(by_itself, "the worker must stop by itself after the limit: {outcome:?}");
    let err = outcome.expect_err("a worker whose backend stays broken fails");
    assert!(matches!(err, DetectorError::BackendUnavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("detector.backend_failure_limit_ms"), "{err}");
    assert!(stopped_after < Duration::from_secs(20), "{stopped_after:?}");

    let (shutdown, task) = start(&settings, Box::new(FakeModel { calls: 0 })).await;
    let (results, kinds) =
        wait_for_outputs(&settings, Duration::from_secs(60), |results, _| results.len() == GOOD).await;
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!((results.len(), kinds.len()), (GOOD, 0), "{summary:?}");
}

/// A backend that fails for a while and comes back: no frame is dead-lettered, every
/// frame gets its result once the device is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_recovers_loses_no_frame() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let settings = settings_for(&broker, Delivery::ExactlyOnce);
    produce_inputs(&settings).await;
    let flaky = BrokenModel::for_a_while(Duration::from_secs(2));
    let health = Health::new();
    let (shutdown, task) = start_with(&settings, Box::new(flaky), health.clone()).await;
    // What the worker said while the backend was down.
    let watcher = tokio::spawn({
        let health = health.clone();
        async move {
            loop {
                if let Some(reason) = health.reason().filter(|r| r.contains("model backend failing")) {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let (results, kinds) = wait_for_outputs(&settings, Duration::from_secs(60), |results, kinds| {
        results.len() == GOOD && !kinds.is_empty()
    })
    .await;
    assert!(health.is_ready(), "ready again: {:?}", health.reason());
    let reason = tokio::time::timeout(Duration::from_secs(1), watcher).await.expect("was not ready meanwhile").unwrap();
    assert!(reason.contains("device lost"), "{reason}");
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    assert!(!health.is_ready(), "not ready once stopped");
    assert_eq!((results.len(), kinds.as_slice()), (GOOD, &["not_avro".to_owned()][..]), "{summary:?}");
    assert_eq!((summary.results, summary.dead_letters), (GOOD as u64, 1), "{summary:?}");
}

/// A model whose forward pass panics on one frame: that frame alone is dead-lettered as
/// `inference_failed`, the others get results, and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_forward_pass_fails_only_its_frame() {
    good_frames_and_one_red(Box::new(PanickingModel { inner: FakeModel { calls: 0 } })).await;
}

/// A frame of a marked kind fails in the model every time, alone or not (a model bug
/// that one input triggers): it alone is `inference_failed`; the backend is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_fails_alone_is_its_own_dead_letter() {
    good_frames_and_one_red(Box::new(FakeModel { calls: 0 })).await;
}

/// Runs `model` (which fails on the red frame) over GOOD frames and one red one: GOOD
/// results, the red frame alone `inference_failed`, and the worker still running.
async fn good_frames_and_one_red(model: Box<dyn crate::model::Detector>) {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let settings = settings_for(&broker, Delivery::ExactlyOnce);
    produce_frames(&settings, 0..GOOD, false).await;
    let producer: FutureProducer = idempotent_producer_config(&settings.kafka).create().unwrap();
    let red = frame_bytes("red", png(8, 8, [255, 0, 0]));
    let images = &settings.kafka.topics.images.name;
    producer.send(FutureRecord::to(images).key("cam-0").payload(&red), Duration::from_secs(10)).await.unwrap();
    let (shutdown, task) = start(&settings, model).await;
    let (results, kinds) = wait_for_outputs(&settings, Duration::from_secs(60), |results, kinds| {
        results.len() == GOOD && !kinds.is_empty()
    })
    .await;
    assert!(!task.is_finished(), "the worker goes on");
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!((results.len(), kinds.as_slice()), (GOOD, &["inference_failed".to_owned()][..]), "{summary:?}");
}

/// A batch whose commit fails is redone by seeking back to its first offsets. If that
/// seek fails, the consumer's position stays past the batch: the worker must not go on
/// (its next commit would skip the batch for good) but stop, so that the partitions'
/// next owner starts from the committed offsets and every frame gets its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_seek_stops_the_worker_instead_of_skipping_records() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let settings = settings_for(&broker, Delivery::AtLeastOnce);
    produce_inputs(&settings).await;
    // The first delivery fails (the batch is redone), and so does the seek back.
    broker.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]);
    super::batch_loop::seek_faults::fail_next(&settings.kafka.topics.images.name);
    let (shutdown, task) = start(&settings, Box::new(FakeModel { calls: 0 })).await;
    let (outcome, by_itself) = outcome_within(&shutdown, task, Duration::from_secs(15)).await;
    assert!(by_itself, "the worker must stop after a failed seek: {outcome:?}");
    let err = outcome.expect_err("a failed seek stops the worker");
    assert!(matches!(err, DetectorError::Seek { .. }), "{err:?}");
    assert!(err.to_string().contains("seek"), "{err}");

    let (shutdown, task) = start(&settings, Box::new(FakeModel { calls: 0 })).await;
    let (results, kinds) = wait_for_outputs(&settings, Duration::from_secs(30), |results, kinds| {
        results.len() == GOOD && !kinds.is_empty()
    })
    .await;
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    assert_eq!((results.len(), kinds.len()), (GOOD, 1), "no frame skipped: {summary:?}");
}

/// SIGTERM while the broker is gone: the batch in flight can neither commit nor abort,
/// and the consumer cannot leave the group. The worker must still return within
/// `detector.shutdown_timeout_ms` (plus a little), with an error saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_the_broker_is_gone() {
    shutdown_with_the_broker_gone(Delivery::ExactlyOnce).await;
}

/// The same in at-least-once mode, whose offset commit is a consumer call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_the_broker_is_gone_at_least_once() {
    shutdown_with_the_broker_gone(Delivery::AtLeastOnce).await;
}

async fn shutdown_with_the_broker_gone(delivery: Delivery) {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let mut settings = settings_for(&broker, delivery);
    settings.detector.shutdown_timeout_ms = 2_000;
    produce_inputs(&settings).await;
    // Each batch takes 5 s in the model: the next one enters it as soon as the first
    // commits, so at the cancel below (a second or two later) a batch is in the model, and
    // the drain cannot end before the 2 s deadline.
    let slow = SlowModel { delay: Duration::from_secs(5), inner: FakeModel { calls: 0 } };
    let (shutdown, task) = start(&settings, Box::new(slow)).await;
    wait_for_outputs(&settings, Duration::from_secs(60), |results, _| !results.is_empty()).await;
    broker.broker_down(-1).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    shutdown.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(60), task).await;
    let took = asked.elapsed();
    eprintln!("shutdown with the broker gone took {took:?}");
    assert!(took < Duration::from_millis(2_000 + 3_000), "took {took:?}: {outcome:?}");
    let err = outcome.expect("returned").unwrap().expect_err("not a clean drain");
    assert!(matches!(err, DetectorError::ShutdownTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("detector.shutdown_timeout_ms"), "{err}");
}

/// A frame alone is not held back for the batch window (60 s here): the consumer has
/// nothing more to give, so its batch goes to the free model at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_frame_does_not_wait_out_the_batch_window() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let mut settings = settings_for(&broker, Delivery::ExactlyOnce);
    settings.detector.max_wait_ms = 60_000;
    settings.detector.transaction_timeout_ms = 90_000;
    let (shutdown, task) = start(&settings, Box::new(FakeModel { calls: 0 })).await;
    produce_frames(&settings, 0..2, false).await;
    let (results, _) = wait_for_outputs(&settings, Duration::from_secs(30), |r, _| r.len() == 2).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(results.len(), 2, "both frames were processed well within the 60 s window");
}
