//! Producer configuration (the `[producer]` section, used by `vigil produce` and `vigil up`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How `vigil produce` publishes frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Source (camera) id used as record key when `--source` is not given: not blank, at
    /// most 255 bytes of UTF-8, no control characters (the input contract, `codec::contract`).
    pub source_id: String,
    /// Publishing rate, frames per second; 0 = as fast as the broker accepts.
    pub frames_per_second: f64,
    /// librdkafka `linger.ms`: how long records wait to be batched, milliseconds.
    pub linger_ms: u64,
    /// librdkafka `message.timeout.ms`: a record not acknowledged within this time is
    /// reported as failed (after the idempotent producer's retries), milliseconds.
    pub delivery_timeout_ms: u64,
    /// Most records awaiting acknowledgement before `produce` waits (memory bound).
    pub max_in_flight: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            source_id: "cam-0".into(),
            frames_per_second: 0.0,
            linger_ms: 5,
            delivery_timeout_ms: 60_000,
            max_in_flight: 256,
        }
    }
}

impl ProducerConfig {
    /// Time between frames, or `None` when unthrottled.
    pub fn frame_interval(&self) -> Option<Duration> {
        (self.frames_per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / self.frames_per_second))
    }

    /// Checks values; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        // The input contract, so that a bad --source stops before anything is sent.
        crate::codec::contract::check_source(&self.source_id).map_err(|e| ("producer.source_id", e.to_string()))?;
        if !self.frames_per_second.is_finite() || self.frames_per_second < 0.0 || self.frames_per_second > 1_000_000.0 {
            return Err(("producer.frames_per_second", format!("{} is outside 0..=1000000", self.frames_per_second)));
        }
        if self.delivery_timeout_ms < 1_000 {
            return Err(("producer.delivery_timeout_ms", format!("{} is below 1000", self.delivery_timeout_ms)));
        }
        if self.max_in_flight == 0 {
            return Err(("producer.max_in_flight", "must be >= 1".into()));
        }
        Ok(())
    }
}
