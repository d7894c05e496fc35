//! `ClientConfig` builders: bootstrap servers, then the `kafka.client` passthrough, then
//! what the role requires (those last settings win, so a passthrough property cannot
//! weaken a stage's guarantees).

use rdkafka::ClientConfig;

use super::KafkaConfig;

/// Bootstrap servers plus every `kafka.client.*` property: the base of every client.
pub(crate) fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.client {
        config.set(key, value);
    }
    config
}

/// An idempotent producer (`enable.idempotence=true`, `acks=all`) that may send records up
/// to `kafka.max_message_bytes`.
pub(crate) fn idempotent_producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", kafka.max_message_bytes.to_string());
    config
}

/// A group consumer that commits nothing by itself (`enable.auto.commit=false`), starts
/// at the earliest offset when the group has none, and reads only committed transactional
/// records (`isolation.level=read_committed`).
pub(crate) fn consumer_config(kafka: &KafkaConfig, group_id: &str, session_timeout_ms: u64) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("enable.partition.eof", "false")
        // A topic created just before the group forms may be missing from the metadata of
        // the broker the leader asks (brokers learn of new topics asynchronously): the group
        // then assigns nothing for it until the next refresh, 5 minutes by default.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // For readiness and the lag gauge (see `stats`); the stage's context reads them.
        .set("statistics.interval.ms", super::stats::STATISTICS_INTERVAL_MS.to_string());
    if !kafka.client.contains_key("heartbeat.interval.ms") {
        config.set("heartbeat.interval.ms", heartbeat_interval_ms(session_timeout_ms).to_string());
    }
    if !kafka.client.contains_key("fetch.wait.max.ms") {
        config.set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string());
    }
    config
}

/// A third of the session timeout, at most librdkafka's default 3 s. The default alone
/// equals a 3 s session, where one late heartbeat evicts the member (seen as a static
/// member fenced by its own rejoin under load); and members learn that a rebalance began
/// (a worker left on SIGTERM) only at their next heartbeat, so it bounds that failover too.
pub(crate) fn heartbeat_interval_ms(session_timeout_ms: u64) -> u64 {
    (session_timeout_ms / 3).clamp(100, 3_000)
}

/// A consumer outside any group's offset management (manual `assign`, reads watermarks
/// and records for `tail`/`verify`): a throwaway group id, no commits, read_committed.
pub(crate) fn reader_config(kafka: &KafkaConfig, purpose: &str) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", format!("vigil-{purpose}-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_settings_win_over_passthrough() {
        let mut kafka = KafkaConfig::default();
        kafka.client.insert("acks".into(), "1".into());
        kafka.client.insert("isolation.level".into(), "read_uncommitted".into());
        kafka.client.insert("client.id".into(), "me".into());
        let p = idempotent_producer_config(&kafka);
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("client.id"), Some("me"));
        assert_eq!(p.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        let c = consumer_config(&kafka, "g", 6000);
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("group.id"), Some("g"));
    }

    #[test]
    fn heartbeats_come_three_times_per_session() {
        let kafka = KafkaConfig::default();
        assert_eq!(consumer_config(&kafka, "g", 3_000).get("heartbeat.interval.ms"), Some("1000"));
        assert_eq!(consumer_config(&kafka, "g", 6_000).get("heartbeat.interval.ms"), Some("2000"));
        assert_eq!(consumer_config(&kafka, "g", 45_000).get("heartbeat.interval.ms"), Some("3000"));
        let mut kafka = KafkaConfig::default();
        kafka.client.insert("heartbeat.interval.ms".into(), "500".into());
        assert_eq!(
            consumer_config(&kafka, "g", 3_000).get("heartbeat.interval.ms"),
            Some("500"),
            "an explicit one wins"
        );
    }
}
