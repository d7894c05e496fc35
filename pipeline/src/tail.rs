//! `vigil tail`: a live, human-readable (or JSON) view of the `detections` topic.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::codec::DetectionResult;
use crate::kafka::{metadata_client, partition_count, reader_config, KafkaPlumbingError};
use crate::settings::Settings;

/// Why `tail` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Kafka(#[from] KafkaPlumbingError),
    #[error("cannot read {topic}: {cause}")]
    Consume { topic: String, cause: KafkaError },
}

impl TailError {
    /// Whether the command was used wrongly (exit code 2) rather than failing at run time.
    pub fn is_usage(&self) -> bool {
        matches!(self, TailError::Kafka(e) if e.is_usage())
    }
}

/// How to tail.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Start at the beginning of the topic instead of the end.
    pub from_beginning: bool,
    /// One JSON object per line (all DetectionResult fields) instead of text.
    pub json: bool,
    /// Exit after printing this many results.
    pub limit: Option<u64>,
}

/// Runs `vigil tail` until `shutdown` fires (or `--limit` is reached). Returns how many
/// results were printed.
pub async fn run(settings: &Settings, options: &TailOptions, shutdown: CancellationToken) -> Result<u64, TailError> {
    let topic = settings.kafka.topics.detections.name.clone();
    crate::kafka::use_schema_registry(&settings.kafka, &[]).await?;
    let Some(partitions) = wait_for_topic(settings, &topic, &shutdown).await? else {
        return Ok(0);
    };
    let consumer: StreamConsumer = reader_config(&settings.kafka, "tail")
        .create()
        .map_err(|cause| KafkaPlumbingError::Client { role: "tail consumer", cause })?;
    let start = if options.from_beginning { Offset::Beginning } else { Offset::End };
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(&topic, p, start)
            .map_err(|cause| TailError::Consume { topic: topic.clone(), cause })?;
    }
    consumer.assign(&assignment).map_err(|cause| TailError::Consume { topic: topic.clone(), cause })?;
    info!(%topic, partitions, from_beginning = options.from_beginning, "tailing");

    let mut printed = 0u64;
    loop {
        if options.limit.is_some_and(|limit| printed >= limit) {
            break;
        }
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                warn!(%topic, error = %e, "consume error (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(payload) = message.payload() else {
            warn!(partition = message.partition(), offset = message.offset(), "record without a value; skipped");
            continue;
        };
        match DetectionResult::decode(payload) {
            Ok(result) => {
                if options.json {
                    match serde_json::to_string(&result) {
                        Ok(json) => println!("{json}"),
                        Err(e) => warn!(error = %e, "cannot render as JSON"),
                    }
                } else {
                    println!("{}", result.line());
                }
                printed += 1;
            }
            Err(e) => warn!(
                partition = message.partition(),
                offset = message.offset(),
                kind = e.kind(),
                "undecodable result skipped: {e}"
            ),
        }
    }
    Ok(printed)
}

/// Partition count of `topic`, waiting (and saying so once) until it exists; `None` when
/// shut down first.
async fn wait_for_topic(
    settings: &Settings,
    topic: &str,
    shutdown: &CancellationToken,
) -> Result<Option<i32>, TailError> {
    let mut announced = false;
    loop {
        let kafka = settings.kafka.clone();
        let name = topic.to_string();
        let n = tokio::task::spawn_blocking(move || {
            let client = metadata_client(&kafka)?;
            partition_count(&client, &kafka, &name)
        })
        .await
        .map_err(|e| KafkaPlumbingError::Topic {
            topic: topic.into(),
            reason: format!("metadata task failed: {e}"),
        })??;
        if n > 0 {
            return Ok(Some(n));
        }
        if !announced {
            info!(%topic, "waiting for the topic to be created");
            announced = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DetectedObject;

    fn result(n: usize) -> DetectionResult {
        DetectionResult {
            frame_id: "f".into(),
            source: "cam-0".into(),
            seq: 12,
            captured_at_us: 1_000_000,
            width: 768,
            height: 576,
            model_name: "nanodet-g".into(),
            model_version: "v".into(),
            detections: (0..n)
                .map(|i| DetectedObject {
                    label: format!("obj{i}"),
                    class_id: i as i32,
                    score: 0.5,
                    x_min: 0.0,
                    y_min: 0.0,
                    x_max: 1.0,
                    y_max: 1.0,
                })
                .collect(),
            processed_at_us: 1_250_000,
            batch_size: 1,
            inference_ms: 10.0,
            source_partition: 3,
            source_offset: 1234,
        }
    }

    #[test]
    fn json_line_has_every_field() {
        let json: serde_json::Value = serde_json::to_value(result(1)).unwrap();
        for key in ["frame_id", "source", "seq", "captured_at_us", "detections", "processed_at_us", "source_offset"] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tails_from_the_beginning_up_to_the_limit() {
        use rdkafka::producer::{FutureProducer, FutureRecord};

        let broker = crate::kafka::DevBroker::start(1).unwrap();
        let mut settings = Settings::default();
        settings.kafka.bootstrap_servers = broker.bootstrap_servers().to_string();
        settings.kafka.topics.detections.name = format!("detections-{}", uuid::Uuid::new_v4().simple());
        broker.create_topic(&settings.kafka.topics.detections).unwrap();
        let producer: FutureProducer = crate::kafka::client_config(&settings.kafka).create().unwrap();
        for payload in [result(1).encode().unwrap(), b"garbage".to_vec(), result(0).encode().unwrap()] {
            producer
                .send(
                    FutureRecord::to(&settings.kafka.topics.detections.name).key("cam-0").payload(&payload),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
        }
        let options = TailOptions { from_beginning: true, json: true, limit: Some(2) };
        let printed = tokio::time::timeout(Duration::from_secs(20), run(&settings, &options, CancellationToken::new()))
            .await
            .expect("tail stops at --limit")
            .unwrap();
        assert_eq!(printed, 2, "the garbage record is skipped, not counted");
    }
}
