//! Which partitions this worker owns, and since when.
//!
//! Every assignment change bumps the partition's *epoch*; each consumed record is
//! tagged with the epoch of its partition at the time it was read. A record whose
//! partition was revoked (or revoked and assigned again) since then belongs to an
//! ownership that has ended: its results are dropped, not committed, and the
//! partition's next owner (maybe this worker again) reads it again from the committed
//! offset.
//!
//! Transactions and rebalances never overlap: librdkafka runs the rebalance callback
//! inside a consumer poll, and the detector never polls between `begin_transaction` and
//! the commit or abort (the transaction phase runs to its end first). So when
//! partitions are revoked no transaction is open; the batch still in the model is
//! filtered by epoch when it comes back ("aborted" for the revoked partitions; the
//! rest is committed).
//!
//! Ownership follows what librdkafka actually holds, not what the callback was told:
//! after every rebalance event the context compares itself with the consumer's
//! assignment. A rebalance error (rdkafka then gives partitions up), or an assign that
//! did not take, ends the ownership of the partitions librdkafka no longer holds, so
//! their in-flight records are dropped, never committed as owned. A revoke that did not
//! take (librdkafka still fetching a partition whose in-flight records were dropped,
//! its position past them) cannot be repaired here: the loop stops the worker
//! ([`DetectorContext::ownership_uncertain`]).

use std::collections::HashMap;
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::TopicPartitionList;
use tracing::{info, warn};

use crate::health::Health;
use crate::kafka::stats;

#[derive(Debug, Default)]
struct Ownership {
    /// Current epoch per partition of the input topic.
    epochs: HashMap<i32, u64>,
    /// Partitions currently assigned.
    assigned: std::collections::BTreeSet<i32>,
    /// Source of fresh epochs.
    counter: u64,
    /// Rebalances seen (assign or revoke events).
    rebalances: u64,
    /// Set when librdkafka holds a partition whose ownership ended here (see the module doc).
    uncertain: Option<String>,
}

/// Consumer context of a detector worker.
#[derive(Debug)]
pub(super) struct DetectorContext {
    topic: String,
    state: Mutex<Ownership>,
    /// Told whether a broker is reachable, from the client's statistics.
    health: Health,
}

impl DetectorContext {
    pub(super) fn new(topic: &str, health: Health) -> Self {
        DetectorContext { topic: topic.to_owned(), state: Mutex::new(Ownership::default()), health }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Ownership> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch to tag a record of `partition` with, read now.
    pub(super) fn epoch(&self, partition: i32) -> u64 {
        self.state().epochs.get(&partition).copied().unwrap_or(0)
    }

    /// Whether a record tagged `epoch` still belongs to the current ownership of `partition`.
    pub(super) fn is_current(&self, partition: i32, epoch: u64) -> bool {
        let state = self.state();
        state.assigned.contains(&partition) && state.epochs.get(&partition) == Some(&epoch)
    }

    /// Partitions currently assigned.
    pub(super) fn assigned(&self) -> Vec<i32> {
        self.state().assigned.iter().copied().collect()
    }

    /// Why partition ownership can no longer be trusted, if it cannot.
    pub(super) fn ownership_uncertain(&self) -> Option<String> {
        self.state().uncertain.clone()
    }

    /// Number of assignment changes so far.
    pub(super) fn rebalances(&self) -> u64 {
        self.state().rebalances
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect()
    }

    fn assign(&self, partitions: &[i32]) {
        crate::metrics::metrics().rebalances.add(1, &[]);
        let mut state = self.state();
        state.rebalances += 1;
        for &p in partitions {
            state.counter += 1;
            let epoch = state.counter;
            state.epochs.insert(p, epoch);
            state.assigned.insert(p);
        }
    }

    fn revoke(&self, partitions: &[i32]) {
        let mut state = self.state();
        state.rebalances += 1;
        end_ownership(&mut state, partitions);
    }

    /// Brings ownership in line with librdkafka's assignment after a rebalance event
    /// (`actual`: its partitions of the input topic, or why it cannot be read): what it
    /// no longer holds is no longer owned; what it holds but is not owned here makes
    /// ownership uncertain.
    fn settle(&self, actual: Result<Vec<i32>, String>) {
        let mut state = self.state();
        let actual = match actual {
            Ok(actual) => actual,
            Err(reason) => {
                let owned: Vec<i32> = state.assigned.iter().copied().collect();
                end_ownership(&mut state, &owned);
                state.uncertain.get_or_insert(format!("cannot read the consumer's assignment: {reason}"));
                return;
            }
        };
        let given_up: Vec<i32> = state.assigned.iter().copied().filter(|p| !actual.contains(p)).collect();
        if !given_up.is_empty() {
            warn!(topic = %self.topic, partitions = ?given_up, "partitions dropped by the consumer outside a revoke (a rebalance error?); their in-flight records will not be committed");
            end_ownership(&mut state, &given_up);
        }
        let unowned: Vec<i32> = actual.iter().copied().filter(|p| !state.assigned.contains(p)).collect();
        if !unowned.is_empty() && state.uncertain.is_none() {
            state.uncertain = Some(format!(
                "the consumer still holds partitions {unowned:?} of {} that this worker gave up (a revoke that did not take effect)",
                self.topic
            ));
        }
    }
}

/// Ends the current ownership of `partitions`: new epochs, not assigned.
fn end_ownership(state: &mut Ownership, partitions: &[i32]) {
    for &p in partitions {
        state.counter += 1;
        let epoch = state.counter;
        state.epochs.insert(p, epoch);
        state.assigned.remove(&p);
    }
}

impl ClientContext for DetectorContext {
    fn stats_raw(&self, statistics: &[u8]) {
        stats::observe_raw(statistics, &self.topic, &self.health);
    }
}

impl ConsumerContext for DetectorContext {
    fn pre_rebalance(&self, base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = self.partitions(tpl);
            // Before librdkafka drops them: from now on their in-flight records are stale.
            self.revoke(&partitions);
            info!(topic = %self.topic, ?partitions, lost = base_consumer.assignment_lost(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.partitions(tpl);
                self.assign(&partitions);
                // librdkafka keeps a partition's application pause across a revoke and a
                // new assignment of the same partition: a pause from the previous
                // ownership (model busy) would stall it for good. A new ownership starts
                // fetching; the loop pauses again if it has to.
                if let Err(e) = base_consumer.resume(tpl) {
                    warn!(error = %e, "cannot resume newly assigned partitions");
                }
                info!(topic = %self.topic, ?partitions, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
        let actual = base_consumer.assignment().map(|tpl| self.partitions(&tpl)).map_err(|e| e.to_string());
        self.settle(actual);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_an_ended_ownership_are_stale() {
        let ctx = DetectorContext::new("images", Health::new());
        assert!(!ctx.is_current(0, ctx.epoch(0)), "nothing assigned yet");
        ctx.assign(&[0, 1]);
        let e0 = ctx.epoch(0);
        let e1 = ctx.epoch(1);
        assert!(ctx.is_current(0, e0) && ctx.is_current(1, e1));
        // Eager rebalance: everything revoked, then partition 0 comes back.
        ctx.revoke(&[0, 1]);
        assert!(!ctx.is_current(0, e0) && !ctx.is_current(1, e1));
        ctx.assign(&[0]);
        assert!(!ctx.is_current(0, e0), "a record read before the revoke stays stale");
        assert!(ctx.is_current(0, ctx.epoch(0)));
        assert!(!ctx.is_current(1, ctx.epoch(1)), "partition 1 went to another worker");
        assert_eq!(ctx.assigned(), vec![0]);
        assert_eq!(ctx.rebalances(), 3);
    }

    /// On a rebalance error rdkafka gives the partitions up (it unassigns them between
    /// the two callbacks): records read from them before must no longer count as owned,
    /// or the batch in the model would commit them as this worker's.
    #[test]
    fn a_rebalance_error_ends_the_ownership_of_the_partitions_given_up() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        use rdkafka::ClientConfig;

        let broker = crate::kafka::DevBroker::start(1).unwrap();
        let consumer: BaseConsumer<DetectorContext> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "rebalance-error")
            .create_with_context(DetectorContext::new("images", Health::new()))
            .unwrap();
        let ctx = consumer.context();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("images", 0);
        tpl.add_partition("images", 1);
        // What rdkafka does for an assignment: pre, assign, post.
        let assign = Rebalance::Assign(&tpl);
        ctx.pre_rebalance(&consumer, &assign);
        consumer.assign(&tpl).unwrap();
        ctx.post_rebalance(&consumer, &assign);
        let (e0, e1) = (ctx.epoch(0), ctx.epoch(1));
        assert!(ctx.is_current(0, e0) && ctx.is_current(1, e1));
        // And for an error: pre, unassign everything, post.
        let error = Rebalance::Error(KafkaError::Rebalance(RDKafkaErrorCode::Fail));
        ctx.pre_rebalance(&consumer, &error);
        consumer.unassign().unwrap();
        ctx.post_rebalance(&consumer, &error);
        assert!(!ctx.is_current(0, e0) && !ctx.is_current(1, e1), "records of dropped partitions are stale");
        assert!(ctx.assigned().is_empty());
    }

    /// A revoke that librdkafka did not carry out leaves it fetching a partition whose
    /// in-flight records were dropped: ownership is uncertain, and says why.
    #[test]
    fn a_revoke_that_did_not_take_makes_ownership_uncertain() {
        let broker = crate::kafka::DevBroker::start(1).unwrap();
        let consumer: BaseConsumer<DetectorContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "revoke-not-taken")
            .create_with_context(DetectorContext::new("images", Health::new()))
            .unwrap();
        let ctx = consumer.context();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("images", 0);
        let assign = Rebalance::Assign(&tpl);
        consumer.assign(&tpl).unwrap();
        ctx.post_rebalance(&consumer, &assign);
        assert_eq!(ctx.ownership_uncertain(), None);
        let revoke = Rebalance::Revoke(&tpl);
        ctx.pre_rebalance(&consumer, &revoke);
        // (no unassign: the revoke did not take)
        ctx.post_rebalance(&consumer, &revoke);
        let reason = ctx.ownership_uncertain().expect("uncertain");
        assert!(reason.contains("[0]"), "{reason}");
    }
}
