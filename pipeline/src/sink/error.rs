//! Sink errors: what failed and what to do about it.

/// Failures of the database behind the sink.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL `{url}` is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot open SQLite database {path}: {cause}; check that the directory exists and is writable")]
    SqliteOpen { path: String, cause: rusqlite::Error },
    #[error("SQLite error while {context}: {cause}")]
    Sqlite { context: &'static str, cause: rusqlite::Error },
    #[error("cannot connect to PostgreSQL: {cause}; check the URL, that the server runs and accepts this user")]
    PostgresConnect { cause: postgres::Error },
    #[error("PostgreSQL error while {context}: {}", postgres_reason(.cause))]
    Postgres { context: &'static str, cause: postgres::Error },
    #[error("database schema is at version {found}, newer than this binary knows ({known}); upgrade vigil")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the database worker thread has stopped")]
    WorkerGone,
    #[error("the database thread failed: {0}")]
    Thread(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (connection lost, lock
    /// timeout), as opposed to a configuration or schema problem.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite { cause, .. } => matches!(
                cause.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            StoreError::Postgres { cause, .. } => cause.code().is_none() || self.is_connection_lost(),
            StoreError::PostgresConnect { .. } => true,
            _ => false,
        }
    }

    /// Whether the connection to the database is gone, so that only a new one can go on:
    /// a closed socket, SQLSTATE class 08 (connection exception), or the server ending the
    /// session (57P01 admin shutdown, as `pg_terminate_backend` or a fast shutdown send;
    /// 57P02 crash shutdown; 57P03 cannot connect now).
    pub fn is_connection_lost(&self) -> bool {
        match self {
            StoreError::Postgres { cause, .. } => {
                cause.is_closed()
                    || cause
                        .code()
                        .is_some_and(|c| c.code().starts_with("08") || matches!(c.code(), "57P01" | "57P02" | "57P03"))
            }
            StoreError::PostgresConnect { .. } => true,
            _ => false,
        }
    }

    /// Whether the database refused the data of a row (a value it cannot hold, a
    /// constraint, a size limit) rather than failing as a whole: SQLite's constraint,
    /// too-big and type-mismatch errors, PostgreSQL's SQLSTATE classes 22 (data
    /// exception), 23 (integrity constraint) and 54 (program limit, e.g. an index entry
    /// too large). Retrying such a row fails the same way every time, so the sink sets it
    /// aside instead.
    pub fn is_row_refused(&self) -> bool {
        match self {
            StoreError::Sqlite { cause, .. } => matches!(
                cause.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::ConstraintViolation
                        | rusqlite::ErrorCode::TooBig
                        | rusqlite::ErrorCode::TypeMismatch
                )
            ),
            StoreError::Postgres { cause, .. } => {
                cause.code().is_some_and(|c| matches!(c.code().get(..2), Some("22" | "23" | "54")))
            }
            _ => false,
        }
    }
}

/// A PostgreSQL error with the server's message and SQLSTATE (the `postgres` crate's own
/// text for a server error is just "db error").
fn postgres_reason(cause: &postgres::Error) -> String {
    match cause.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => cause.to_string(),
    }
}

/// Failures of the sink stage.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kafka consumer error: {0}")]
    Consumer(rdkafka::error::KafkaError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaPlumbingError),
    #[error("the database has been unavailable for {} s (last error: {last}); the sink stops so that a restart policy or an operator can act", waited.as_secs())]
    DatabaseUnavailable { waited: std::time::Duration, last: StoreError },
    #[error("could not read the stored offsets for the assigned partitions: {0}; the sink stops rather than read from a wrong position")]
    AssignOffsets(String),
}

impl SinkError {
    /// Whether the command was used wrongly (exit code 2) rather than failing at run time.
    pub fn is_usage(&self) -> bool {
        match self {
            SinkError::Store(StoreError::BadUrl { .. }) => true,
            SinkError::Consumer(rdkafka::error::KafkaError::ClientConfig(..)) => true,
            SinkError::Kafka(e) => e.is_usage(),
            _ => false,
        }
    }
}
