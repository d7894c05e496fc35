//! How a failed command ends the process: the error's own say on whether it was a usage
//! mistake (exit 2) or a run-time failure (exit 1).

use super::{EXIT_RUNTIME, EXIT_USAGE};

/// A command that failed.
#[derive(Debug)]
pub(crate) struct Failure {
    error: anyhow::Error,
    usage: bool,
}

impl Failure {
    /// A run-time failure (exit code 1).
    pub(crate) fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Failure { error: error.into(), usage: false }
    }

    /// A usage mistake the argument parser cannot see (exit code 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure { error: anyhow::Error::msg(message.into()), usage: true }
    }

    /// Prints the error on stderr and returns the exit code.
    pub(crate) fn report(self) -> u8 {
        eprintln!("vigil: {:#}", self.error);
        if self.usage {
            EXIT_USAGE
        } else {
            EXIT_RUNTIME
        }
    }
}

/// The library's errors say whether they are usage mistakes (a method on each error).
pub(crate) trait Classified: std::error::Error + Send + Sync + 'static {
    fn is_usage(&self) -> bool;
}

impl<E: Classified> From<E> for Failure {
    fn from(error: E) -> Self {
        let usage = error.is_usage();
        Failure { error: error.into(), usage }
    }
}

macro_rules! classified {
    ($($ty:ty),* $(,)?) => {
        $(impl Classified for $ty {
            fn is_usage(&self) -> bool {
                <$ty>::is_usage(self)
            }
        })*
    };
}

classified!(
    vigil::producer::ProducerError,
    vigil::detector::DetectorError,
    vigil::sink::SinkError,
    vigil::up::UpError,
    vigil::tail::TailError,
    vigil::verify::VerifyError,
    vigil::kafka::KafkaPlumbingError,
    vigil::chaos::ChaosError,
    vigil::bench::BenchError,
    vigil::http::HttpError,
    vigil::api::ApiError,
);

#[cfg(test)]
mod tests {
    use vigil::producer::ProducerError;
    use vigil::up::UpError;

    use super::*;

    #[test]
    fn the_error_decides_the_exit_code() {
        // `vigil up` with no samples is a usage mistake, like `vigil produce` without inputs.
        assert_eq!(Failure::from(UpError::from(ProducerError::NothingToSend)).report(), EXIT_USAGE);
        assert_eq!(Failure::from(ProducerError::NothingToSend).report(), EXIT_USAGE);
        // A thread that cannot start is not the user's fault.
        let spawn = ProducerError::SpawnReader(std::io::Error::other("no threads left"));
        assert_eq!(Failure::from(spawn).report(), EXIT_RUNTIME);
        let config = rdkafka::error::KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "no.such.property".into(),
            "x".into(),
            "unknown".into(),
        );
        let bad_property = vigil::kafka::KafkaPlumbingError::Client { role: "consumer", cause: config };
        assert_eq!(Failure::from(bad_property).report(), EXIT_USAGE);
        assert_eq!(Failure::runtime(std::io::Error::other("disk full")).report(), EXIT_RUNTIME);
    }
}
