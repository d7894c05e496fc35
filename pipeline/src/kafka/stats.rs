//! What a stage learns from its consumer's librdkafka statistics (every
//! [`STATISTICS_INTERVAL_MS`]): whether any broker connection is up, for `/readyz`, and
//! the consumer lag of each partition it fetches, for `/metrics`.

use rdkafka::statistics::Statistics;

use crate::health::Health;
use crate::metrics;

/// How often librdkafka reports statistics (`statistics.interval.ms`): readiness follows
/// a lost or regained broker within this, plus the time librdkafka takes to notice.
pub(crate) const STATISTICS_INTERVAL_MS: u64 = 5_000;

/// Applies one statistics report of a consumer of `topic` to `health` and the metrics.
pub(crate) fn observe(stats: &Statistics, topic: &str, health: &Health) {
    health.set_broker_reachable(broker_up(stats.brokers.values().map(|b| (b.nodeid, b.state.as_str()))));
    let partitions = stats.topics.get(topic).into_iter().flat_map(|t| t.partitions.values());
    metrics::consumer_lag(topic, fetched(partitions.map(|p| (p.partition, p.consumer_lag))));
}

/// Whether a connection to a real broker (not only a bootstrap address, node id -1) is
/// up, from (node id, state) pairs.
fn broker_up(mut brokers: impl Iterator<Item = (i32, impl AsRef<str>)>) -> bool {
    brokers.any(|(node, state)| node >= 0 && state.as_ref() == "UP")
}

/// The (partition, lag) pairs of partitions this consumer fetches: librdkafka reports lag
/// -1 for the others, and partition -1 for its internal unassigned queue.
fn fetched(partitions: impl Iterator<Item = (i32, i64)>) -> Vec<(i32, i64)> {
    partitions.filter(|&(partition, lag)| partition >= 0 && lag >= 0).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::consumer::{Consumer, StreamConsumer};

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
    struct Observed(Health);

    impl rdkafka::ClientContext for Observed {
        fn stats(&self, statistics: Statistics) {
            observe(&statistics, "stats-test", &self.0);
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
        let consumer: StreamConsumer<Observed> =
            consumer_config(&kafka, "stats-test", 6_000).create_with_context(Observed(health.clone())).unwrap();
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

    #[test]
    fn lag_is_reported_for_fetched_partitions_only() {
        assert_eq!(fetched([(0, 12), (1, -1), (-1, 0), (2, 0)].into_iter()), [(0, 12), (2, 0)]);
    }
}
