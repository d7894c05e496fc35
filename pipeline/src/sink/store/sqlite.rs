//! SQLite store (`sqlite://path`): the embedded default.
//!
//! WAL journal so `vigil verify` can read while the sink writes; a busy timeout so
//! several sinks (or a sink and an audit) on one file wait for each other instead of
//! failing.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::{Batch, BatchOutcome, DetectionRow, Store, StoreStats};
use crate::backoff::Backoff;
use crate::codec::now_us;
use crate::sink::error::StoreError;
use crate::sink::failpoint::{self, Point};

/// Schema migrations, applied in order; `schema_migrations` records the last one.
/// Never edit a released migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: detections + consumer offsets + rejects.
    r#"
    CREATE TABLE detections (
        frame_id         TEXT    PRIMARY KEY,
        source           TEXT    NOT NULL,
        seq              INTEGER NOT NULL,
        captured_at_us   INTEGER NOT NULL,
        width            INTEGER NOT NULL,
        height           INTEGER NOT NULL,
        model_name       TEXT    NOT NULL,
        model_version    TEXT    NOT NULL,
        detection_count  INTEGER NOT NULL,
        detections       TEXT    NOT NULL,
        processed_at_us  INTEGER NOT NULL,
        batch_size       INTEGER NOT NULL,
        inference_us     INTEGER NOT NULL,
        source_partition INTEGER NOT NULL,
        source_offset    INTEGER NOT NULL,
        result_partition INTEGER NOT NULL,
        result_offset    INTEGER NOT NULL,
        stored_at_us     INTEGER NOT NULL
    );
    CREATE INDEX detections_source_seq ON detections (source, seq);
    CREATE TABLE consumer_offsets (
        group_id     TEXT    NOT NULL,
        topic        TEXT    NOT NULL,
        partition    INTEGER NOT NULL,
        next_offset  INTEGER NOT NULL,
        updated_at_us INTEGER NOT NULL,
        PRIMARY KEY (group_id, topic, partition)
    );
    CREATE TABLE sink_rejects (
        topic        TEXT    NOT NULL,
        partition    INTEGER NOT NULL,
        "offset"     INTEGER NOT NULL,
        kind         TEXT    NOT NULL,
        message      TEXT    NOT NULL,
        payload      BLOB    NOT NULL,
        stored_at_us INTEGER NOT NULL,
        PRIMARY KEY (topic, partition, "offset")
    );
    "#,
    // 2: a source's results newest first (the API's pages), results in the order stored
    // (its live stream), and the dead letters, so that
    // the API can answer for a frame that has no result.
    r#"
    CREATE INDEX detections_source_captured ON detections (source, captured_at_us, frame_id);
    CREATE INDEX detections_stored ON detections (stored_at_us, frame_id);
    CREATE TABLE dead_letters (
        source_partition INTEGER NOT NULL,
        source_offset    INTEGER NOT NULL,
        frame_id         TEXT,
        source           TEXT,
        kind             TEXT    NOT NULL,
        message          TEXT    NOT NULL,
        dlq_partition    INTEGER NOT NULL,
        dlq_offset       INTEGER NOT NULL,
        stored_at_us     INTEGER NOT NULL,
        PRIMARY KEY (source_partition, source_offset)
    );
    CREATE INDEX dead_letters_frame_id ON dead_letters (frame_id);
    "#,
];

/// Inserts one detection row; `?18` is the time it is stored.
const INSERT_ROW: &str = "INSERT INTO detections (frame_id, source, seq, captured_at_us, width, height, model_name,
        model_version, detection_count, detections, processed_at_us, batch_size, inference_us,
        source_partition, source_offset, result_partition, result_offset, stored_at_us)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
     ON CONFLICT (frame_id) DO NOTHING";

/// Runs [`INSERT_ROW`] for `r`: 1 when stored, 0 when its frame already was.
fn insert_row(insert: &mut rusqlite::CachedStatement<'_>, r: &DetectionRow, now: i64) -> rusqlite::Result<usize> {
    insert.execute(params![
        r.frame_id,
        r.source,
        r.seq,
        r.captured_at_us,
        r.width,
        r.height,
        r.model_name,
        r.model_version,
        r.detection_count,
        r.detections_json,
        r.processed_at_us,
        r.batch_size,
        r.inference_us,
        r.source_partition,
        r.source_offset,
        r.result_partition,
        r.result_offset,
        now
    ])
}

/// How long an opener or a writer waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Switches the file to WAL, retrying while another connection holds it.
///
/// The switch needs an exclusive lock, and SQLite returns BUSY at once, without
/// the busy timeout, when waiting could deadlock (this connection holds a shared
/// lock while another wants to write). A sink and the API starting together on a
/// new file hit exactly that, so BUSY is retried here up to the busy timeout.
fn enable_wal(conn: &Connection) -> Result<(), StoreError> {
    const PAUSE: Backoff = Backoff { base: Duration::from_millis(5), cap: Duration::from_millis(200) };
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut attempt = 0;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) && Instant::now() < deadline => {
                attempt += 1;
                std::thread::sleep(PAUSE.delay(attempt));
            }
            Err(cause) => return Err(err("enabling WAL")(cause)),
        }
    }
}

/// A SQLite database file.
pub(crate) struct SqliteStore {
    conn: Connection,
}

fn err(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |cause| StoreError::Sqlite { context, cause }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path` (`:memory:` for
    /// an in-memory one). Creates the parent directory.
    pub(crate) fn open(path: &str) -> Result<Self, StoreError> {
        if path != ":memory:" {
            if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
                // If this fails, opening the database below says why.
                std::fs::create_dir_all(parent).ok();
            }
        }
        let conn = Connection::open(path).map_err(|cause| StoreError::SqliteOpen { path: path.to_owned(), cause })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err("setting the busy timeout"))?;
        if path != ":memory:" {
            enable_wal(&conn)?;
        }
        // Durable enough with WAL: a committed batch survives a process kill.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err("setting synchronous"))?;
        let mut store = SqliteStore { conn };
        store.migrate()?;
        Ok(store)
    }

    /// The connection, for readers of the stored results (`api`).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        // IMMEDIATE: two sinks starting at once serialise here.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("starting the migration"))?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_us INTEGER NOT NULL)")
            .map_err(err("creating schema_migrations"))?;
        let current: i64 = tx
            .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))
            .map_err(err("reading the schema version"))?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql).map_err(err("applying a schema migration"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at_us) VALUES (?1, ?2)",
                params![i as i64 + 1, now_us()],
            )
            .map_err(err("recording a schema migration"))?;
        }
        tx.commit().map_err(err("committing the migration"))
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<BatchOutcome, StoreError> {
        failpoint::batch_begun();
        let now = now_us();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("starting a batch transaction"))?;
        let mut out = BatchOutcome::default();
        {
            let mut insert = tx.prepare_cached(INSERT_ROW).map_err(err("preparing the row insert"))?;
            for r in &batch.rows {
                if insert_row(&mut insert, r, now).map_err(err("inserting a detection row"))? == 1 {
                    out.inserted += 1;
                } else {
                    out.duplicates += 1;
                }
            }
            let mut reject = tx
                .prepare_cached(
                    r#"INSERT INTO sink_rejects (topic, partition, "offset", kind, message, payload, stored_at_us)
                       VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING"#,
                )
                .map_err(err("preparing the reject insert"))?;
            for r in &batch.rejects {
                out.rejected += reject
                    .execute(params![r.topic, r.partition, r.offset, r.kind, r.message, r.payload, now])
                    .map_err(err("inserting a reject"))? as u64;
            }
            let mut dead_letter = tx
                .prepare_cached(
                    "INSERT INTO dead_letters (source_partition, source_offset, frame_id, source, kind, message,
                        dlq_partition, dlq_offset, stored_at_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
                )
                .map_err(err("preparing the dead letter insert"))?;
            for d in &batch.dead_letters {
                let row = params![
                    d.source_partition,
                    d.source_offset,
                    d.frame_id,
                    d.source,
                    d.kind,
                    d.message,
                    d.dlq_partition,
                    d.dlq_offset,
                    now
                ];
                out.dead_letters += dead_letter.execute(row).map_err(err("inserting a dead letter"))? as u64;
            }
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at_us)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (group_id, topic, partition)
                     DO UPDATE SET next_offset = MAX(consumer_offsets.next_offset, excluded.next_offset),
                        updated_at_us = excluded.updated_at_us",
                )
                .map_err(err("preparing the offset upsert"))?;
            for o in &batch.offsets {
                upsert
                    .execute(params![batch.group_id, batch.topic, o.partition, o.next_offset, now])
                    .map_err(err("upserting an offset"))?;
            }
        }
        failpoint::kill_at(Point::SinkKillBeforeDbCommit);
        tx.commit().map_err(err("committing a batch"))?;
        failpoint::kill_at(Point::SinkKillAfterDbCommit);
        Ok(out)
    }

    fn refused_rows(&mut self, rows: &[DetectionRow]) -> Result<Vec<(usize, String)>, StoreError> {
        let now = now_us();
        // Dropped without commit: rolled back. A failed insert undoes only itself (SQLite
        // statements are atomic), so the rows after it are tried as in a real batch.
        let tx = self.conn.transaction().map_err(err("starting a probe transaction"))?;
        let mut insert = tx.prepare_cached(INSERT_ROW).map_err(err("preparing the row insert"))?;
        let mut refused = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if let Err(cause) = insert_row(&mut insert, r, now) {
                let e = StoreError::Sqlite { context: "inserting a detection row", cause };
                if !e.is_row_refused() {
                    return Err(e);
                }
                refused.push((i, e.to_string()));
            }
        }
        Ok(refused)
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn load_offsets(&mut self, group_id: &str, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT partition, next_offset FROM consumer_offsets WHERE group_id = ?1 AND topic = ?2")
            .map_err(err("preparing the offsets query"))?;
        let rows = stmt
            .query_map(params![group_id, topic], |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?)))
            .map_err(err("reading offsets"))?;
        rows.collect::<Result<HashMap<_, _>, _>>().map_err(err("reading offsets"))
    }

    fn stats(&mut self) -> Result<StoreStats, StoreError> {
        let (rows, distinct_sources): (i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), (SELECT COUNT(*) FROM (SELECT DISTINCT source_partition, source_offset FROM detections)) FROM detections",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(err("counting rows"))?;
        let rejects: Option<i64> = self
            .conn
            .query_row("SELECT COUNT(*) FROM sink_rejects", [], |r| r.get(0))
            .optional()
            .map_err(err("counting rejects"))?;
        Ok(StoreStats {
            rows: rows as u64,
            distinct_frames: rows as u64,
            distinct_sources: distinct_sources as u64,
            rejects: rejects.unwrap_or(0) as u64,
        })
    }

    fn frame_ids(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT frame_id FROM detections").map_err(err("listing frame ids"))?;
        let ids = stmt.query_map([], |r| r.get(0)).map_err(err("listing frame ids"))?;
        ids.collect::<Result<Vec<String>, _>>().map_err(err("listing frame ids"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir (no extra dev-dependency needed).
    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-sink-test-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn contract_in_memory() {
        let mut store = SqliteStore::open(":memory:").unwrap();
        crate::sink::store::tests::contract(&mut store);
    }

    #[test]
    fn survives_reopen_and_migrates_once() {
        let dir = temp_dir("reopen");
        let path = dir.join("sub/vigil.sqlite");
        let path = path.to_str().unwrap();
        {
            let mut store = SqliteStore::open(path).unwrap();
            crate::sink::store::tests::contract(&mut store);
        }
        let mut store = SqliteStore::open(path).unwrap();
        assert_eq!(store.stats().unwrap().rows, 4);
        let version: i64 =
            store.conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    /// A sink and the API start together on a new file (the api integration test
    /// lost its sink to "database is locked" this way): switching to WAL needs an
    /// exclusive lock, and SQLite answers BUSY at once, without the busy timeout,
    /// when waiting could deadlock. Every opener must get through.
    #[test]
    fn concurrent_first_opens_all_succeed() {
        const OPENERS: usize = 4;
        for round in 0..25 {
            let dir = temp_dir(&format!("race{round}"));
            let path = dir.join("vigil.sqlite").to_str().unwrap().to_owned();
            let start = std::sync::Arc::new(std::sync::Barrier::new(OPENERS));
            let openers: Vec<_> = (0..OPENERS)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        SqliteStore::open(&path).map(|_| ())
                    })
                })
                .collect();
            for opener in openers {
                if let Err(e) = opener.join().unwrap() {
                    panic!("round {round}: {e}");
                }
            }
            std::fs::remove_dir_all(&dir).ok();
        }
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = temp_dir("newer");
        let path = dir.join("v.sqlite");
        let path = path.to_str().unwrap();
        drop(SqliteStore::open(path).unwrap());
        let conn = Connection::open(path).unwrap();
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)", []).unwrap();
        drop(conn);
        assert!(matches!(SqliteStore::open(path), Err(StoreError::SchemaTooNew { found: 99, .. })));
    }

    #[test]
    fn failed_batch_writes_nothing() {
        let mut store = SqliteStore::open(":memory:").unwrap();
        // A trigger that fails the offset upsert: rows of the batch must roll back with it.
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON consumer_offsets BEGIN SELECT RAISE(ABORT, 'boom'); END;",
            )
            .unwrap();
        let batch = Batch {
            group_id: "g".into(),
            topic: "t".into(),
            rows: vec![crate::sink::store::tests::row("f1", 0, 0)],
            rejects: vec![],
            dead_letters: Vec::new(),
            offsets: vec![super::super::PartitionOffset { partition: 0, next_offset: 1 }],
        };
        assert!(store.write_batch(&batch).is_err());
        assert_eq!(store.stats().unwrap().rows, 0);
    }
}
