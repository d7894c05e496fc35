//! The position to commit after a batch: per partition, one past the highest offset read.

use std::collections::BTreeMap;

use rdkafka::{Offset, TopicPartitionList};

/// Next offset to read per partition (detector transactions, sink rows, lag commits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NextOffsets(BTreeMap<i32, i64>);

impl NextOffsets {
    /// The next offsets after `records`, given as `(partition, offset)`.
    pub(crate) fn after(records: impl IntoIterator<Item = (i32, i64)>) -> Self {
        let mut next = NextOffsets::default();
        for (partition, offset) in records {
            next.record(partition, offset);
        }
        next
    }

    /// Takes one more record into account.
    pub(crate) fn record(&mut self, partition: i32, offset: i64) {
        let e = self.0.entry(partition).or_insert(offset + 1);
        *e = (*e).max(offset + 1);
    }

    /// `(partition, next offset)` in partition order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0.iter().map(|(&p, &o)| (p, o))
    }

    /// The offsets as librdkafka's list, for `topic`.
    pub(crate) fn to_list(&self, topic: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in self.iter() {
            // Only fails for an out-of-range partition, which a consumed record cannot have.
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::error!(topic, partition, offset, error = %e, "offset left out of the commit");
            }
        }
        tpl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_past_the_highest_offset_per_partition() {
        let next = NextOffsets::after([(1, 7), (0, 3), (1, 5), (0, 4)]);
        assert_eq!(next.iter().collect::<Vec<_>>(), [(0, 5), (1, 8)]);
        let tpl = next.to_list("images");
        assert_eq!(tpl.find_partition("images", 1).unwrap().offset(), Offset::Offset(8));
    }
}
