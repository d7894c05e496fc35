//! The sink loop's batch handling (`flush`) against real databases: what it stores after a
//! revocation, when the database refuses a row, and when it loses its connection. Kafka
//! is the in-memory broker where a rebalance matters, and an unreachable address where
//! only the loop's bookkeeping does (the lag-monitoring commit then fails harmlessly).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::consumer::SinkContext;
use super::db::DbWorker;
use super::store::{self, StoreStats};
use super::{to_row, IdleCheck, Item, Pending, Reads, SinkError, SinkLoop, SinkSummary, IDLE_CHECK_EVERY};
use crate::codec::DetectionResult;
use crate::health::Health;
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

/// The record the sink would have read for `result` at `partition`/`offset`.
fn pending(result: DetectionResult, partition: i32, offset: i64) -> Pending {
    Pending {
        partition,
        offset,
        item: Item::Row {
            row: to_row(&result, partition, offset),
            payload: result.encode().unwrap(),
            result: Box::new(result),
        },
        trace: Context::new(),
    }
}

/// A consumer of `topic` on `kafka` with the sink's context over `db`.
fn consumer(kafka: &KafkaConfig, db: &Arc<DbWorker>, topic: &str) -> StreamConsumer<SinkContext> {
    consumer_config(kafka, GROUP, 6_000)
        .create_with_context(SinkContext::new(db.clone(), GROUP, topic, Health::new()))
        .unwrap()
}

/// A consumer that never reaches a broker: for tests of the database side only.
fn offline_consumer(db: &Arc<DbWorker>, topic: &str) -> StreamConsumer<SinkContext> {
    let kafka = KafkaConfig { bootstrap_servers: "127.0.0.1:9".into(), ..KafkaConfig::default() };
    consumer(&kafka, db, topic)
}

fn sink_loop<'a>(db: &'a DbWorker, consumer: &'a StreamConsumer<SinkContext>, topic: &str) -> SinkLoop<'a> {
    SinkLoop {
        reads: Reads::Results,
        db,
        consumer,
        group_id: GROUP.into(),
        topic: topic.into(),
        pending: Vec::new(),
        observer: None,
        summary: SinkSummary::default(),
        db_outage_limit: Duration::from_secs(60),
        health: Health::new(),
        idle_check: IdleCheck::default(),
    }
}

/// Stats and offsets of the database at `url`, read through a connection of its own
/// (off the runtime: the `postgres` crate runs one of its own).
fn stored(url: &str, topic: &str) -> (StoreStats, HashMap<i32, i64>) {
    tokio::task::block_in_place(|| {
        let mut db = store::open(url).unwrap();
        (db.stats().unwrap(), db.load_offsets(GROUP, topic).unwrap())
    })
}

/// A fresh schema in the database named by `VIGIL_TEST_DATABASE_URL`, dropped with the
/// value; `None`, with a message, when that is not set.
pub(super) struct PgSchema {
    admin: Option<postgres::Client>,
    name: String,
    /// A URL whose sessions use the schema and carry a unique `application_name`.
    pub(super) url: String,
    pub(super) application_name: String,
}

impl PgSchema {
    pub(super) fn create() -> Option<PgSchema> {
        let Ok(base) = std::env::var("VIGIL_TEST_DATABASE_URL") else {
            eprintln!("skipped: VIGIL_TEST_DATABASE_URL is not set (e.g. postgres://127.0.0.1:5432/test)");
            return None;
        };
        tokio::task::block_in_place(|| {
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            let name = format!("vigil_sink_{suffix}");
            let mut admin =
                postgres::Client::connect(&base, postgres::NoTls).expect("connect to VIGIL_TEST_DATABASE_URL");
            admin.batch_execute(&format!("CREATE SCHEMA {name}")).unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            let application_name = format!("vigil-sink-test-{suffix}");
            let url = format!("{base}{sep}options=-csearch_path%3D{name}&application_name={application_name}");
            Some(PgSchema { admin: Some(admin), name, url, application_name })
        })
    }
}

impl PgSchema {
    /// Ends the sessions that carry our `application_name`, as a database restart or a
    /// network cut would, and waits until they are gone; returns how many there were.
    pub(super) fn kill_sessions(&mut self) -> usize {
        let admin = self.admin.as_mut().expect("the admin session lives until drop");
        let sessions = "FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()";
        tokio::task::block_in_place(|| {
            let killed = admin
                .query(&format!("SELECT pg_terminate_backend(pid) {sessions}"), &[&self.application_name])
                .unwrap()
                .len();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let left: i64 =
                    admin.query_one(&format!("SELECT COUNT(*) {sessions}"), &[&self.application_name]).unwrap().get(0);
                if left == 0 {
                    return killed;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("the terminated sessions did not go away");
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA {} CASCADE", self.name);
        let Some(mut admin) = self.admin.take() else { return };
        // Best effort: a leftover schema only costs space in a test database. The client
        // drops here too, off the runtime.
        tokio::task::block_in_place(move || admin.batch_execute(&sql).ok());
    }
}

/// Flushes `results` (partition 0, offsets 0..) through a sink on `url` and checks that the
/// `refused` ones went to `sink_rejects` while the others were stored, all offsets
/// committed; then flushes them again (a redelivery) and checks nothing doubled.
async fn refused_rows_become_rejects(url: &str, results: Vec<DetectionResult>, refused: u64) {
    let topic = "detections";
    let n = results.len() as u64;
    let db = Arc::new(DbWorker::start(url).await.unwrap());
    let consumer = offline_consumer(&db, topic);
    let mut sink = sink_loop(&db, &consumer, topic);
    for round in 0..2 {
        sink.pending = results.iter().cloned().enumerate().map(|(i, r)| pending(r, 0, i as i64)).collect();
        sink.flush(&CancellationToken::new()).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        let (stats, offsets) = stored(url, topic);
        assert_eq!((stats.rows, stats.rejects), (n - refused, refused), "round {round}");
        assert_eq!(offsets, HashMap::from([(0, n as i64)]), "round {round}");
    }
    assert_eq!((sink.summary.inserted, sink.summary.rejected), (n - refused, refused));
}

/// A row SQLite refuses (here a trigger a DBA added; any constraint works the same) is set
/// aside in `sink_rejects` with its batch's offsets instead of failing the batch forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_sqlite_refuses_go_to_sink_rejects() {
    let url = sqlite_url("refused");
    drop(DbWorker::start(&url).await.unwrap());
    let path = url.strip_prefix("sqlite://").unwrap();
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON detections WHEN NEW.frame_id = 'bad'
             BEGIN SELECT RAISE(ABORT, 'frame refused'); END;",
        )
        .unwrap();
    let results = vec![result("good-1", "cam"), result("bad", "cam"), result("good-2", "cam")];
    refused_rows_become_rejects(&url, results, 1).await;
}

/// Valid frames PostgreSQL cannot store: U+0000 in an id or a source (TEXT refuses it,
/// SQLSTATE 22021) and a source longer than a btree index entry may be (54000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_postgres_refuses_go_to_sink_rejects() {
    let Some(schema) = PgSchema::create() else { return };
    // Random hex does not compress below the index entry limit (about 2.7 kB).
    let long_source: String = (0..300).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    let results = vec![
        result("good-1", "cam"),
        result("bad\u{0}id", "cam"),
        result("nul-source", "cam\u{0}"),
        result("long-source", &long_source),
        result("good-2", "cam"),
    ];
    refused_rows_become_rejects(&schema.url, results, 3).await;
}

/// A fresh SQLite file.
fn sqlite_url(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("vigil-sink-loop-{name}-{}", uuid::Uuid::new_v4())).join("db.sqlite");
    format!("sqlite://{}", path.display())
}

/// A fresh in-memory broker (groups form without delay) with a `detections` topic of
/// `partitions`: the broker (keep it alive), its client settings and the topic's name.
fn broker_with_topic(partitions: i32) -> (DevBroker, KafkaConfig, String) {
    let broker = DevBroker::start(1).unwrap();
    broker.group_initial_rebalance_delay(Duration::ZERO);
    let kafka = KafkaConfig { bootstrap_servers: broker.bootstrap_servers().into(), ..KafkaConfig::default() };
    let topic = format!("detections-{}", uuid::Uuid::new_v4().simple());
    broker.create_topic(&TopicConfig { name: topic.clone(), partitions, replication_factor: 1 }).unwrap();
    (broker, kafka, topic)
}

/// Sends the result of frame `f{i}` to `partition` of `topic`.
async fn send_result(producer: &FutureProducer, topic: &str, i: usize, partition: i32) {
    let value = result(&format!("f{i}"), "cam").encode().unwrap();
    producer
        .send(FutureRecord::<(), _>::to(topic).partition(partition).payload(&value), Duration::from_secs(5))
        .await
        .unwrap();
}

/// Records read before a revocation belong to the partition's next owner, which reads
/// them again from the stored offset: the sink must not store them (nor their offsets)
/// after the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_revoked_partitions_are_not_stored() {
    let (_broker, kafka, topic) = broker_with_topic(2);
    let producer: FutureProducer = client_config(&kafka).create().unwrap();
    for i in 0..4 {
        send_result(&producer, &topic, i, (i % 2) as i32).await;
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

/// The sink's database session is killed between two batches (a database restart, a
/// failover, a cut connection): the next batch must be stored through a new connection,
/// and every batch exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_losing_the_database_connection() {
    let Some(mut schema) = PgSchema::create() else { return };
    let topic = "detections";
    let db = Arc::new(DbWorker::start(&schema.url).await.unwrap());
    let consumer = offline_consumer(&db, topic);
    let mut sink = sink_loop(&db, &consumer, topic);
    let batch = |offsets: std::ops::Range<i64>| -> Vec<Pending> {
        offsets.map(|o| pending(result(&format!("f{o}"), "cam"), 0, o)).collect()
    };
    sink.pending = batch(0..3);
    sink.flush(&CancellationToken::new()).await.unwrap();
    for (round, offsets) in [(1, 3..6), (2, 6..9)] {
        assert_eq!(schema.kill_sessions(), 1, "round {round}: the sink's session");
        sink.pending = batch(offsets.clone());
        tokio::time::timeout(Duration::from_secs(30), sink.flush(&CancellationToken::new()))
            .await
            .unwrap_or_else(|_| panic!("round {round}: still retrying after 30 s"))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let (stats, offsets_stored) = stored(&schema.url, topic);
        assert_eq!((stats.rows, stats.distinct_frames), (offsets.end as u64, offsets.end as u64), "round {round}");
        assert_eq!(offsets_stored, HashMap::from([(0, offsets.end)]), "round {round}");
        // Not ready from the lost connection on, ready again once a write went through
        // (the helper's sink starts not ready: only the recovery made it ready).
        assert!(sink.health.is_ready(), "round {round}: {:?}", sink.health.reason());
        sink.health.set_not_ready("between rounds");
    }
    assert_eq!((sink.summary.inserted, sink.summary.duplicates, sink.summary.batches), (9, 0, 3));
}

/// A TCP forwarder on 127.0.0.1 to `target`, for cutting a database off: dropping it stops
/// accepting and ends every forwarded connection.
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        Proxy::start_at(target, 0).await
    }

    /// On `port` (0: any free one).
    async fn start_at(target: String, port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        tokio::io::copy_bidirectional(&mut client, &mut server).await.ok();
                    }
                });
            }
        });
        Proxy { port, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// The PostgreSQL of the test behind a [`Proxy`]: the URL through it, and the proxy.
async fn proxied_schema(schema: &PgSchema) -> (String, String, Proxy) {
    let config: postgres::Config = schema.url.parse().unwrap();
    let (host, port) = match (&config.get_hosts()[0], config.get_ports().first()) {
        (postgres::config::Host::Tcp(host), port) => (host.clone(), *port.unwrap_or(&5432)),
        _ => panic!("VIGIL_TEST_DATABASE_URL must name a TCP host"),
    };
    let target = format!("{host}:{port}");
    let proxy = Proxy::start(target.clone()).await;
    let url = schema.url.replacen(&target, &format!("127.0.0.1:{}", proxy.port), 1);
    assert_ne!(url, schema.url, "VIGIL_TEST_DATABASE_URL must spell out host:port");
    (url, target, proxy)
}

/// An idle sink notices a lost database within a check (not at its next write) and is
/// ready again once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sink_is_not_ready_while_the_database_is_away() {
    let Some(schema) = PgSchema::create() else { return };
    let (url, target, proxy) = proxied_schema(&schema).await;
    let topic = "detections";
    let db = Arc::new(DbWorker::start(&url).await.unwrap());
    let consumer = offline_consumer(&db, topic);
    let mut sink = sink_loop(&db, &consumer, topic);
    sink.health.set_ready();
    let due = |sink: &mut SinkLoop<'_>| sink.idle_check.last = Instant::now() - IDLE_CHECK_EVERY;

    due(&mut sink);
    sink.check_idle_database().await;
    assert_eq!(sink.health.reason(), None, "the database answers");

    let port = proxy.port;
    drop(proxy);
    // The abort takes effect on the proxy's next turn.
    tokio::time::sleep(Duration::from_millis(200)).await;
    due(&mut sink);
    sink.check_idle_database().await;
    let reason = sink.health.reason().unwrap_or_default();
    assert!(reason.starts_with("database unavailable"), "{reason:?}");
    // Not asked again before IDLE_CHECK_EVERY.
    let _proxy = Proxy::start_at(target, port).await;
    sink.check_idle_database().await;
    assert!(sink.health.reason().is_some());

    due(&mut sink);
    sink.check_idle_database().await;
    assert_eq!(sink.health.reason(), None, "ready again once the database answers");
}

/// A database that stays unreachable: the sink retries for `sink.db_outage_limit_ms`, then
/// stops with an error, so that a restart policy sees the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_when_the_database_stays_unreachable() {
    let Some(schema) = PgSchema::create() else { return };
    let (url, _, proxy) = proxied_schema(&schema).await;
    let topic = "detections";
    let db = Arc::new(DbWorker::start(&url).await.unwrap());
    let consumer = offline_consumer(&db, topic);
    let mut sink = sink_loop(&db, &consumer, topic);
    sink.db_outage_limit = Duration::from_secs(2);
    sink.pending = vec![pending(result("f0", "cam"), 0, 0)];
    sink.flush(&CancellationToken::new()).await.unwrap();

    drop(proxy);
    sink.pending = vec![pending(result("f1", "cam"), 0, 1)];
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), sink.flush(&CancellationToken::new()))
        .await
        .expect("still retrying after 30 s");
    assert!(matches!(outcome, Err(SinkError::DatabaseUnavailable { .. })), "{outcome:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "gave up before the limit: {:?}", started.elapsed());
    let reason = sink.health.reason().unwrap_or_default();
    assert!(reason.starts_with("database unavailable"), "readiness during the outage: {reason:?}");
    let (stats, offsets) = stored(&schema.url, topic);
    assert_eq!((stats.rows, offsets), (1, HashMap::from([(0, 1)])));
}

/// Results are written as soon as the consumer has nothing more to give, not after the
/// batch window (60 s here); and after a revocation the loop goes on polling (it once spun
/// on an expired deadline and never polled again, so nothing it read afterwards was stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_drained_batch_at_once_and_keeps_polling_after_a_revocation() {
    let (_broker, kafka, topic) = broker_with_topic(1);
    let producer: FutureProducer = client_config(&kafka).create().unwrap();
    for i in 0..3 {
        send_result(&producer, &topic, i, 0).await;
    }
    let url = sqlite_url("spin");
    let db = Arc::new(DbWorker::start(&url).await.unwrap());
    let sink_consumer = Arc::new(consumer(&kafka, &db, &topic));
    sink_consumer.subscribe(&[&topic]).unwrap();
    let shutdown = CancellationToken::new();
    let run = {
        let (db, shutdown, topic, sink_consumer) = (db.clone(), shutdown.clone(), topic.clone(), sink_consumer.clone());
        tokio::spawn(async move {
            let mut sink = sink_loop(&db, &sink_consumer, &topic);
            sink.run(1000, Duration::from_secs(60), &shutdown).await
        })
    };
    let rows_within = |n: u64, limit: Duration| {
        let url = url.clone();
        let topic = topic.clone();
        async move {
            let deadline = Instant::now() + limit;
            let mut rows = 0;
            while rows < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                rows = stored(&url, &topic).0.rows;
            }
            rows
        }
    };
    assert_eq!(rows_within(3, Duration::from_secs(20)).await, 3, "written without waiting out the 60 s window");
    sink_consumer.context().note_revoked(&[0]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 3..5 {
        send_result(&producer, &topic, i, 0).await;
    }
    let rows = rows_within(5, Duration::from_secs(20)).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(rows, 5, "the records read after the revocation were stored: the loop kept polling");
}
