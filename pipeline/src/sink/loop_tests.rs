//! The sink loop's batch handling (`flush`) against real databases: what it stores after a
//! revocation, when the database refuses a row, and when it loses its connection. Kafka
//! is the in-memory broker where a rebalance matters, and an unreachable address where
//! only the loop's bookkeeping does (the lag-monitoring commit then fails harmlessly).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::consumer::SinkContext;
use super::db::DbWorker;
use super::store::{self, StoreStats};
use super::{SinkLoop, SinkSummary};
use crate::codec::DetectionResult;
use crate::kafka::{client_config, consumer_config, DevBroker, KafkaConfig, TopicConfig};

const GROUP: &str = "sink-test";

/// A result for `frame_id` from `source`.
pub(super) fn result(frame_id: &str, source: &str) -> DetectionResult {
    DetectionResult {
        frame_id: frame_id.into(),
        source: source.into(),
        seq: 1,
        captured_at_us: 10,
        width: 640,
        height: 480,
        model_name: "nanodet-g".into(),
        model_version: "v".into(),
        detections: vec![],
        processed_at_us: 20,
        batch_size: 1,
        inference_ms: 1.0,
        source_partition: 0,
        source_offset: 0,
    }
}

/// A consumer of `topic` on `kafka` with the sink's context over `db`.
fn consumer(kafka: &KafkaConfig, db: &Arc<DbWorker>, topic: &str) -> StreamConsumer<SinkContext> {
    consumer_config(kafka, GROUP, 6_000).create_with_context(SinkContext::new(db.clone(), GROUP, topic)).unwrap()
}

fn sink_loop<'a>(db: &'a DbWorker, consumer: &'a StreamConsumer<SinkContext>, topic: &str) -> SinkLoop<'a> {
    SinkLoop {
        db,
        consumer,
        group_id: GROUP.into(),
        topic: topic.into(),
        pending: Vec::new(),
        observer: None,
        summary: SinkSummary::default(),
    }
}

/// Stats and offsets of the database at `url`, read through a connection of its own.
fn stored(url: &str, topic: &str) -> (StoreStats, std::collections::HashMap<i32, i64>) {
    let mut db = store::open(url).unwrap();
    (db.stats().unwrap(), db.load_offsets(GROUP, topic).unwrap())
}

/// A fresh SQLite file.
fn sqlite_url(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("vigil-sink-loop-{name}-{}", uuid::Uuid::new_v4())).join("db.sqlite");
    format!("sqlite://{}", path.display())
}

/// Records read before a revocation belong to the partition's next owner, which reads
/// them again from the stored offset: the sink must not store them (nor their offsets)
/// after the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_revoked_partitions_are_not_stored() {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let kafka = KafkaConfig { bootstrap_servers: broker.bootstrap_servers().into(), ..KafkaConfig::default() };
    let topic = format!("detections-{}", uuid::Uuid::new_v4().simple());
    broker.create_topic(&TopicConfig { name: topic.clone(), partitions: 2, replication_factor: 1 }).unwrap();
    let producer: FutureProducer = client_config(&kafka).create().unwrap();
    for i in 0..4 {
        let value = result(&format!("f{i}"), "cam").encode().unwrap();
        producer
            .send(FutureRecord::<(), _>::to(&topic).partition(i % 2).payload(&value), Duration::from_secs(5))
            .await
            .unwrap();
    }

    let url = sqlite_url("revoked");
    let db = Arc::new(DbWorker::start(&url).await.unwrap());
    let consumer = consumer(&kafka, &db, &topic);
    consumer.subscribe(&[&topic]).unwrap();
    let mut sink = sink_loop(&db, &consumer, &topic);
    while sink.pending.len() < 4 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
        sink.pending.push(sink.read(&message));
    }
    // Leaving the group revokes both partitions; the callback runs inside a poll.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumer.assignment().unwrap().count() > 0 && Instant::now() < deadline {
        tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await.ok();
    }
    assert_eq!(consumer.assignment().unwrap().count(), 0, "the partitions were not revoked");

    sink.flush(&CancellationToken::new()).await.unwrap();
    let (stats, offsets) = stored(&url, &topic);
    assert_eq!(stats.rows, 0, "rows of revoked partitions were stored");
    assert!(offsets.is_empty(), "offsets of revoked partitions were stored: {offsets:?}");
}
