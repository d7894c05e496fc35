//! Fault injection on a [`DevBroker`]: brokers down and slow, request and topic errors,
//! leadership and coordinator moves (each a call on rdkafka's [`MockCluster`](rdkafka::mocking::MockCluster)).

use std::time::Duration;

use rdkafka::mocking::MockCoordinator;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::DevBroker;
use crate::kafka::KafkaPlumbingError;

fn mock_err(what: String) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaPlumbingError {
    move |cause| KafkaPlumbingError::Mock { what, cause }
}

impl DevBroker {
    /// Disconnects broker `id` (-1: all) and refuses new connections; leadership stays.
    pub fn broker_down(&self, id: i32) -> Result<(), KafkaPlumbingError> {
        self.cluster().broker_down(id).map_err(mock_err(format!("broker {id} down")))
    }

    /// Lets broker `id` (-1: all) accept connections again.
    pub fn broker_up(&self, id: i32) -> Result<(), KafkaPlumbingError> {
        self.cluster().broker_up(id).map_err(mock_err(format!("broker {id} up")))
    }

    /// Adds round-trip latency to every response of broker `id`.
    pub fn broker_rtt(&self, id: i32, rtt: Duration) -> Result<(), KafkaPlumbingError> {
        self.cluster().broker_round_trip_time(id, rtt).map_err(mock_err(format!("broker {id} rtt")))
    }

    /// The next `errors.len()` requests of `api` (on any broker) fail with these errors,
    /// in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        self.cluster().request_errors(api, errors)
    }

    /// Drops any queued request errors for `api`.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) {
        self.cluster().clear_request_errors(api)
    }

    /// Every request on `topic` fails with `err` until cleared with `NO_ERROR`.
    pub fn topic_error(&self, topic: &str, err: RDKafkaRespErr) -> Result<(), KafkaPlumbingError> {
        self.cluster().topic_error(topic, err).map_err(mock_err("topic name".into()))
    }

    /// Moves the leadership of one partition (-1 broker: leaderless).
    pub fn partition_leader(&self, topic: &str, partition: i32, broker: i32) -> Result<(), KafkaPlumbingError> {
        // `None` is how MockCluster spells -1.
        let leader = Some(broker).filter(|b| *b != -1);
        self.cluster()
            .partition_leader(topic, partition, leader)
            .map_err(mock_err(format!("leader of {topic}/{partition}")))
    }

    /// Moves the group coordinator of `group` to `broker`.
    pub fn group_coordinator(&self, group: &str, broker: i32) -> Result<(), KafkaPlumbingError> {
        self.cluster()
            .coordinator(MockCoordinator::Group(group.to_string()), broker)
            .map_err(mock_err(format!("group coordinator of {group}")))
    }

    /// Moves the transaction coordinator of `transactional_id` to `broker`.
    pub fn transaction_coordinator(&self, transactional_id: &str, broker: i32) -> Result<(), KafkaPlumbingError> {
        self.cluster()
            .coordinator(MockCoordinator::Transaction(transactional_id.to_string()), broker)
            .map_err(mock_err(format!("transaction coordinator of {transactional_id}")))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;
    use crate::kafka::mock::tests::kafka_for;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_errors_reach_clients() {
        let broker = DevBroker::start(1).unwrap();
        let kafka = kafka_for(broker.bootstrap_servers());
        broker.create_topic(&kafka.topics.images).unwrap();
        let producer: FutureProducer = crate::kafka::client_config(&kafka)
            .set("message.send.max.retries", "0")
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let send = |payload: &'static str| {
            producer
                .send(FutureRecord::to(&kafka.topics.images.name).key("k").payload(payload), Duration::from_secs(10))
        };
        send("warm-up").await.unwrap();
        broker.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_MSG]);
        let (err, _) = send("rejected").await.unwrap_err();
        assert_eq!(err.rdkafka_error_code(), Some(RDKafkaErrorCode::InvalidMessage), "{err}");
        send("accepted again").await.unwrap();

        broker.broker_down(1).unwrap();
        broker.broker_up(1).unwrap();
        send("after restart").await.unwrap();
        broker.clear_request_errors(RDKafkaApiKey::Produce);
    }
}
