//! The database thread: owns the [`Store`] and runs every blocking database call, so
//! the async runtime never waits on I/O it does not drive (and the `postgres` crate's
//! internal runtime never nests inside tokio's).
//!
//! The thread also owns reconnection: a call that finds the connection lost drops the
//! store, and the next call opens a new one (the caller's retry supplies the backoff).
//! Retrying on the dead connection would fail forever, and a process that never exits is
//! one no restart policy can help.

use std::collections::HashMap;

use tracing::{info, warn};

use super::error::StoreError;
use super::store::{self, Batch, BatchOutcome, DetectionRow, Store};
use crate::thread_actor::{StartError, ThreadActor};

/// Handle to the database thread. Dropping it stops the thread after the commands
/// already queued.
pub(crate) struct DbWorker {
    actor: ThreadActor<Connection>,
    kind: &'static str,
}

/// The thread's state: the database URL and, while connected, the open store.
struct Connection {
    url: String,
    store: Option<Box<dyn Store>>,
}

impl Connection {
    /// Runs `op` on the store, opening one first when the last was lost; forgets the
    /// store when `op` finds its connection lost.
    fn with<R>(&mut self, op: impl FnOnce(&mut dyn Store) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let store = match &mut self.store {
            Some(store) => store,
            None => {
                let store = store::open(&self.url)?;
                info!(kind = store.kind(), "database connection re-established");
                self.store.insert(store)
            }
        };
        let result = op(store.as_mut());
        if let Err(e) = &result {
            if e.is_connection_lost() || store.is_closed() {
                warn!(error = %e, "database connection lost; the next attempt reconnects");
                self.store = None;
            }
        }
        result
    }
}

impl DbWorker {
    /// Opens (and migrates) the database on a new thread; returns once it is open.
    pub(crate) async fn start(url: &str) -> Result<Self, StoreError> {
        let url = url.to_owned();
        let open = move || {
            store::open(&url).map(|s| {
                let kind = s.kind();
                (Connection { url, store: Some(s) }, kind)
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
            .run(move |c: &mut Connection| c.with(|store| store.write_batch(&batch)))
            .await
            .map_err(|_| StoreError::WorkerGone)?
    }

    /// The rows the database refuses, by index, with the reason (nothing is stored).
    pub(crate) async fn refused_rows(&self, rows: Vec<DetectionRow>) -> Result<Vec<(usize, String)>, StoreError> {
        self.actor
            .run(move |c: &mut Connection| c.with(|store| store.refused_rows(&rows)))
            .await
            .map_err(|_| StoreError::WorkerGone)?
    }

    /// Whether the database answers: reads the stored offsets of `group_id` (the cheapest
    /// query every store answers), reconnecting first when the connection was lost.
    pub(crate) async fn check(&self, group_id: &str, topic: &str) -> Result<(), StoreError> {
        let (group_id, topic) = (group_id.to_owned(), topic.to_owned());
        self.actor
            .run(move |c: &mut Connection| c.with(|store| store.load_offsets(&group_id, &topic).map(drop)))
            .await
            .map_err(|_| StoreError::WorkerGone)?
    }

    /// Reads stored offsets, blocking the caller. Used from the consumer's rebalance
    /// callback, which librdkafka runs synchronously inside a poll.
    pub(crate) fn load_offsets_blocking(&self, group_id: &str, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let (group_id, topic) = (group_id.to_owned(), topic.to_owned());
        self.actor
            .run_blocking(move |c: &mut Connection| c.with(|store| store.load_offsets(&group_id, &topic)))
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
            dead_letters: Vec::new(),
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
