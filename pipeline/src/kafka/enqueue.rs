//! Handing a record to librdkafka when its local queue may be full.

use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// What became of a record handed to [`try_enqueue`].
pub(crate) enum Enqueued<'a, K: ToBytes + ?Sized, P: ToBytes + ?Sized> {
    /// Queued for delivery.
    Sent(DeliveryFuture),
    /// librdkafka's queue is full: the record comes back; make room (settle a delivery,
    /// or wait a moment) and try again.
    Full(FutureRecord<'a, K, P>),
}

/// Queues `record` for delivery, or gives it back when the local queue is full; any other
/// error is the caller's to classify.
pub(crate) fn try_enqueue<'a, K, P>(
    producer: &FutureProducer,
    record: FutureRecord<'a, K, P>,
) -> Result<Enqueued<'a, K, P>, KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    match producer.send_result(record) {
        Ok(delivery) => Ok(Enqueued::Sent(delivery)),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => Ok(Enqueued::Full(back)),
        Err((e, _)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_gives_the_record_back() {
        // One message fits, and the broker never answers: the second record finds it full.
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("queue.buffering.max.messages", "1")
            .set("message.timeout.ms", "60000")
            .create()
            .unwrap();
        let first = try_enqueue(&producer, FutureRecord::<str, str>::to("t").payload("a")).unwrap();
        assert!(matches!(first, Enqueued::Sent(_)));
        match try_enqueue(&producer, FutureRecord::<str, str>::to("t").payload("b")).unwrap() {
            Enqueued::Full(back) => assert_eq!(back.payload, Some("b")),
            Enqueued::Sent(_) => panic!("a queue of one took two records"),
        }
    }
}
