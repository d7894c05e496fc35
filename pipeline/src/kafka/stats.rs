//! What a stage learns from its consumer's librdkafka statistics (every
//! [`STATISTICS_INTERVAL_MS`]): whether any broker connection is up, for `/readyz`; and
//! for `/metrics`, how far behind the end of each partition it fetches it is, and each
//! broker's round-trip time.
//!
//! The report is read field by field with defaults ([`Report`]), not through rdkafka's
//! `Statistics`, which requires every field: a report that lacks one (another librdkafka
//! or broker version) would be dropped whole, and with it readiness and lag.
//!
//! Lag is computed from the partition's end (the last stable offset under
//! `read_committed`, else the high watermark) and this consumer's position, not taken from
//! librdkafka's `consumer_lag`: that one counts from the committed offset, which the
//! detector's consumer never learns (its offsets are committed by the transactional
//! producer), so it stays -1 there.

use std::collections::HashMap;

use serde::Deserialize;

use crate::health::Health;
use crate::metrics;

/// How often librdkafka reports statistics (`statistics.interval.ms`): readiness follows
/// a lost or regained broker within this, plus the time librdkafka takes to notice.
pub(crate) const STATISTICS_INTERVAL_MS: u64 = 5_000;

/// The parts of librdkafka's statistics JSON read here (STATISTICS.md in librdkafka).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Report {
    brokers: HashMap<String, BrokerReport>,
    topics: HashMap<String, TopicReport>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct BrokerReport {
    nodeid: i32,
    state: String,
    /// Round-trip times, microseconds.
    rtt: Window,
}

impl Default for BrokerReport {
    fn default() -> Self {
        BrokerReport { nodeid: -1, state: String::new(), rtt: Window::default() }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Window {
    avg: i64,
    cnt: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TopicReport {
    partitions: HashMap<String, PartitionReport>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct PartitionReport {
    partition: i32,
    /// Whether the application has it assigned.
    desired: bool,
    /// Next offset the application will be given (its position).
    app_offset: i64,
    /// Next offset to fetch.
    next_offset: i64,
    hi_offset: i64,
    ls_offset: i64,
}

impl Default for PartitionReport {
    fn default() -> Self {
        PartitionReport { partition: -1, desired: false, app_offset: -1, next_offset: -1, hi_offset: -1, ls_offset: -1 }
    }
}

/// Applies one raw statistics report of a consumer of `topic` to `health` and the
/// metrics. A report that is not JSON at all is logged and skipped.
pub(crate) fn observe_raw(json: &[u8], topic: &str, health: &Health) {
    match serde_json::from_slice::<Report>(json) {
        Ok(report) => observe(&report, topic, health),
        Err(e) => tracing::warn!(error = %e, "cannot read librdkafka's statistics; readiness and lag are not updated"),
    }
}

fn observe(report: &Report, topic: &str, health: &Health) {
    health.set_broker_reachable(broker_up(report.brokers.values().map(|b| (b.nodeid, b.state.as_str()))));
    let partitions = report.topics.get(topic).into_iter().flat_map(|t| t.partitions.values());
    metrics::consumer_lag(topic, fetched(partitions.cloned()));
    let rtts =
        report.brokers.values().filter(|b| b.nodeid >= 0 && b.rtt.cnt > 0).map(|b| (b.nodeid, b.rtt.avg as f64 / 1e6));
    metrics::broker_rtt(rtts);
}

/// Whether a connection to a real broker (not only a bootstrap address, node id -1) is
/// up, from (node id, state) pairs.
fn broker_up(mut brokers: impl Iterator<Item = (i32, impl AsRef<str>)>) -> bool {
    brokers.any(|(node, state)| node >= 0 && state.as_ref() == "UP")
}

/// The (partition, lag) pairs of the partitions this consumer has assigned and a position
/// in: the partition's end minus that position (never below 0). librdkafka also lists
/// partition -1 (its unassigned queue) and partitions it no longer fetches.
fn fetched(partitions: impl Iterator<Item = PartitionReport>) -> Vec<(i32, i64)> {
    let mut lags: Vec<(i32, i64)> = partitions
        .filter(|p| p.partition >= 0 && p.desired)
        .filter_map(|p| {
            let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
            let position = if p.app_offset >= 0 { p.app_offset } else { p.next_offset };
            (end >= 0 && position >= 0).then(|| (p.partition, (end - position).max(0)))
        })
        .collect();
    lags.sort_unstable();
    lags
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;
    use crate::kafka::{consumer_config, DevBroker, KafkaConfig, TopicConfig};

    #[test]
    fn a_broker_is_reachable_only_through_a_real_connection() {
        assert!(broker_up([(-1, "UP"), (1, "UP")].into_iter()));
        // Only the bootstrap connection up: no broker of the cluster answers.
        assert!(!broker_up([(-1, "UP"), (1, "DOWN")].into_iter()));
        assert!(!broker_up([(1, "TRY_CONNECT"), (2, "CONNECT")].into_iter()));
        assert!(!broker_up(std::iter::empty::<(i32, &str)>()));
    }

    /// A consumer context that only applies statistics, as the stages' contexts do.
    struct Observed(Health, &'static str);

    impl rdkafka::ClientContext for Observed {
        fn stats_raw(&self, statistics: &[u8]) {
            observe_raw(statistics, self.1, &self.0);
        }
    }

    impl rdkafka::consumer::ConsumerContext for Observed {}

    /// Waits up to `within` for `health`'s reason to become `reason`; the last reason.
    async fn reason_within(health: &Health, reason: Option<&str>, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        while health.reason().as_deref() != reason && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        health.reason()
    }

    /// Real librdkafka statistics from a consumer of the in-memory broker: readiness
    /// drops when every broker goes away and returns with them, each within two
    /// statistics intervals.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readiness_follows_the_brokers() {
        let broker = DevBroker::start(1).unwrap();
        let kafka = KafkaConfig { bootstrap_servers: broker.bootstrap_servers().into(), ..KafkaConfig::default() };
        broker.create_topic(&TopicConfig { name: "stats-test".into(), partitions: 2, replication_factor: -1 }).unwrap();
        let health = Health::new();
        health.set_ready();
        let consumer: StreamConsumer<Observed> = consumer_config(&kafka, "stats-test", 6_000)
            .create_with_context(Observed(health.clone(), "stats-test"))
            .unwrap();
        consumer.subscribe(&["stats-test"]).unwrap();
        let within = Duration::from_millis(2 * STATISTICS_INTERVAL_MS + 2_000);
        let polled = async {
            // Statistics are served by the consumer's poll, as in the stages' loops.
            loop {
                // No record ever comes (nothing is produced): each poll times out.
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
                    eprintln!("consumer error (expected while the broker is down): {e}");
                }
            }
        };
        let checked = async {
            assert_eq!(reason_within(&health, None, within).await, None, "ready while the broker is up");
            broker.broker_down(-1).unwrap();
            let reason = reason_within(&health, Some("no Kafka broker reachable"), within).await;
            assert_eq!(reason.as_deref(), Some("no Kafka broker reachable"), "within {within:?} of losing it");
            broker.broker_up(-1).unwrap();
            assert_eq!(reason_within(&health, None, within).await, None, "ready again within {within:?}");
        };
        tokio::select! {
            () = polled => unreachable!("polls forever"),
            () = checked => {}
        }
    }

    fn partition(partition: i32, desired: bool, app: i64, next: i64, ls: i64) -> PartitionReport {
        PartitionReport { partition, desired, app_offset: app, next_offset: next, hi_offset: ls + 5, ls_offset: ls }
    }

    #[test]
    fn lag_is_reported_for_fetched_partitions_only() {
        let reported = [
            partition(0, true, 10, 18, 22),       // position 10, end 22
            partition(1, true, -1001, 7, 7),      // nothing consumed yet: from the fetch position
            partition(2, false, 3, 3, 9),         // no longer assigned
            partition(-1, true, 0, 0, 0),         // librdkafka's internal queue
            partition(3, true, -1001, -1001, 40), // assigned, position not known yet
        ];
        assert_eq!(fetched(reported.into_iter()), [(0, 12), (1, 0)]);
    }

    #[test]
    fn a_report_missing_fields_is_still_read() {
        let json = br#"{"name": "c", "brokers": {"b1:9092/1": {"nodeid": 1, "state": "UP", "rtt": {"avg": 2500, "cnt": 3}}},
            "topics": {"t": {"partitions": {"0": {"partition": 0, "desired": true, "app_offset": 4, "ls_offset": 9}}}}}"#;
        let report: Report = serde_json::from_slice(json).unwrap();
        assert!(broker_up(report.brokers.values().map(|b| (b.nodeid, b.state.as_str()))));
        let partitions = report.topics["t"].partitions.values().cloned();
        assert_eq!(fetched(partitions), [(0, 5)]);
    }

    /// Real statistics of a consumer of the in-memory broker that has read part of a
    /// partition: the lag is what is left to read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_counts_what_is_left_to_read() {
        let broker = DevBroker::start(1).unwrap();
        let kafka = KafkaConfig { bootstrap_servers: broker.bootstrap_servers().into(), ..KafkaConfig::default() };
        broker.create_topic(&TopicConfig { name: "stats-lag".into(), partitions: 1, replication_factor: -1 }).unwrap();
        let producer: FutureProducer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", broker.bootstrap_servers()).create().unwrap();
        for i in 0..10u8 {
            let payload = [i];
            let record = FutureRecord::<(), _>::to("stats-lag").payload(&payload[..]).partition(0);
            producer.send(record, Duration::from_secs(5)).await.unwrap();
        }
        let consumer: StreamConsumer<Observed> = consumer_config(&kafka, "stats-lag", 6_000)
            .set("max.partition.fetch.bytes", "1")
            .create_with_context(Observed(Health::new(), "stats-lag"))
            .unwrap();
        consumer.subscribe(&["stats-lag"]).unwrap();
        for _ in 0..4 {
            consumer.recv().await.unwrap();
        }
        // Reads no more (paused), but polls so that statistics are served.
        consumer.pause(&consumer.assignment().unwrap()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(3 * STATISTICS_INTERVAL_MS);
        let mut lag = None;
        while lag.is_none() && tokio::time::Instant::now() < deadline {
            // Paused: no record comes, the poll only serves callbacks.
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await {
                panic!("paused, yet received offset {}", rdkafka::Message::offset(&m));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let page = metrics::consumer_lags();
            lag = page.get(&("stats-lag".to_owned(), 0)).copied();
        }
        assert_eq!(lag, Some(6), "4 of 10 read");
    }
}
