//! Fixed ports for a [`DevBroker`]: broker `i` is reached through a TCP forwarder on
//! `host:first_port+i-1` and advertised there, so the bootstrap list is stable across runs.

use std::ffi::CString;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use super::DevBroker;
use crate::kafka::KafkaPlumbingError;

impl DevBroker {
    /// Binds a forwarder per broker (needs a Tokio runtime), advertises it in metadata and
    /// makes the forwarders the bootstrap list.
    pub(super) async fn forward_from(&mut self, host: &str, first_port: u16) -> Result<(), KafkaPlumbingError> {
        let upstream: Vec<String> = self.bootstrap.split(',').map(str::to_string).collect();
        let mut advertised = Vec::new();
        for (i, target) in upstream.into_iter().enumerate() {
            let broker_id = i as i32 + 1;
            let port = u16::try_from(u32::from(first_port) + i as u32).map_err(|_| KafkaPlumbingError::Mock {
                what: format!("port {first_port} + {i} is above 65535"),
                cause: KafkaError::MockCluster(RDKafkaErrorCode::InvalidArgument),
            })?;
            let listen = format!("{host}:{port}");
            let listener = TcpListener::bind(&listen)
                .await
                .map_err(|cause| KafkaPlumbingError::MockIo { what: format!("bind {listen}"), cause })?;
            self.forwarders.push(tokio::spawn(forward(listener, target)));
            let c_host = CString::new(host)
                .map_err(|e| KafkaPlumbingError::Mock { what: "host".into(), cause: KafkaError::Nul(e) })?;
            self.raw().broker_set_host_port(broker_id, &c_host, port);
            advertised.push(listen);
        }
        self.bootstrap = advertised.join(",");
        Ok(())
    }
}

/// Accepts connections on `listener` and pipes each to `target` until either side closes.
async fn forward(listener: TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            match TcpStream::connect(&target).await {
                Ok(mut outbound) => {
                    // Best effort: without TCP_NODELAY the connection only gets slower.
                    for stream in [&inbound, &outbound] {
                        if let Err(e) = stream.set_nodelay(true) {
                            debug!(%target, error = %e, "forwarder: cannot set TCP_NODELAY");
                        }
                    }
                    if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                        debug!(%target, error = %e, "forwarded connection ended with an error");
                    }
                }
                Err(e) => {
                    debug!(%target, error = %e, "mock broker unreachable (down?); closing the client connection")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::consumer::Consumer;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use crate::kafka::mock::tests::kafka_for;
    use crate::kafka::{metadata_client, partition_count, watermarks, DevBroker, DevBrokerOptions, TopicConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fixed_ports_forward_to_the_brokers() {
        // Pick a free base port (brief race with other processes is acceptable in a test).
        let base = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let options = DevBrokerOptions { brokers: 1, port: Some(base), host: "127.0.0.1".into() };
        let Ok(broker) = DevBroker::start_with(&options).await else {
            return;
        };
        assert_eq!(broker.bootstrap_servers(), format!("127.0.0.1:{base}"));
        let kafka = kafka_for(broker.bootstrap_servers());
        broker.create_topic(&TopicConfig { partitions: 2, ..kafka.topics.images.clone() }).unwrap();
        let producer: FutureProducer = crate::kafka::idempotent_producer_config(&kafka).create().unwrap();
        producer
            .send(FutureRecord::to(&kafka.topics.images.name).key("k").payload("v"), Duration::from_secs(10))
            .await
            .unwrap();
        let topic = kafka.topics.images.name.clone();
        tokio::task::spawn_blocking(move || {
            let c = metadata_client(&kafka).unwrap();
            assert_eq!(partition_count(&c, &kafka, &topic).unwrap(), 2);
            let total: i64 = watermarks(&c, &kafka, &topic).unwrap().iter().map(|(_, lo, hi)| hi - lo).sum();
            assert_eq!(total, 1);
            // Metadata advertises the forwarder, not the random port.
            let md = c.fetch_metadata(None, Duration::from_secs(5)).unwrap();
            assert_eq!(md.brokers()[0].port() as u16, base);
        })
        .await
        .unwrap();
    }
}
