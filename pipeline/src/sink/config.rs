//! Sink configuration (the `[sink]` section).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The sink stage: `detections` (read_committed) → database rows + offsets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `sqlite://PATH` (embedded) or `postgres://user:pass@host:port/db`.
    pub database_url: String,
    /// Consumer group of the sink (offsets are stored in the database under this name).
    pub group_id: String,
    /// Most results written per database transaction.
    pub max_batch: usize,
    /// Longest wait for a batch to fill after its first result arrived, milliseconds, while
    /// more keep arriving: a batch goes as soon as the consumer has nothing more to give.
    pub max_wait_ms: u64,
    /// Kafka `session.timeout.ms` of the consumer (default: 6 s, the lowest a stock broker
    /// accepts; see `detector.session_timeout_ms`).
    pub session_timeout_ms: u64,
    /// How long the sink keeps retrying an unavailable database (reconnecting with
    /// backoff) before it stops with an error, milliseconds: long enough for a database
    /// restart or failover, short enough that a restart policy sees a lasting outage.
    pub db_outage_limit_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            database_url: "sqlite://vigil.sqlite".into(),
            group_id: "vigil-sink".into(),
            max_batch: 500,
            max_wait_ms: 200,
            session_timeout_ms: 6_000,
            db_outage_limit_ms: 240_000,
        }
    }
}

impl SinkConfig {
    /// `max_wait_ms` as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// `db_outage_limit_ms` as a duration.
    pub fn db_outage_limit(&self) -> Duration {
        Duration::from_millis(self.db_outage_limit_ms)
    }

    /// Checks values; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.database_url.starts_with("sqlite://")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err((
                "sink.database_url",
                format!("{:?}: expected sqlite://PATH or postgres://…", self.database_url),
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(("sink.group_id", "must not be empty".into()));
        }
        if !(1..=100_000).contains(&self.max_batch) {
            return Err(("sink.max_batch", format!("{} is outside 1..=100000", self.max_batch)));
        }
        if self.session_timeout_ms < 1_000 {
            return Err(("sink.session_timeout_ms", format!("{} is below 1000", self.session_timeout_ms)));
        }
        if self.db_outage_limit_ms < 1_000 {
            return Err(("sink.db_outage_limit_ms", format!("{} is below 1000", self.db_outage_limit_ms)));
        }
        Ok(())
    }
}
