//! Whether a stage's process is alive and whether it can do its work right now, for
//! `/healthz` and `/readyz` (see `http`).
//!
//! The two answer different questions, so an orchestrator acts differently on them:
//! **alive** means the stage's main loop is still turning (it beats at least every
//! [`BEAT_EVERY`]); a process that stops beating for [`LIVENESS_WINDOW`] is stuck and is
//! better restarted. It never depends on the broker or the database: restarting a worker
//! because its broker is away would only add a rebalance. **Ready** means the stage can
//! work now (model loaded, group joined, backend and database answering); a worker that
//! is not ready keeps running and is taken out of load balancing and rollouts, not
//! restarted.
//!
//! Shared through an `Arc`: the stage writes, readers on any thread read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a stage's loop beats at least, also while idle.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a loop may go without a beat and still count as alive: longer than anything
/// a loop waits for in one step (a batch on a slow CPU, a 10 s broker request, a backoff).
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(60);

/// A stage's liveness and readiness and, when not ready, why.
#[derive(Debug, Clone)]
pub struct Health {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The stage's own readiness; `is_ready` also needs a reachable broker.
    ready: AtomicBool,
    reason: Mutex<String>,
    /// Whether librdkafka's last statistics showed a broker connection up (see
    /// `kafka::stats`); kept apart so that the stage's own reasons survive an outage.
    broker_reachable: AtomicBool,
    started: Instant,
    /// Milliseconds from `started` to the last beat.
    last_beat_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// Alive (a process that has just started has not had time to get stuck) and not
    /// ready ("starting").
    pub fn new() -> Self {
        Health {
            shared: Arc::new(Shared {
                ready: AtomicBool::new(false),
                reason: Mutex::new("starting".into()),
                broker_reachable: AtomicBool::new(true),
                started: Instant::now(),
                last_beat_ms: AtomicU64::new(0),
            }),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) && self.shared.broker_reachable.load(Ordering::Acquire)
    }

    /// Why the stage is not ready; `None` when it is.
    pub fn reason(&self) -> Option<String> {
        if !self.shared.ready.load(Ordering::Acquire) {
            return Some(self.shared.reason.lock().unwrap_or_else(|p| p.into_inner()).clone());
        }
        (!self.shared.broker_reachable.load(Ordering::Acquire)).then(|| "no Kafka broker reachable".to_owned())
    }

    /// Whether a broker connection is up, from the Kafka client's statistics.
    pub(crate) fn set_broker_reachable(&self, reachable: bool) {
        self.shared.broker_reachable.store(reachable, Ordering::Release);
    }

    pub fn set_ready(&self) {
        self.shared.ready.store(true, Ordering::Release);
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.shared.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.into();
        self.shared.ready.store(false, Ordering::Release);
    }

    /// The stage's loop turned.
    pub(crate) fn beat(&self) {
        let ms = self.shared.started.elapsed().as_millis() as u64;
        self.shared.last_beat_ms.store(ms, Ordering::Release);
    }

    /// Time since the last beat (since the start before the first one).
    pub fn since_beat(&self) -> Duration {
        let last = Duration::from_millis(self.shared.last_beat_ms.load(Ordering::Acquire));
        self.shared.started.elapsed().saturating_sub(last)
    }

    /// Whether the loop beat within [`LIVENESS_WINDOW`].
    pub fn is_alive(&self) -> bool {
        self.since_beat() < LIVENESS_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_carries_its_reason() {
        let health = Health::new();
        assert_eq!(health.reason().as_deref(), Some("starting"));
        health.set_ready();
        assert!(health.is_ready());
        assert_eq!(health.reason(), None);
        health.set_not_ready("database unavailable");
        assert_eq!(health.reason().as_deref(), Some("database unavailable"));
    }

    #[test]
    fn a_lost_broker_adds_to_the_stage_own_readiness() {
        let health = Health::new();
        health.set_ready();
        health.set_broker_reachable(false);
        assert!(!health.is_ready());
        assert_eq!(health.reason().as_deref(), Some("no Kafka broker reachable"));
        health.set_not_ready("model backend failing");
        assert_eq!(health.reason().as_deref(), Some("model backend failing"));
        health.set_broker_reachable(true);
        assert_eq!(health.reason().as_deref(), Some("model backend failing"), "the stage's reason stays");
        health.set_ready();
        assert!(health.is_ready());
    }

    #[test]
    fn a_beat_resets_the_time_since_the_last_one() {
        let health = Health::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(health.since_beat() >= Duration::from_millis(30));
        assert!(health.is_alive());
        health.beat();
        assert!(health.since_beat() < Duration::from_millis(30));
    }
}
