//! Why an audit could not be carried out.

use crate::kafka::KafkaPlumbingError;

/// Why the audit could not be carried out (a mismatch is not an error: see
/// [`VerifyReport::exact`](super::VerifyReport::exact)).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Kafka(#[from] KafkaPlumbingError),
    #[error("reading {topic}: {reason}")]
    Read { topic: String, reason: String },
    #[error("database {url}: {reason}")]
    Database { url: String, reason: String },
    #[error("the audit was interrupted")]
    Interrupted,
    #[error("the audit task did not complete: {0}")]
    Task(tokio::task::JoinError),
}

impl VerifyError {
    /// Whether the command was used wrongly (exit code 2) rather than failing at run time.
    pub fn is_usage(&self) -> bool {
        matches!(self, VerifyError::Kafka(e) if e.is_usage())
    }
}
