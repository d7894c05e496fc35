//! The sink's Kafka side: a `read_committed` group consumer whose positions come from
//! the database, not from Kafka.
//!
//! On every assignment the rebalance callback reads the stored `next_offset`s and
//! assigns the partitions **at those offsets** (partitions the database has never seen
//! start at the beginning: the database, not the group's Kafka offsets, says what is
//! stored). Kafka offset commits happen only after a database commit, asynchronously,
//! so that lag monitoring works; they are never read back.
//!
//! A batch is written and awaited before the next poll, so no database write is in
//! flight while a rebalance callback runs, and a new assignment always sees every
//! committed batch. Records read but not yet written when their partition is revoked
//! belong to the next owner, which reads them again from the stored offset: the callback
//! notes the revoked partitions ([`SinkContext::take_revoked`]) and the loop drops those
//! records instead of storing them late.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use super::db::DbWorker;
use crate::backoff::Backoff;
use crate::health::Health;
use crate::kafka::stats;

/// Consumer context that seeks newly assigned partitions to the database's offsets.
pub(super) struct SinkContext {
    db: Arc<DbWorker>,
    group_id: String,
    topic: String,
    /// Set when the stored offsets could not be read: the stage stops instead of reading
    /// from a wrong position.
    failure: Mutex<Option<String>>,
    /// Partitions of our topic revoked since the loop last asked.
    revoked: Mutex<Vec<i32>>,
    /// Told whether a broker is reachable, from the client's statistics.
    health: Health,
}

impl SinkContext {
    pub(super) fn new(db: Arc<DbWorker>, group_id: &str, topic: &str, health: Health) -> Self {
        SinkContext {
            db,
            group_id: group_id.to_owned(),
            topic: topic.to_owned(),
            failure: Mutex::new(None),
            revoked: Mutex::new(Vec::new()),
            health,
        }
    }

    /// The reason the consumer cannot go on, if any.
    pub(super) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes `partitions` as revoked, as the rebalance callback does (for tests of the loop).
    #[cfg(test)]
    pub(super) fn note_revoked(&self, partitions: &[i32]) {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(partitions);
    }

    /// The partitions revoked since the last call; the loop must not store what it read
    /// from them.
    pub(super) fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sets each of our topic's partitions in `tpl` to its stored offset (or the
    /// beginning). Retries a few times: a database that is restarting should not kill
    /// the sink at the first rebalance.
    fn apply_stored_offsets(&self, tpl: &mut TopicPartitionList) -> Result<Vec<(i32, Offset)>, String> {
        let mut last_error = String::new();
        for attempt in 1..=5 {
            match self.db.load_offsets_blocking(&self.group_id, &self.topic) {
                Ok(stored) => {
                    let partitions: Vec<i32> =
                        tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                    let mut applied = Vec::with_capacity(partitions.len());
                    for p in partitions {
                        let offset = stored.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                        tpl.set_partition_offset(&self.topic, p, offset).map_err(|e| e.to_string())?;
                        applied.push((p, offset));
                    }
                    return Ok(applied);
                }
                Err(e) => {
                    last_error = e.to_string();
                    warn!(attempt, error = %e, "cannot read stored offsets; retrying");
                    std::thread::sleep(
                        Backoff { base: Duration::from_millis(200), cap: Duration::from_secs(5) }.delay(attempt),
                    );
                }
            }
        }
        Err(last_error)
    }
}

impl ClientContext for SinkContext {
    fn stats_raw(&self, statistics: &[u8]) {
        stats::observe_raw(statistics, &self.topic, &self.health);
    }
}

impl ConsumerContext for SinkContext {
    fn rebalance(&self, base_consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(base_consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                crate::metrics::metrics().rebalances.add(1, &[]);
                match self.apply_stored_offsets(tpl) {
                    Ok(applied) => {
                        info!(topic = %self.topic, partitions = ?applied, "assigned; reading from the database's offsets");
                    }
                    Err(reason) => {
                        error!(%reason, "cannot read stored offsets; the sink stops");
                        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                        // Take nothing rather than read from the wrong place.
                        if let Err(e) = base_consumer.unassign() {
                            error!(error = %e, "cannot drop the assignment either");
                        }
                        return;
                    }
                }
                let result: KafkaResult<()> =
                    if cooperative { base_consumer.incremental_assign(tpl) } else { base_consumer.assign(tpl) };
                if let Err(e) = result {
                    error!(error = %e, "assign failed");
                    *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("assign failed: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                debug!(partitions = tpl.count(), lost = base_consumer.assignment_lost(), "partitions revoked");
                let partitions: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                self.revoked.lock().unwrap_or_else(|p| p.into_inner()).extend(partitions);
                let result =
                    if cooperative { base_consumer.incremental_unassign(tpl) } else { base_consumer.unassign() };
                if let Err(e) = result {
                    warn!(error = %e, "unassign failed");
                }
            }
            other => {
                error!(error = ?other, "rebalance error; dropping the assignment");
                if let Err(e) = base_consumer.unassign() {
                    error!(error = %e, "cannot drop the assignment");
                }
            }
        }
    }
}
