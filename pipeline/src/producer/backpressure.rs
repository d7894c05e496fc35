//! Backpressure for the embedded broker.
//!
//! librdkafka's mock cluster (`vigil broker`, `vigil up`) keeps at most 5 MiB per partition
//! (`max_size` in `rdkafka_mock.c`, fixed, with no property or API to change it in
//! librdkafka 2.12.1) and deletes a partition's oldest records beyond that on every append,
//! read or not. A producer that runs ahead of the detectors therefore loses frames there
//! without an error. So when the bootstrap is that broker (its cluster id starts with
//! `mockCluster`), the producer holds each frame back until the partition it goes to holds
//! at most [`BUDGET`] bytes past the detector group's committed offset ("unconsumed": a
//! record the group fetched but has not committed is read again after a restart, so it must
//! stay), counting the frame itself and this producer's frames still in flight to that
//! partition. A frame larger than the budget goes when the partition has nothing unconsumed.
//!
//! It holds for one producer per partition at a time, which is what `vigil up` runs. Two
//! producers writing to one partition at once each count only their own frames in flight,
//! so together they may overshoot the budget by what the other has in flight; the 1 MiB
//! between [`BUDGET`] and the cap absorbs some of it, not all. `vigil verify` reports any
//! frame lost that way (the log start rule).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::ProducerError;
use crate::kafka::{client_config, metadata_client, partition_count, reader_config, KafkaConfig};
use crate::settings::Settings;

/// What the mock keeps per partition.
pub(super) const MOCK_PARTITION_BYTES: u64 = 5 * 1024 * 1024;
/// Unconsumed bytes a partition may hold: 1 MiB below the cap, for the record batch
/// framing the byte counts below leave out.
pub(super) const BUDGET: u64 = MOCK_PARTITION_BYTES - 1024 * 1024;
/// Bytes counted per record on top of key, value and headers (record and batch framing).
pub(super) const RECORD_OVERHEAD: u64 = 128;

/// Holds frames back while a partition of `images` is near the embedded broker's cap.
pub(super) struct Backpressure {
    kafka: KafkaConfig,
    topic: String,
    group_id: String,
    partitions: i32,
    /// Reads `images` to learn the size of every record, whoever wrote it.
    reader: BaseConsumer,
    /// Has the detector group's id, to read its committed offsets (never joins the group).
    group: BaseConsumer,
    /// Per partition: offset → bytes, of records at or past the committed offset.
    sizes: Vec<BTreeMap<i64, u64>>,
    /// Per partition: the reader's next offset.
    next: Vec<i64>,
    /// Per partition: whether the reader reads it. Only the partitions this producer sends
    /// to are read: with every partition assigned, each of `vigil up`'s twelve producers
    /// read the whole topic.
    reading: Vec<bool>,
    /// Per partition: an upper bound of its unconsumed bytes plus this producer's in flight,
    /// from the last measurement plus what was admitted since (consumers only shrink it).
    /// Frames are admitted against it without asking the broker until it reaches the budget.
    bound: Vec<Option<u64>>,
}

/// How many bytes a record takes in the count.
pub(super) fn record_bytes(key: usize, value: usize, headers: usize) -> u64 {
    (key + value + headers) as u64 + RECORD_OVERHEAD
}

impl Backpressure {
    /// A guard when `settings.kafka` points at the embedded broker, else `None` (blocking).
    pub(super) fn for_embedded_broker(settings: &Settings) -> Result<Option<Backpressure>, ProducerError> {
        let kafka = &settings.kafka;
        let meta = metadata_client(kafka)?;
        let embedded =
            meta.client().fetch_cluster_id(kafka.operation_timeout()).is_some_and(|id| id.starts_with("mockCluster"));
        if !embedded {
            return Ok(None);
        }
        let topic = kafka.topics.images.name.clone();
        let partitions = partition_count(&meta, kafka, &topic)?;
        // Partitions are assigned to the reader when first measured (`unconsumed`).
        let reader: BaseConsumer = reader_config(kafka, "backpressure").create().map_err(ProducerError::Client)?;
        let group: BaseConsumer = client_config(kafka)
            .set("group.id", &settings.detector.group_id)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(ProducerError::Client)?;
        let n = usize::try_from(partitions).unwrap_or(0);
        Ok(Some(Backpressure {
            kafka: kafka.clone(),
            topic,
            group_id: settings.detector.group_id.clone(),
            partitions,
            reader,
            group,
            sizes: vec![BTreeMap::new(); n],
            next: vec![0; n],
            reading: vec![false; n],
            bound: vec![None; n],
        }))
    }

    /// Admits `bytes` to `partition` on the bound alone, when it stays within the budget.
    pub(super) fn admit_within_bound(&mut self, partition: i32, bytes: u64) -> bool {
        let slot = usize::try_from(partition).ok().and_then(|i| self.bound.get_mut(i));
        match slot {
            Some(Some(bound)) if *bound + bytes <= BUDGET => {
                *bound += bytes;
                true
            }
            _ => false,
        }
    }

    /// Records a measurement: `held` bytes (unconsumed plus in flight, including an
    /// admitted frame), or `None` to measure again next time.
    pub(super) fn set_bound(&mut self, partition: i32, held: Option<u64>) {
        if let Some(slot) = usize::try_from(partition).ok().and_then(|i| self.bound.get_mut(i)) {
            *slot = held;
        }
    }

    /// The detector group whose committed offsets free room.
    pub(super) fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The partition a record with `key` goes to: murmur2, as the Java clients and
    /// librdkafka's `murmur2_random` compute it (the guard sets it explicitly, so that it
    /// knows which partition it counts against).
    pub(super) fn partition_of(&self, key: &[u8]) -> i32 {
        partition_for(key, self.partitions)
    }

    /// Unconsumed bytes in `partition` now (blocking): reads the partition to its end and
    /// the group's committed offset. `None` when either could not be read in time.
    pub(super) fn unconsumed(&mut self, partition: i32) -> Option<u64> {
        let timeout = self.kafka.operation_timeout();
        let i = usize::try_from(partition).ok()?;
        if !*self.reading.get(i)? {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, partition, Offset::Beginning).ok()?;
            self.reader.incremental_assign(&tpl).ok()?;
            self.reading[i] = true;
        }
        let (low, high) = self.reader.fetch_watermarks(&self.topic, partition, timeout).ok()?;
        let deadline = Instant::now() + timeout;
        while self.next[i].max(low) < high {
            if Instant::now() >= deadline {
                return None;
            }
            if let Some(Ok(m)) = self.reader.poll(Duration::from_millis(100)) {
                let headers =
                    m.headers().map_or(0, |h| h.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum());
                let bytes = record_bytes(m.key_len(), m.payload_len(), headers);
                let j = usize::try_from(m.partition()).ok()?;
                self.sizes.get_mut(j)?.insert(m.offset(), bytes);
                self.next[j] = self.next[j].max(m.offset() + 1);
            }
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        let committed = self.group.committed_offsets(tpl, timeout).ok()?;
        // No committed offset: the group has read nothing, all that is left is unconsumed.
        let from = committed
            .find_partition(&self.topic, partition)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(low)
            .max(low);
        let sizes = &mut self.sizes[i];
        *sizes = sizes.split_off(&from);
        Some(sizes.values().sum())
    }
}

/// Whether `bytes` more may go to a partition that holds `unconsumed` bytes and this
/// producer's `in_flight` bytes.
pub(super) fn admits(unconsumed: u64, in_flight: u64, bytes: u64) -> bool {
    let held = unconsumed + in_flight;
    held == 0 || held + bytes <= BUDGET
}

/// The partition of `partitions` a record keyed `key` goes to under `murmur2_random`
/// (what `vigil produce` and `vigil serve` set, as the Java clients do).
pub(crate) fn partition_for(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub(super) fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()) as i32, expected, "{input}");
        }
    }

    #[test]
    fn admits_within_the_budget_or_into_an_empty_partition() {
        assert!(admits(0, 0, 10 * MOCK_PARTITION_BYTES), "a large frame goes when nothing waits");
        assert!(admits(BUDGET - 100, 0, 100));
        assert!(!admits(BUDGET - 100, 0, 101));
        assert!(!admits(0, BUDGET, 1), "frames in flight count");
        assert!(!admits(1, 0, BUDGET));
    }
}
