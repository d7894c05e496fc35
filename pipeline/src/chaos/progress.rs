//! Progress seen from outside: what was sent per `images` partition (the frame stream's
//! delivery reports) against what the database holds per `source_partition`, sampled
//! every ~50 ms; times to recovery and stalls are computed from these samples (the
//! definitions are in the `chaos` module docs).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the database is polled.
const EVERY: Duration = Duration::from_millis(50);
/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The state of every partition at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Milliseconds since the scenario started.
    pub at_ms: u64,
    /// Next offset of `images` per partition, from delivery reports (what was sent).
    pub sent: Vec<i64>,
    /// Rows stored per source partition.
    pub rows: Vec<u64>,
    /// 1 + the highest `source_offset` stored per partition (0: none).
    pub stored: Vec<i64>,
}

impl Sample {
    /// Whether partition `p` has input that the database does not reflect yet.
    fn waiting(&self, p: usize) -> bool {
        self.sent[p] > self.stored[p]
    }
}

/// Time from a fault at `fault_ms` until every affected partition has recovered; `None`
/// when one never did. A partition that had input waiting at the fault recovers when
/// what was waiting is stored (its stored offsets reach what had been sent at the
/// fault: a row from work begun before the fault is not recovery); one sent input only
/// after the fault, when a row for an offset sent after the fault is stored.
pub(crate) fn recovery_ms(samples: &[Sample], fault_ms: u64) -> Option<u64> {
    let start = samples.iter().position(|s| s.at_ms >= fault_ms)?;
    let (base, last) = (&samples[start], samples.last()?);
    let mut worst = 0;
    for p in 0..base.sent.len() {
        let needed = if base.waiting(p) {
            base.sent[p]
        } else if last.sent[p] > base.sent[p] {
            base.sent[p] + 1
        } else {
            continue;
        };
        let first = samples[start + 1..].iter().find(|s| s.stored[p] >= needed)?;
        worst = worst.max(first.at_ms - fault_ms);
    }
    Some(worst)
}

/// Time from a detector fault at `fault_us` (wall clock) until each partition it owned has
/// a stored row for a frame inferred after the fault: the partitions are served again.
/// `None` when one never was. Shorter than [`recovery_ms`], which also waits for the
/// backlog the outage built up to drain.
pub(crate) fn first_result_ms(probe: &mut DbProbe, fault_us: i64, partitions: &[i32]) -> Option<u64> {
    let mut worst = 0;
    for p in partitions {
        let stored = probe.first_stored_after(*p, fault_us)?;
        worst = worst.max(u64::try_from(stored - fault_us).unwrap_or(0) / 1000);
    }
    Some(worst)
}

/// The longest time any partition had input waiting while storing no new row.
pub(crate) fn max_stall_ms(samples: &[Sample]) -> u64 {
    let Some(first) = samples.first() else { return 0 };
    let mut since: Vec<Option<u64>> = vec![None; first.sent.len()];
    let mut worst = 0;
    for pair in samples.windows(2) {
        let (prev, now) = (&pair[0], &pair[1]);
        for (p, since) in since.iter_mut().enumerate() {
            if now.rows[p] > prev.rows[p] || !now.waiting(p) {
                *since = now.waiting(p).then_some(now.at_ms);
            } else if since.is_none() {
                *since = Some(prev.at_ms);
            }
            if let Some(t) = since {
                worst = worst.max(now.at_ms - *t);
            }
        }
    }
    worst
}

/// Reads rows per partition from the sink's database (SQLite or PostgreSQL).
pub(crate) struct DbProbe {
    url: String,
    pg: Option<postgres::Client>,
}

impl DbProbe {
    pub(crate) fn new(url: &str) -> DbProbe {
        DbProbe { url: url.to_string(), pg: None }
    }

    /// `(partition, rows, max source_offset)` for every partition with rows; empty while
    /// the database or table does not exist yet, or cannot be reached.
    pub(crate) fn per_partition(&mut self) -> Vec<(i64, i64, i64)> {
        const SQL: &str = "SELECT CAST(source_partition AS BIGINT), CAST(COUNT(*) AS BIGINT), \
                           CAST(MAX(source_offset) AS BIGINT) FROM detections GROUP BY source_partition";
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let Ok(conn) = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            else {
                return Vec::new();
            };
            if conn.busy_timeout(Duration::from_secs(5)).is_err() {
                return Vec::new();
            }
            let Ok(mut stmt) = conn.prepare(SQL) else { return Vec::new() };
            return stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map(|rows| rows.flatten().collect())
                .unwrap_or_default();
        }
        if self.pg.is_none() {
            self.pg = postgres::Client::connect(&self.url, postgres::NoTls).ok();
        }
        let Some(client) = self.pg.as_mut() else { return Vec::new() };
        match client.query(SQL, &[]) {
            Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(),
            Err(e) => {
                // A restarted server, or the table not there yet: reconnect next time
                // unless it is only the table.
                if e.code().is_none() {
                    self.pg = None;
                }
                Vec::new()
            }
        }
    }

    /// When partition `partition` had its first row stored for a frame inferred after
    /// `after_us` (wall clock, microseconds); `None` when it has none (or on an error).
    pub(crate) fn first_stored_after(&mut self, partition: i32, after_us: i64) -> Option<i64> {
        const SQL: &str = "SELECT CAST(MIN(stored_at_us) AS BIGINT) FROM detections \
                           WHERE CAST(source_partition AS BIGINT) = $1 AND processed_at_us > $2";
        let partition = i64::from(partition);
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
            return conn.query_row(SQL, rusqlite::params![partition, after_us], |r| r.get(0)).ok().flatten();
        }
        if self.pg.is_none() {
            self.pg = postgres::Client::connect(&self.url, postgres::NoTls).ok();
        }
        let row = self.pg.as_mut()?.query_one(SQL, &[&partition, &after_us]).ok()?;
        row.get(0)
    }

    /// Total rows.
    pub(crate) fn rows(&mut self) -> u64 {
        self.per_partition().iter().map(|(_, n, _)| *n as u64).sum()
    }
}

/// The sampler thread and what it saw.
pub(crate) struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Polls `url` every 50 ms against `sent` (updated by the frame stream) until stopped;
    /// prints a progress line for `label` on stderr every 10 s.
    pub(crate) fn start(
        label: &str,
        url: &str,
        partitions: usize,
        sent: Arc<Mutex<Vec<i64>>>,
        started: Instant,
    ) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
        let stop = CancellationToken::new();
        let (out, token, mut probe) = (samples.clone(), stop.clone(), DbProbe::new(url));
        let label = label.to_string();
        let mut printed = Instant::now();
        let thread = std::thread::spawn(move || {
            while !token.is_cancelled() {
                if printed.elapsed() >= PROGRESS_EVERY {
                    printed = Instant::now();
                    if let Some(last) = out.lock().ok().and_then(|s| s.last().cloned()) {
                        let sent: i64 = last.sent.iter().sum();
                        let rows: u64 = last.rows.iter().sum();
                        eprintln!(
                            "chaos: {label}: {:.0} s, {sent} frames sent, {rows} rows stored",
                            last.at_ms as f64 / 1e3
                        );
                    }
                }
                let at_ms = started.elapsed().as_millis() as u64;
                let sent = sent.lock().map(|s| s.clone()).unwrap_or_else(|_| vec![0; partitions]);
                let mut sample = Sample { at_ms, sent, rows: vec![0; partitions], stored: vec![0; partitions] };
                for (p, n, max) in probe.per_partition() {
                    if let Ok(p) = usize::try_from(p) {
                        if p < partitions {
                            sample.rows[p] = n as u64;
                            sample.stored[p] = max + 1;
                        }
                    }
                }
                if let Ok(mut all) = out.lock() {
                    all.push(sample);
                }
                std::thread::sleep(EVERY);
            }
        });
        Sampler { samples, stop, thread: Some(thread) }
    }

    /// Rows stored at the last sample.
    pub(crate) fn rows(&self) -> u64 {
        self.samples.lock().ok().and_then(|s| s.last().map(|s| s.rows.iter().sum())).unwrap_or(0)
    }

    /// Whether some partition has input waiting at the last sample (a batch in flight).
    pub(crate) fn in_flight(&self) -> bool {
        self.samples
            .lock()
            .ok()
            .and_then(|s| s.last().map(|s| (0..s.sent.len()).any(|p| s.waiting(p))))
            .unwrap_or(false)
    }

    /// Whether every partition has recovered from a fault at `fault_ms` (see [`recovery_ms`]).
    pub(crate) fn recovered(&self, fault_ms: u64) -> bool {
        self.samples.lock().is_ok_and(|s| recovery_ms(&s, fault_ms).is_some())
    }

    /// Stops the thread and returns every sample.
    pub(crate) fn finish(&mut self) -> Vec<Sample> {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            t.join().ok(); // a panicked sampler leaves what it gathered
        }
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u64, sent: [i64; 2], rows: [u64; 2], stored: [i64; 2]) -> Sample {
        Sample { at_ms, sent: sent.to_vec(), rows: rows.to_vec(), stored: stored.to_vec() }
    }

    #[test]
    fn recovery_waits_for_every_affected_partition() {
        let samples = [
            s(0, [5, 5], [5, 5], [5, 5]),
            s(100, [6, 6], [5, 5], [5, 5]), // fault at 100: both waiting
            s(200, [6, 6], [6, 5], [6, 5]), // partition 0 recovers
            s(900, [6, 6], [6, 6], [6, 6]), // partition 1 recovers
        ];
        assert_eq!(recovery_ms(&samples, 100), Some(800));
        // The first sample at or after the fault is the base; the time counts from the fault.
        assert_eq!(recovery_ms(&samples, 50), Some(850));
    }

    #[test]
    fn rows_from_work_before_the_fault_are_not_recovery() {
        // At the fault partition 0 had offsets 5..10 waiting; a row for offset 5 (work
        // begun before the fault) is not recovery: offset 9 stored is.
        let samples =
            [s(100, [10, 5], [5, 5], [5, 5]), s(200, [10, 5], [6, 5], [6, 5]), s(900, [10, 5], [10, 5], [10, 5])];
        assert_eq!(recovery_ms(&samples, 100), Some(800));
        // A partition sent input only after the fault recovers with a row for an offset
        // sent after it, not with a late row for an older one.
        let samples = [
            s(0, [5, 5], [4, 5], [5, 5]),
            s(100, [5, 7], [5, 5], [5, 5]),
            s(300, [5, 7], [5, 6], [5, 5]),
            s(700, [5, 7], [5, 7], [5, 7]),
        ];
        assert_eq!(recovery_ms(&samples, 0), Some(700));
    }

    #[test]
    fn a_partition_that_never_stores_again_is_not_recovered() {
        let samples = [s(0, [6, 6], [5, 5], [5, 5]), s(100, [6, 6], [6, 5], [6, 5])];
        assert_eq!(recovery_ms(&samples, 0), None);
        assert_eq!(recovery_ms(&samples, 1_000), None, "no sample after the fault");
    }

    #[test]
    fn idle_partitions_do_not_delay_recovery() {
        let samples = [s(0, [6, 5], [5, 5], [5, 5]), s(300, [6, 5], [6, 5], [6, 5])];
        assert_eq!(recovery_ms(&samples, 0), Some(300));
        // Input sent after the fault counts.
        let samples = [s(0, [5, 5], [5, 5], [5, 5]), s(100, [5, 6], [5, 5], [5, 5]), s(400, [5, 6], [5, 6], [5, 6])];
        assert_eq!(recovery_ms(&samples, 0), Some(400));
    }

    #[test]
    fn a_stall_is_input_waiting_without_new_rows() {
        let samples = [
            s(0, [1, 0], [1, 0], [1, 0]),
            s(100, [3, 0], [1, 0], [1, 0]), // waiting from here (prev sample at 0)
            s(500, [3, 0], [1, 0], [1, 0]),
            s(700, [3, 0], [2, 0], [2, 0]), // progress: restarts the clock, still waiting
            s(800, [3, 0], [3, 0], [3, 0]), // drained
            s(5_000, [3, 0], [3, 0], [3, 0]), // idle is no stall
        ];
        assert_eq!(max_stall_ms(&samples), 500);
        assert_eq!(max_stall_ms(&samples[..1]), 0);
        assert_eq!(max_stall_ms(&[]), 0);
    }
}
