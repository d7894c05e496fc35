//! Sink errors: what failed and what to do about it.

/// Failures of the database behind the sink.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL `{url}` is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot open SQLite database {path}: {source}; check that the directory exists and is writable")]
    SqliteOpen {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("SQLite error while {context}: {source}")]
    Sqlite {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot connect to PostgreSQL: {source}; check the URL, that the server runs and accepts this user")]
    PostgresConnect {
        #[source]
        source: postgres::Error,
    },
    #[error("PostgreSQL error while {context}: {source}")]
    Postgres {
        context: &'static str,
        #[source]
        source: postgres::Error,
    },
    #[error("database schema is at version {found}, newer than this binary knows ({known}); upgrade vigil")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the database worker thread has stopped")]
    WorkerGone,
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (connection lost, lock
    /// timeout), as opposed to a configuration or schema problem.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            StoreError::Postgres { source, .. } => source.is_closed() || source.code().is_none(),
            StoreError::PostgresConnect { .. } => true,
            _ => false,
        }
    }
}

/// Failures of the sink stage.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kafka consumer error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("could not read the stored offsets for the assigned partitions: {0}; the sink stops rather than read from a wrong position")]
    AssignOffsets(String),
    #[error("invalid sink configuration: {0}")]
    Config(String),
}
