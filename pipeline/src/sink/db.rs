//! The database thread: owns the [`Store`] and runs every blocking database call, so
//! the async runtime never waits on I/O it does not drive (and the `postgres` crate's
//! internal runtime never nests inside tokio's).

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::error::StoreError;
use super::store::{self, Batch, BatchOutcome, Store, StoreStats};

enum Command {
    Write(Batch, oneshot::Sender<Result<BatchOutcome, StoreError>>),
    LoadOffsets { group_id: String, topic: String, reply: mpsc::Sender<Result<HashMap<i32, i64>, StoreError>> },
    Stats(oneshot::Sender<Result<StoreStats, StoreError>>),
}

/// Handle to the database thread. Dropping it stops the thread after the commands
/// already queued.
pub struct DbWorker {
    commands: Option<mpsc::SyncSender<Command>>,
    thread: Option<JoinHandle<()>>,
    kind: &'static str,
}

impl DbWorker {
    /// Opens (and migrates) the database on a new thread; returns once it is open.
    pub async fn start(url: &str) -> Result<Self, StoreError> {
        // Small and bounded: the sink has at most one write in flight, plus a rebalance lookup.
        let (tx, rx) = mpsc::sync_channel::<Command>(2);
        let (opened_tx, opened_rx) = oneshot::channel();
        let url = url.to_owned();
        let thread = std::thread::Builder::new()
            .name("vigil-sink-db".into())
            .spawn(move || {
                let mut store = match store::open(&url) {
                    Ok(s) => {
                        let _ = opened_tx.send(Ok(s.kind()));
                        s
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                serve(store.as_mut(), rx);
            })
            .expect("spawn the database thread");
        let kind = opened_rx.await.map_err(|_| StoreError::WorkerGone)??;
        Ok(DbWorker { commands: Some(tx), thread: Some(thread), kind })
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        self.commands.as_ref().ok_or(StoreError::WorkerGone)?.send(command).map_err(|_| StoreError::WorkerGone)
    }

    /// Writes one batch in one database transaction.
    pub async fn write(&self, batch: Batch) -> Result<BatchOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        // The channel has room (one write at a time); `send` does not block in practice.
        self.send(Command::Write(batch, tx))?;
        rx.await.map_err(|_| StoreError::WorkerGone)?
    }

    /// Row counts.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx))?;
        rx.await.map_err(|_| StoreError::WorkerGone)?
    }

    /// Reads stored offsets, blocking the caller. Used from the consumer's rebalance
    /// callback, which librdkafka runs synchronously inside a poll; wrapped in
    /// `block_in_place` there so a multi-threaded runtime keeps its other tasks moving.
    pub fn load_offsets_blocking(&self, group_id: &str, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::LoadOffsets { group_id: group_id.to_owned(), topic: topic.to_owned(), reply: tx })?;
        let wait = || rx.recv().map_err(|_| StoreError::WorkerGone)?;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl Drop for DbWorker {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(store: &mut dyn Store, commands: mpsc::Receiver<Command>) {
    while let Ok(command) = commands.recv() {
        match command {
            Command::Write(batch, reply) => {
                let _ = reply.send(store.write_batch(&batch));
            }
            Command::LoadOffsets { group_id, topic, reply } => {
                let _ = reply.send(store.load_offsets(&group_id, &topic));
            }
            Command::Stats(reply) => {
                let _ = reply.send(store.stats());
            }
        }
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
        assert_eq!(db.stats().await.unwrap().rows, 1);
    }

    #[tokio::test]
    async fn reports_open_errors() {
        let err = DbWorker::start("postgres://127.0.0.1:1/nothing").await.err().unwrap();
        assert!(matches!(err, StoreError::PostgresConnect { .. }), "{err}");
    }
}
