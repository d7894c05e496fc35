//! The database thread: owns the [`Store`] and runs every blocking database call, so
//! the async runtime never waits on I/O it does not drive (and the `postgres` crate's
//! internal runtime never nests inside tokio's).

use std::collections::HashMap;

use super::error::StoreError;
use super::store::{self, Batch, BatchOutcome, DetectionRow, Store};
use crate::thread_actor::{StartError, ThreadActor};

/// Handle to the database thread. Dropping it stops the thread after the commands
/// already queued.
pub(crate) struct DbWorker {
    actor: ThreadActor<Box<dyn Store>>,
    kind: &'static str,
}

impl DbWorker {
    /// Opens (and migrates) the database on a new thread; returns once it is open.
    pub(crate) async fn start(url: &str) -> Result<Self, StoreError> {
        let url = url.to_owned();
        let open = move || {
            store::open(&url).map(|s| {
                let kind = s.kind();
                (s, kind)
            })
        };
        // Small and bounded: the sink has at most one write in flight, plus a rebalance lookup.
        match ThreadActor::start("sink-db", 2, open).await {
            Ok((actor, kind)) => Ok(DbWorker { actor, kind }),
            Err(StartError::Init(e)) => Err(e),
            Err(StartError::Spawn(e)) => Err(StoreError::Thread(format!("cannot start it: {e}"))),
            Err(StartError::Panicked(message)) => {
                Err(StoreError::Thread(format!("it panicked while opening: {message}")))
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub(crate) fn kind(&self) -> &'static str {
        self.kind
    }

    /// Writes one batch in one database transaction.
    pub(crate) async fn write(&self, batch: Batch) -> Result<BatchOutcome, StoreError> {
        self.actor
            .run(move |store: &mut Box<dyn Store>| store.write_batch(&batch))
            .await
            .map_err(|_| StoreError::WorkerGone)?
    }

    /// The rows the database refuses, by index, with the reason (nothing is stored).
    pub(crate) async fn refused_rows(&self, rows: Vec<DetectionRow>) -> Result<Vec<(usize, String)>, StoreError> {
        self.actor
            .run(move |store: &mut Box<dyn Store>| store.refused_rows(&rows))
            .await
            .map_err(|_| StoreError::WorkerGone)?
    }

    /// Reads stored offsets, blocking the caller. Used from the consumer's rebalance
    /// callback, which librdkafka runs synchronously inside a poll.
    pub(crate) fn load_offsets_blocking(&self, group_id: &str, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let (group_id, topic) = (group_id.to_owned(), topic.to_owned());
        self.actor
            .run_blocking(move |store: &mut Box<dyn Store>| store.load_offsets(&group_id, &topic))
            .map_err(|_| StoreError::WorkerGone)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::store::PartitionOffset;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_and_reads_through_the_thread() {
        let db = DbWorker::start("sqlite::memory:").await.unwrap();
        assert_eq!(db.kind(), "sqlite");
        let batch = Batch {
            group_id: "g".into(),
            topic: "t".into(),
            rows: vec![crate::sink::store::tests::row("a", 0, 0)],
            rejects: vec![],
            offsets: vec![PartitionOffset { partition: 0, next_offset: 1 }],
        };
        assert_eq!(db.write(batch).await.unwrap().inserted, 1);
        assert_eq!(db.load_offsets_blocking("g", "t").unwrap(), HashMap::from([(0, 1)]));
    }

    #[tokio::test]
    async fn reports_open_errors() {
        let err = DbWorker::start("postgres://127.0.0.1:1/nothing").await.err().unwrap();
        assert!(matches!(err, StoreError::PostgresConnect { .. }), "{err}");
    }
}
