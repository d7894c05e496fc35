//! The producer against the in-memory broker: its partitions keep only 5 MiB, a rerun
//! after a crash sends the same frame ids, and a send error is reported, not dropped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{run, ProduceRequest};
use crate::codec::Frame;
use crate::kafka::{consumer_config, DevBroker, TopicConfig};
use crate::settings::Settings;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// A detector stand-in: after `delay`, reads `topic` partition 0 from the start in group
/// `group`, committing after each record, until it has `want` frames or 20 s passed;
/// returns the sequence numbers it saw.
fn slow_detector(settings: &Settings, group: &str, delay: Duration, want: usize) -> BTreeSet<i64> {
    std::thread::sleep(delay);
    let consumer: BaseConsumer = consumer_config(&settings.kafka, group, 6000).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&settings.kafka.topics.images.name, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut seqs = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seqs.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            seqs.insert(Frame::decode(m.payload().unwrap()).unwrap().seq);
            consumer.commit_message(&m, CommitMode::Sync).unwrap();
        }
    }
    seqs
}

/// Ten frames of 700 kB into one partition (more than the 5 MiB the mock keeps) while the
/// detectors start late: none may be deleted before the detector group has read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_loses_no_frame_to_its_size_cap() {
    let broker = DevBroker::start(1).unwrap();
    let mut settings = Settings::default();
    settings.kafka.bootstrap_servers = broker.bootstrap_servers().to_string();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    settings.kafka.topics.images.name = format!("images-{suffix}");
    settings.detector.group_id = format!("detector-{suffix}");
    broker.create_topic(&TopicConfig { partitions: 1, ..settings.kafka.topics.images.clone() }).unwrap();
    let file = std::env::temp_dir().join(format!("vigil-frame-{suffix}.bin"));
    std::fs::write(&file, vec![7u8; 700_000]).unwrap();

    let sent = 10;
    let detector = {
        let settings = settings.clone();
        let group = settings.detector.group_id.clone();
        std::thread::spawn(move || slow_detector(&settings, &group, Duration::from_millis(1500), sent))
    };
    let request =
        ProduceRequest { paths: vec![file.clone()], repeat: true, count: Some(sent as u64), ..Default::default() };
    let summary = run(&settings, &request, CancellationToken::new()).await.unwrap();
    assert_eq!(summary.delivered, sent as u64);
    let seen = detector.join().unwrap();
    assert_eq!(seen, (0..sent as i64).collect::<BTreeSet<_>>(), "frames the detector group never saw");
    std::fs::remove_file(&file).ok();
}

/// A broker with a one-partition `images` topic, and settings that point at it.
fn broker_and_settings() -> (DevBroker, Settings) {
    let broker = DevBroker::start(1).unwrap();
    let mut settings = Settings::default();
    settings.kafka.bootstrap_servers = broker.bootstrap_servers().to_string();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    settings.kafka.topics.images.name = format!("images-{suffix}");
    broker.create_topic(&TopicConfig { partitions: 1, ..settings.kafka.topics.images.clone() }).unwrap();
    (broker, settings)
}

/// Every frame in `images`, in offset order.
fn frames_in_topic(settings: &Settings) -> Vec<Frame> {
    let mut frames = Vec::new();
    let stop = CancellationToken::new();
    crate::verify::read_topic_to_end(
        &settings.kafka,
        &settings.kafka.topics.images.name,
        Duration::from_secs(10),
        &stop,
        |m| frames.push(Frame::decode(m.payload().unwrap()).unwrap()),
    )
    .unwrap();
    frames
}

/// A directory of seven files: five different ones, and two with the same bytes at
/// different paths (a static camera's identical frames, which must stay two frames).
fn seven_files() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-rerun-{}", uuid::Uuid::new_v4()));
    for sub in ["x", "y"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("same.jpg"), super::inputs::synthetic_jpeg(99)).unwrap();
    }
    for i in 0..5 {
        std::fs::write(dir.join(format!("{i}.jpg")), super::inputs::synthetic_jpeg(i)).unwrap();
    }
    dir
}

/// Rerunning the same command after a crash (here: a first run that stopped after 3
/// frames) sends the same frame ids, with the same `seq`, so downstream stores each frame
/// once; identical bytes at two paths stay two frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_sends_the_same_frame_ids() {
    let (_broker, settings) = broker_and_settings();
    let dir = seven_files();
    let cut_short = ProduceRequest { paths: vec![dir.clone()], count: Some(3), ..Default::default() };
    assert_eq!(run(&settings, &cut_short, CancellationToken::new()).await.unwrap().delivered, 3);
    let rerun = ProduceRequest { paths: vec![dir.clone()], ..Default::default() };
    assert_eq!(run(&settings, &rerun, CancellationToken::new()).await.unwrap().delivered, 7);

    let frames = frames_in_topic(&settings);
    assert_eq!(frames.len(), 10);
    let ids: HashSet<&str> = frames.iter().map(|f| f.frame_id.as_str()).collect();
    assert_eq!(ids.len(), 7, "distinct frame ids over both runs: the rerun must resend the first 3, not add new ones");
    let (first, second) = frames.split_at(3);
    for (a, b) in first.iter().zip(second) {
        assert_eq!((&a.frame_id, a.seq, &a.attributes["file"]), (&b.frame_id, b.seq, &b.attributes["file"]));
        assert_ne!(a.session, b.session, "each run is a producer session of its own");
    }
    let seqs: Vec<i64> = second.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (0..7).collect::<Vec<_>>(), "seq is the file's position in sorted order");
    let by_file: HashMap<&str, &str> =
        second.iter().map(|f| (f.attributes["file"].as_str(), f.frame_id.as_str())).collect();
    let same = |sub: &str| dir.join(sub).join("same.jpg").display().to_string();
    assert_ne!(by_file[same("x").as_str()], by_file[same("y").as_str()], "identical bytes at two paths");
    std::fs::remove_dir_all(&dir).ok();
}

/// A send error that is not a full queue (here the idempotent producer's fatal error
/// after an out-of-order sequence) stops the run, but every frame already handed to the
/// producer is settled and counted: the summary accounts for all of them and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_error_is_reported_with_every_frame_accounted_for() {
    let (broker, mut settings) = broker_and_settings();
    settings.producer.delivery_timeout_ms = 5000;
    broker.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 3]);
    let request = ProduceRequest { synthetic: 20, ..Default::default() };
    let summary = run(&settings, &request, CancellationToken::new())
        .await
        .expect("a send error is reported in the summary, after the queued frames are settled");
    let in_topic = frames_in_topic(&settings).len() as u64;
    assert_eq!(summary.delivered, in_topic, "{summary:?}");
    assert!(summary.failed >= 1, "{summary:?}");
    assert_eq!(summary.delivered + summary.failed + summary.unsent, 20, "every frame accounted for: {summary:?}");
    let error = summary.check().unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "{} of {} frames were not delivered",
            summary.failed,
            summary.failed + summary.delivered
        )),
        "{error}"
    );
    assert!(error.contains("cam-0 #"), "names the frames: {error}");
}

/// A library caller's input that breaks the input contract is refused alone, without a
/// `seq` (no gap for `vigil verify`), and the frames after it still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_breaking_the_contract_is_refused_alone() {
    use super::inputs::{synthetic_frame, FrameInput};
    use super::publish::{produce_frames, ProduceOptions};
    let (_broker, settings) = broker_and_settings();
    let bad = FrameInput { source: "cam\u{0}".into(), ..synthetic_frame("cam-0", 1) };
    let inputs: Vec<Result<FrameInput, super::ProducerError>> =
        vec![Ok(synthetic_frame("cam-0", 0)), Ok(bad), Ok(synthetic_frame("cam-0", 2))];
    let summary = produce_frames(&settings, inputs, ProduceOptions::default(), CancellationToken::new())
        .await
        .expect("the bad input is counted, not an error that drops the others");
    assert_eq!((summary.delivered, summary.failed), (2, 1), "{summary:?}");
    assert!(summary.first_error.as_deref().is_some_and(|e| e.contains("control character")), "{summary:?}");
    let seqs: Vec<i64> = frames_in_topic(&settings).iter().map(|f| f.seq).collect();
    assert_eq!(seqs, [0, 1]);
}
