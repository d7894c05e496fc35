//! Whether a detector worker can do its work right now, for whoever asks (a health
//! endpoint, a later issue; today the loop logs the changes).
//!
//! Not ready: before the loop runs, while the model backend fails (the worker commits
//! nothing and retries, see `batch_loop`), and once it stops. Shared through an `Arc`:
//! the loop writes, readers on any thread read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A worker's readiness and, when not ready, why.
#[derive(Debug, Clone)]
pub struct Readiness {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// Not ready (starting).
    pub fn new() -> Self {
        Readiness { shared: Arc::new(Shared { ready: AtomicBool::new(false), reason: Mutex::new("starting".into()) }) }
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Why the worker is not ready; `None` when it is.
    pub fn reason(&self) -> Option<String> {
        let reason = self.shared.reason.lock().unwrap_or_else(|p| p.into_inner());
        (!self.is_ready()).then(|| reason.clone())
    }

    pub(crate) fn set_ready(&self) {
        self.shared.ready.store(true, Ordering::Release);
    }

    pub(crate) fn set_not_ready(&self, reason: impl Into<String>) {
        *self.shared.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.into();
        self.shared.ready.store(false, Ordering::Release);
    }
}
