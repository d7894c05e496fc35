//! The audit end to end, in process: the in-memory broker, real topics, a real SQLite
//! database.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::{read_topic_to_end, run as verify, VerifyOptions};
use crate::codec::{dlq, DetectionResult, Frame};
use crate::kafka::DevBroker;
use crate::producer::{self, ProduceRequest};
use crate::settings::Settings;
use crate::sink::store::{self, Batch, DetectionRow, PartitionOffset};

fn options(topics_exact: bool) -> VerifyOptions {
    VerifyOptions { timeout: Duration::from_secs(10), topics_exact }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_topics_and_database() {
    let (_broker, mut settings, db_path) = dev_pipeline(2);

    settings.producer.source_id = "cam-v".into();
    let request = ProduceRequest { synthetic: 5, ..Default::default() };
    let summary = producer::run(&settings, &request, CancellationToken::new()).await.unwrap();
    assert_eq!(summary.delivered, 5);
    // The frames' ids, read back from `images` (any order will do).
    let kafka = settings.kafka.clone();
    let ids = tokio::task::spawn_blocking(move || {
        let mut ids = Vec::new();
        let images = &kafka.topics.images.name;
        read_topic_to_end(&kafka, images, Duration::from_secs(10), &CancellationToken::new(), |m| {
            ids.push(Frame::decode(m.payload().unwrap()).unwrap().frame_id)
        })
        .unwrap();
        ids
    })
    .await
    .unwrap();
    assert_eq!(ids.len(), 5);

    // Results for the first four frames (the second one twice: a redelivery), and a
    // dead letter for the fifth.
    let producer: FutureProducer = crate::kafka::client_config(&settings.kafka).create().unwrap();
    let topics = &settings.kafka.topics;
    let frame = |i: usize| Frame { frame_id: ids[i].clone(), ..test_frame(i as i64) };
    for i in [0, 1, 1, 2, 3] {
        send(&producer, &topics.detections.name, &test_result(&frame(i), 0, i as i64).encode().unwrap(), None).await;
    }
    let fifth = Frame { data: b"not an image".to_vec(), ..frame(4) };
    send(&producer, &topics.dlq.name, &fifth.encode().unwrap(), Some(dead_letter_headers(0, 4))).await;

    let row = |i: usize| test_row(&frame(i), 0, i as i64);
    let write = |rows: Vec<DetectionRow>, next: i64| store_rows(&settings, rows, next);
    write(vec![row(0), row(1), row(2)], 3);

    let report = verify(&settings, &options(false), CancellationToken::new()).await.unwrap();
    assert_eq!((report.frames, report.results, report.rows, report.dlq), (5, 4, 3, 1), "{report:?}");
    assert_eq!((report.missing, report.duplicates, report.unexpected), (1, 0, 0), "{report:?}");
    assert_eq!(report.missing_sample, [ids[3].clone()]);
    assert_eq!(report.topics.detections_redelivered, 1);
    assert!(!report.exact);

    write(vec![row(3)], 4);
    let report = verify(&settings, &options(false), CancellationToken::new()).await.unwrap();
    assert!(report.exact, "{report:?}");

    // The fifth frame both dead-lettered and stored: a duplicate outcome.
    write(vec![row(4)], 5);
    let report = verify(&settings, &options(false), CancellationToken::new()).await.unwrap();
    assert_eq!(report.duplicates, 1, "{report:?}");
    assert!(!report.exact);
    // Best effort: the file is in the temporary directory.
    std::fs::remove_file(&db_path).ok();
}

/// A fresh broker with topics of their own (`partitions` each), and a SQLite path for them.
fn dev_pipeline(partitions: i32) -> (DevBroker, Settings, std::path::PathBuf) {
    let broker = DevBroker::start(1).unwrap();
    let mut settings = Settings::default();
    settings.kafka.bootstrap_servers = broker.bootstrap_servers().to_string();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    settings.kafka.topics.images.name = format!("images-{suffix}");
    settings.kafka.topics.detections.name = format!("detections-{suffix}");
    settings.kafka.topics.dlq.name = format!("dlq-{suffix}");
    for t in settings.kafka.topics.all() {
        broker.create_topic(&crate::kafka::TopicConfig { partitions, ..t.clone() }).unwrap();
    }
    let db_path = std::env::temp_dir().join(format!("vigil-verify-{suffix}.sqlite"));
    settings.sink.database_url = format!("sqlite://{}", db_path.display());
    (broker, settings, db_path)
}

async fn send(producer: &FutureProducer, topic: &str, payload: &[u8], headers: Option<OwnedHeaders>) {
    let mut record = FutureRecord::to(topic).key("cam-v").payload(payload);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    producer.send(record, Duration::from_secs(5)).await.unwrap();
}

fn dead_letter_headers(partition: i32, offset: i64) -> OwnedHeaders {
    dead_letter_headers_of("bad_image", partition, offset)
}

fn dead_letter_headers_of(kind: &str, partition: i32, offset: i64) -> OwnedHeaders {
    dlq::error_headers(kind, "test", partition, offset)
        .iter()
        .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_str()) }))
}

fn test_frame(i: i64) -> Frame {
    Frame {
        frame_id: uuid::Uuid::new_v4().to_string(),
        source: "cam-v".into(),
        seq: i,
        captured_at_us: 0,
        encoding: Default::default(),
        width: None,
        height: None,
        data: vec![i as u8; 16],
        attributes: Default::default(),
        session: None,
    }
}

fn test_result(frame: &Frame, partition: i32, offset: i64) -> DetectionResult {
    DetectionResult {
        frame_id: frame.frame_id.clone(),
        source: frame.source.clone(),
        seq: frame.seq,
        captured_at_us: 1,
        width: 320,
        height: 240,
        model_name: "m".into(),
        model_version: "v".into(),
        detections: vec![],
        processed_at_us: 2,
        batch_size: 1,
        inference_ms: 1.0,
        source_partition: partition,
        source_offset: offset,
    }
}

fn test_row(frame: &Frame, partition: i32, offset: i64) -> DetectionRow {
    DetectionRow {
        frame_id: frame.frame_id.clone(),
        source: frame.source.clone(),
        seq: frame.seq,
        captured_at_us: 1,
        width: 320,
        height: 240,
        model_name: "m".into(),
        model_version: "v".into(),
        detection_count: 0,
        detections_json: "[]".into(),
        processed_at_us: 2,
        batch_size: 1,
        inference_us: 1000,
        source_partition: partition,
        source_offset: offset,
        result_partition: 0,
        result_offset: offset,
    }
}

fn store_rows(settings: &Settings, rows: Vec<DetectionRow>, next: i64) {
    let mut db = store::open(&settings.sink.database_url).unwrap();
    db.write_batch(&Batch {
        group_id: "g".into(),
        topic: settings.kafka.topics.detections.name.clone(),
        rows,
        rejects: vec![],
        dead_letters: Vec::new(),
        offsets: vec![PartitionOffset { partition: 0, next_offset: next }],
    })
    .unwrap();
}

/// A second committed result (or dead letter) for one `images` record is a topic
/// duplicate; a frame sent twice on purpose (one `frame_id` in two `images` records, each
/// with its own result) is an input resend, not a duplicate. Neither fails the default
/// verdict: the database holds one outcome per frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_topic_duplicates_apart_from_input_resends() {
    let (_broker, settings, db_path) = dev_pipeline(1);
    let topics = &settings.kafka.topics;
    let producer: FutureProducer = crate::kafka::client_config(&settings.kafka).create().unwrap();
    let frames: Vec<Frame> = (0..3).map(test_frame).collect();
    // images offsets 0, 1, 2, 3: the third frame is sent twice.
    for f in [&frames[0], &frames[1], &frames[2], &frames[2]] {
        send(&producer, &topics.images.name, &f.encode().unwrap(), None).await;
    }
    // Frame 0: two results for images 0/0 (a redelivery). Frame 1: two dead letters for
    // 0/1. Frame 2: one result per images record (0/2 and 0/3).
    for (frame, offset) in [(&frames[0], 0), (&frames[0], 0), (&frames[2], 2), (&frames[2], 3)] {
        send(&producer, &topics.detections.name, &test_result(frame, 0, offset).encode().unwrap(), None).await;
    }
    for _ in 0..2 {
        let letter = frames[1].encode().unwrap();
        send(&producer, &topics.dlq.name, &letter, Some(dead_letter_headers(0, 1))).await;
    }
    store_rows(&settings, vec![test_row(&frames[0], 0, 0), test_row(&frames[2], 0, 2)], 4);

    let report = verify(&settings, &options(false), CancellationToken::new()).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!((report.frames, report.rows, report.dlq, report.duplicates, report.missing), (3, 2, 1, 0, 0), "{json}");
    assert_eq!(json["topic_duplicates"], 2, "{json}");
    assert_eq!(json["input_resends"], 1, "{json}");
    assert_eq!(json["open_transactions"], 0, "{json}");
    assert!(report.exact, "{json}");
    // --topics-exact: the two extra outcomes in the topics fail the verdict.
    let report = verify(&settings, &options(true), CancellationToken::new()).await.unwrap();
    assert_eq!((report.topic_duplicates, report.exact), (2, false), "{report:?}");
    std::fs::remove_file(&db_path).ok();
}

/// librdkafka's mock keeps 5 MiB per partition and deletes older records without a word:
/// frames deleted before anything read them must be reported missing, although no topic
/// holds them any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_deleted_before_they_were_read_are_missing() {
    let (_broker, settings, db_path) = dev_pipeline(1);
    let images = &settings.kafka.topics.images.name;
    let producer: FutureProducer = crate::kafka::client_config(&settings.kafka).create().unwrap();
    // 10 frames of 700 kB into one partition: more than the 5 MiB the mock keeps.
    let sent = 10;
    for i in 0..sent {
        let frame = Frame { data: vec![i as u8; 700_000], ..test_frame(i) };
        send(&producer, images, &frame.encode().unwrap(), None).await;
    }
    // A detector and a sink that only start now find what is left, and store all of it.
    let kafka = settings.kafka.clone();
    let left = tokio::task::spawn_blocking(move || {
        let mut left = Vec::new();
        let images = &kafka.topics.images.name;
        read_topic_to_end(&kafka, images, Duration::from_secs(10), &CancellationToken::new(), |m| {
            left.push((Frame::decode(m.payload().unwrap()).unwrap(), m.offset()))
        })
        .unwrap();
        left
    })
    .await
    .unwrap();
    let lost = sent - left.len() as i64;
    assert!(lost > 0, "the mock kept all {sent} frames: the test no longer reproduces the loss");
    let rows = left.iter().map(|(frame, offset)| test_row(frame, 0, *offset)).collect();
    store_rows(&settings, rows, left.len() as i64);

    let report = verify(&settings, &options(false), CancellationToken::new()).await.unwrap();
    assert_eq!(report.missing, lost as u64, "{report:?}");
    assert_eq!(report.frames, sent as u64, "{report:?}");
    assert!(!report.exact, "{report:?}");
    std::fs::remove_file(&db_path).ok();
}

/// Dead letters are reported by kind, one per frame (a redelivered dead letter counts
/// once), and frames the overload policy dead-lettered (`expired`, `shed`) are accounted
/// for: the run stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_dead_letters_by_kind() {
    let (_broker, settings, db_path) = dev_pipeline(1);
    let topics = &settings.kafka.topics;
    let producer: FutureProducer = crate::kafka::client_config(&settings.kafka).create().unwrap();
    let frames: Vec<Frame> = (0..5).map(test_frame).collect();
    for f in &frames {
        send(&producer, &topics.images.name, &f.encode().unwrap(), None).await;
    }
    send(&producer, &topics.detections.name, &test_result(&frames[0], 0, 0).encode().unwrap(), None).await;
    store_rows(&settings, vec![test_row(&frames[0], 0, 0)], 1);
    // Frames 1 and 2 expired (2 twice: a redelivery), 3 shed, 4 a bad image.
    for (i, kind) in [(1, "expired"), (2, "expired"), (2, "expired"), (3, "shed"), (4, "corrupt_image")] {
        let headers = dead_letter_headers_of(kind, 0, i as i64);
        send(&producer, &topics.dlq.name, &frames[i].encode().unwrap(), Some(headers)).await;
    }

    let report = verify(&settings, &options(false), CancellationToken::new()).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!((report.frames, report.rows, report.dlq, report.missing), (5, 1, 4, 0), "{json}");
    assert_eq!(
        json["dead_letters_by_kind"],
        serde_json::json!({"corrupt_image": 1, "expired": 2, "shed": 1}),
        "{json}"
    );
    assert!(report.exact, "{json}");
    std::fs::remove_file(&db_path).ok();
}
