//! `vigil broker`: the in-memory dev/test broker until SIGINT/SIGTERM.

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;
use vigil::kafka::{DevBroker, DevBrokerOptions, TopicConfig};
use vigil::settings::Settings;

use super::failure::Failure;
use super::EXIT_OK;

/// `vigil broker` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Run an in-memory Kafka cluster (librdkafka mock) for development and tests",
    long_about = "Run an in-memory Kafka cluster (librdkafka's mock cluster) until SIGINT/SIGTERM.\n\n\
        The first line on stdout is exactly `bootstrap: <host:port,...>`; pass that list to other \
        commands with --bootstrap. The mock implements no CreateTopics, so this command creates the \
        configured topics itself (kafka.topics.*: images, detections, images.dlq, with their \
        partition counts) plus any --topic. Everything lives in memory and is gone when it exits.\n\n\
        Known gaps of the mock (docs/architecture.md): transactional offset commits are acknowledged but \
        not stored, read_committed readers also see aborted records, and each partition keeps at most \
        5 MiB or 100,000 records (older ones are deleted). For the real thing on one machine, see \
        scripts/kafka.sh.",
    after_help = "Examples:\n  \
        vigil broker                                  # 3 brokers on random ports\n  \
        vigil broker --brokers 1 --port 9092          # stable address 127.0.0.1:9092\n  \
        VIGIL__KAFKA__TOPICS__IMAGES__PARTITIONS=6 vigil broker\n  \
        vigil broker --topic test-images:4 --topic test-results:4\n\n  \
        BOOT=$(vigil broker | head -1 | cut -d' ' -f2)   # (keep the process running)"
)]
pub(crate) struct BrokerArgs {
    /// Number of brokers in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=16))]
    brokers: i32,
    /// Fixed port for broker 1 (broker i gets PORT+i-1); default: random free ports.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Address the fixed ports bind to and advertise (only with --port).
    #[arg(long, default_value = "127.0.0.1", requires = "port")]
    host: String,
    /// Extra topic to create, NAME:PARTITIONS (repeatable).
    #[arg(long = "topic", value_name = "NAME:PARTITIONS", value_parser = parse_topic)]
    topics: Vec<TopicConfig>,
    /// Group initial rebalance delay, ms (Kafka's group.initial.rebalance.delay.ms; the
    /// mock defaults to 3000). Lower values make consumers start sooner.
    #[arg(long, value_name = "MS")]
    group_rebalance_delay_ms: Option<u64>,
}

fn parse_topic(s: &str) -> Result<TopicConfig, String> {
    let (name, partitions) = s.rsplit_once(':').ok_or("expected NAME:PARTITIONS")?;
    let partitions: i32 = partitions.parse().map_err(|_| format!("{partitions:?} is not a partition count"))?;
    if name.is_empty() || partitions < 1 {
        return Err("expected a non-empty NAME and PARTITIONS >= 1".into());
    }
    Ok(TopicConfig { name: name.to_string(), partitions, replication_factor: -1 })
}

/// Starts the cluster, creates the topics, prints `bootstrap: …`, waits for `shutdown`.
pub(crate) async fn run(settings: &Settings, args: BrokerArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let options = DevBrokerOptions { brokers: args.brokers, port: args.port, host: args.host.clone() };
    let broker = DevBroker::start_with(&options).await?;
    if let Some(ms) = args.group_rebalance_delay_ms {
        broker.group_initial_rebalance_delay(Duration::from_millis(ms));
    }
    broker.create_topics(&settings.kafka)?;
    for topic in &args.topics {
        broker.create_topic(topic)?;
    }
    let topics: Vec<String> = settings
        .kafka
        .topics
        .all()
        .iter()
        .copied()
        .chain(args.topics.iter())
        .map(|t| format!("{}:{}", t.name, t.partitions))
        .collect();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "bootstrap: {}", broker.bootstrap_servers())
            .and_then(|()| out.flush())
            .map_err(Failure::runtime)?;
    }
    info!(bootstrap = broker.bootstrap_servers(), brokers = args.brokers, ?topics, "broker ready; Ctrl-C to stop");
    shutdown.cancelled().await;
    info!("broker stopping");
    drop(broker);
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_flag_parses() {
        let t = parse_topic("a.b-c:7").unwrap();
        assert_eq!((t.name.as_str(), t.partitions), ("a.b-c", 7));
        assert!(parse_topic("nopartitions").is_err());
        assert!(parse_topic("x:0").is_err());
    }
}
