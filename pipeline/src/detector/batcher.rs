//! Dynamic batching: the records read but not yet handed to the model.
//!
//! A batch is due when it holds `max_batch` records, when the consumer had nothing more to
//! give when last asked (the input is drained: waiting would only add latency), or when
//! `max_wait` has passed since its first record arrived, the bound on how long a batch
//! waits for company while records keep arriving (Triton's dynamic batcher: a queue delay
//! bound, not a fixed wait). The loop submits a due batch only when the model is free, so
//! under load batches fill while the model works. While the model is busy the loop keeps
//! reading, up to [`HOLD_BATCHES`] batches, then stops reading (librdkafka's prefetch
//! queue, bounded by `queued.max.messages.kbytes`, holds what follows). A batch that runs
//! long pauses the assigned partitions instead (polling goes on, so rebalances and
//! `max.poll.interval.ms` are served); they are resumed once no more than one batch is
//! pending. Pausing after every batch and resuming after each commit made every batch wait
//! for a fresh fetch: 160 ms to 700 ms a batch on the embedded broker.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::model_thread::InputRecord;

/// Batches' worth of records read ahead before the partitions are paused: the one the
/// model takes next and more that cover a resumed partition's first fetch.
pub(crate) const HOLD_BATCHES: usize = 3;

/// Pending records, the first one's arrival time, and whether partitions are paused.
#[derive(Debug)]
pub(crate) struct Batcher {
    max_batch: usize,
    max_wait: Duration,
    pending: VecDeque<InputRecord>,
    first_at: Option<Instant>,
    /// The consumer's queue was empty after the last record was pushed.
    drained: bool,
    paused: bool,
}

impl Batcher {
    pub(crate) fn new(max_batch: usize, max_wait: Duration) -> Self {
        Batcher {
            max_batch: max_batch.max(1),
            max_wait,
            pending: VecDeque::new(),
            first_at: None,
            drained: false,
            paused: false,
        }
    }

    /// Adds a record read from the consumer.
    pub(crate) fn push(&mut self, record: InputRecord) {
        self.pending.push_back(record);
        self.first_at.get_or_insert_with(Instant::now);
        self.drained = false;
    }

    /// The consumer holds no further record right now.
    pub(crate) fn input_drained(&mut self) {
        self.drained = true;
    }

    /// Whether a batch should go to the model now: full, nothing more to read, or its wait
    /// is over.
    pub(crate) fn due(&self) -> bool {
        !self.pending.is_empty()
            && (self.full() || self.drained || self.first_at.is_some_and(|t| t.elapsed() >= self.max_wait))
    }

    /// At least `max_batch` records are waiting: stop reading (or pause) until the model
    /// takes them.
    pub(crate) fn full(&self) -> bool {
        self.pending.len() >= self.max_batch
    }

    /// [`HOLD_BATCHES`] batches are waiting: stop reading (pause) until the model has
    /// taken some.
    pub(crate) fn brimming(&self) -> bool {
        self.pending.len() >= self.max_batch * HOLD_BATCHES
    }

    /// At most one batch is waiting: paused partitions should be read again now, while
    /// that batch keeps the model busy.
    pub(crate) fn running_low(&self) -> bool {
        self.pending.len() <= self.max_batch
    }

    /// Takes the next batch (at most `max_batch` records); the rest starts a new wait.
    pub(crate) fn take(&mut self) -> Vec<InputRecord> {
        let n = self.pending.len().min(self.max_batch);
        let batch: Vec<InputRecord> = self.pending.drain(..n).collect();
        self.first_at = (!self.pending.is_empty()).then(Instant::now);
        batch
    }

    /// When the pending batch becomes due by time; `None` when nothing is pending.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.max_wait)
    }

    /// Keeps only the records for which `keep` holds; returns how many were dropped.
    pub(crate) fn retain(&mut self, keep: impl Fn(&InputRecord) -> bool) -> usize {
        let before = self.pending.len();
        self.pending.retain(|r| keep(r));
        if self.pending.is_empty() {
            self.first_at = None;
        }
        before - self.pending.len()
    }

    /// The lowest offset per partition among `failed` and the pending records, and
    /// forgets the pending records of those partitions: a rewound partition is read
    /// again from there.
    pub(crate) fn rewind_from(&mut self, failed: &[InputRecord]) -> BTreeMap<i32, i64> {
        let mut from: BTreeMap<i32, i64> = BTreeMap::new();
        for r in failed.iter().chain(self.pending.iter()) {
            let e = from.entry(r.partition).or_insert(r.offset);
            *e = (*e).min(r.offset);
        }
        self.retain(|r| !from.contains_key(&r.partition));
        from
    }

    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64) -> InputRecord {
        InputRecord {
            partition,
            offset,
            key: None,
            payload: None,
            headers: vec![],
            epoch: 0,
            timestamp_ms: None,
            trace: Default::default(),
        }
    }

    #[test]
    fn due_when_full_or_when_the_wait_is_over() {
        let wait = Duration::from_millis(30);
        let mut b = Batcher::new(3, wait);
        assert!(!b.due() && b.deadline().is_none());
        b.push(rec(0, 1));
        b.push(rec(0, 2));
        assert!(!b.due(), "neither full nor drained nor waited out");
        std::thread::sleep(wait);
        assert!(b.due(), "the wait is over");
        b.push(rec(0, 3));
        b.push(rec(1, 7));
        assert!(b.full());
        let batch = b.take();
        assert_eq!(batch.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(!b.full(), "one record left");
        let deadline = b.deadline().expect("the leftover record starts a new wait");
        assert!(deadline > Instant::now() + wait / 2, "a fresh wait, not the old one");
        assert_eq!(b.take().len(), 1);
        assert!(b.deadline().is_none());
    }

    #[test]
    fn due_at_once_when_the_input_is_drained() {
        let mut b = Batcher::new(8, Duration::from_secs(60));
        b.input_drained();
        assert!(!b.due(), "nothing pending");
        b.push(rec(0, 1));
        assert!(!b.due(), "more may be coming");
        b.input_drained();
        assert!(b.due(), "nothing more to read: waiting would only add latency");
        b.push(rec(0, 2));
        assert!(!b.due(), "a new record: the consumer is asked again");
    }

    #[test]
    fn rewind_reports_the_lowest_offsets_and_forgets_those_partitions() {
        let mut b = Batcher::new(8, Duration::from_millis(50));
        b.push(rec(0, 12));
        b.push(rec(2, 40));
        let from = b.rewind_from(&[rec(0, 10), rec(0, 11), rec(1, 5)]);
        assert_eq!(from.into_iter().collect::<Vec<_>>(), [(0, 10), (1, 5), (2, 40)]);
        assert!(b.take().is_empty());
    }

    #[test]
    fn retain_drops_and_counts() {
        let mut b = Batcher::new(8, Duration::from_millis(50));
        b.push(rec(0, 1));
        b.push(rec(1, 1));
        assert_eq!(b.retain(|r| r.partition == 1), 1);
        assert_eq!(b.retain(|_| false), 1);
        assert!(b.deadline().is_none(), "empty: no deadline");
    }
}
