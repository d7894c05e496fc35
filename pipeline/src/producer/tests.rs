//! The producer against the in-memory broker, whose partitions keep only 5 MiB.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{run, ProduceRequest};
use crate::codec::Frame;
use crate::kafka::{consumer_config, DevBroker, TopicConfig};
use crate::settings::Settings;

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
