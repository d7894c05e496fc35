//! Reads what the sink stored, for the API: one frame, a source's frames newest first,
//! the sources. The same database the sink writes (`sink.database_url`), SQLite or
//! PostgreSQL, through a few pooled connections used on blocking threads (both client
//! libraries block).

use std::sync::Mutex;

use thiserror::Error;

use crate::sink::store::{PostgresStore, SqliteStore};
use crate::sink::StoreError;

/// Connections kept open between requests.
const IDLE_CONNECTIONS: usize = 4;

/// Why the results could not be read.
#[derive(Debug, Error)]
pub enum ResultsDbError {
    #[error("cannot open the results database: {0}")]
    Open(StoreError),
    #[error("results database query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("results database query failed: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("the database read did not complete: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

/// One stored result (a row of `detections`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoredFrame {
    pub(super) frame_id: String,
    pub(super) source: String,
    pub(super) seq: i64,
    pub(super) width: i64,
    pub(super) height: i64,
    pub(super) captured_at_us: i64,
    pub(super) processed_at_us: i64,
    pub(super) stored_at_us: i64,
    pub(super) model: String,
    pub(super) batch_size: i64,
    pub(super) inference_us: i64,
    /// Where the frame's image is in the images topic (`GET /v1/frames/{id}/image` reads it there).
    pub(super) image_partition: i32,
    pub(super) image_offset: i64,
    /// `[{label, class_id, score, box}]` as stored.
    pub(super) detections_json: String,
}

/// What the sink stored for a frame that went to the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DeadLetter {
    pub(super) frame_id: String,
    pub(super) source: Option<String>,
    pub(super) kind: String,
    pub(super) message: String,
    pub(super) stored_at_us: i64,
}

/// A source that has stored results.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SourceSummary {
    pub(super) source: String,
    pub(super) frames: i64,
    pub(super) last_captured_at_us: i64,
}

/// Where a page of a source's frames starts: strictly older than this frame.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Before {
    pub(super) captured_at_us: i64,
    pub(super) frame_id: String,
}

enum Conn {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

const COLUMNS: &str = "frame_id, source, seq, width, height, captured_at_us, processed_at_us, stored_at_us, \
                       model_name || ' ' || model_version, batch_size, inference_us, source_partition, source_offset";

/// The sink's database, read-only in use (opening it applies the sink's migrations, so
/// the API may start first).
pub(super) struct ResultsDb {
    url: String,
    idle: Mutex<Vec<Conn>>,
}

impl ResultsDb {
    /// Opens one connection now, so that a wrong URL or an unreachable server is reported
    /// at start.
    pub(super) async fn open(url: &str) -> Result<Self, ResultsDbError> {
        let db = ResultsDb { url: url.to_owned(), idle: Mutex::new(Vec::new()) };
        let url = db.url.clone();
        let conn = tokio::task::spawn_blocking(move || connect(&url)).await??;
        db.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        Ok(db)
    }

    /// Runs `work` on a pooled connection on a blocking thread; a connection that failed
    /// is dropped, not returned to the pool.
    async fn with_conn<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T, ResultsDbError> + Send + 'static,
    ) -> Result<T, ResultsDbError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let url = self.url.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let mut conn = match pooled {
                Some(conn) => conn,
                None => connect(&url)?,
            };
            let result = work(&mut conn);
            Ok::<_, ResultsDbError>((conn, result))
        })
        .await??;
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(conn);
            }
        }
        result
    }

    /// Whether the database answers (for `/readyz`).
    pub(super) async fn ping(&self) -> Result<(), ResultsDbError> {
        self.with_conn(|conn| match conn {
            Conn::Sqlite(s) => Ok(s.conn().query_row("SELECT 1", [], |_| Ok(()))?),
            Conn::Postgres(p) => Ok(p.client().simple_query("SELECT 1").map(|_| ())?),
        })
        .await
    }

    /// The stored result of `frame_id`, if any.
    pub(super) async fn frame(&self, frame_id: &str) -> Result<Option<StoredFrame>, ResultsDbError> {
        let id = frame_id.to_owned();
        self.with_conn(move |conn| match conn {
            Conn::Sqlite(s) => {
                let sql = format!("SELECT {COLUMNS}, detections FROM detections WHERE frame_id = ?1");
                let mut stmt = s.conn().prepare_cached(&sql)?;
                let mut rows = stmt.query_map([&id], sqlite_frame)?;
                Ok(rows.next().transpose()?)
            }
            Conn::Postgres(p) => {
                let sql = format!("SELECT {COLUMNS}, detections::TEXT FROM detections WHERE frame_id = $1");
                Ok(p.client().query_opt(&sql, &[&id])?.map(|row| postgres_frame(&row)))
            }
        })
        .await
    }

    /// The dead letter of `frame_id`, if the sink stored one.
    pub(super) async fn dead_letter(&self, frame_id: &str) -> Result<Option<DeadLetter>, ResultsDbError> {
        let id = frame_id.to_owned();
        const SQL: &str = "SELECT frame_id, source, kind, message, stored_at_us FROM dead_letters WHERE frame_id = ";
        self.with_conn(move |conn| match conn {
            Conn::Sqlite(s) => {
                let mut stmt = s.conn().prepare_cached(&format!("{SQL}?1 LIMIT 1"))?;
                let mut rows = stmt.query_map([&id], |r| {
                    Ok(DeadLetter {
                        frame_id: r.get(0)?,
                        source: r.get(1)?,
                        kind: r.get(2)?,
                        message: r.get(3)?,
                        stored_at_us: r.get(4)?,
                    })
                })?;
                Ok(rows.next().transpose()?)
            }
            Conn::Postgres(p) => Ok(p.client().query_opt(&format!("{SQL}$1 LIMIT 1"), &[&id])?.map(|r| DeadLetter {
                frame_id: r.get(0),
                source: r.get(1),
                kind: r.get(2),
                message: r.get(3),
                stored_at_us: r.get(4),
            })),
        })
        .await
    }

    /// Up to `limit` frames of `source` captured at or after `since_us`, newest first,
    /// starting after `before`.
    pub(super) async fn page(
        &self,
        source: &str,
        since_us: i64,
        before: Option<Before>,
        limit: i64,
    ) -> Result<Vec<StoredFrame>, ResultsDbError> {
        let source = source.to_owned();
        let before = before.unwrap_or(Before { captured_at_us: i64::MAX, frame_id: String::new() });
        self.with_conn(move |conn| match conn {
            Conn::Sqlite(s) => {
                let sql = format!(
                    "SELECT {COLUMNS}, detections FROM detections WHERE source = ?1 AND captured_at_us >= ?2 \
                     AND (captured_at_us < ?3 OR (captured_at_us = ?3 AND frame_id < ?4)) \
                     ORDER BY captured_at_us DESC, frame_id DESC LIMIT ?5"
                );
                let mut stmt = s.conn().prepare_cached(&sql)?;
                let params = rusqlite::params![source, since_us, before.captured_at_us, before.frame_id, limit];
                let rows = stmt.query_map(params, sqlite_frame)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }
            Conn::Postgres(p) => {
                let sql = format!(
                    "SELECT {COLUMNS}, detections::TEXT FROM detections WHERE source = $1 AND captured_at_us >= $2 \
                     AND (captured_at_us < $3 OR (captured_at_us = $3 AND frame_id < $4)) \
                     ORDER BY captured_at_us DESC, frame_id DESC LIMIT $5"
                );
                let rows =
                    p.client().query(&sql, &[&source, &since_us, &before.captured_at_us, &before.frame_id, &limit])?;
                Ok(rows.iter().map(postgres_frame).collect())
            }
        })
        .await
    }

    /// Up to `limit` frames stored after `after` (`stored_at_us`, `frame_id`), in the order
    /// stored.
    pub(super) async fn stored_after(
        &self,
        after: (i64, String),
        limit: i64,
    ) -> Result<Vec<StoredFrame>, ResultsDbError> {
        self.with_conn(move |conn| match conn {
            Conn::Sqlite(s) => {
                let sql = format!(
                    "SELECT {COLUMNS}, detections FROM detections WHERE stored_at_us > ?1 \
                     OR (stored_at_us = ?1 AND frame_id > ?2) ORDER BY stored_at_us, frame_id LIMIT ?3"
                );
                let mut stmt = s.conn().prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params![after.0, after.1, limit], sqlite_frame)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }
            Conn::Postgres(p) => {
                let sql = format!(
                    "SELECT {COLUMNS}, detections::TEXT FROM detections WHERE stored_at_us > $1 \
                     OR (stored_at_us = $1 AND frame_id > $2) ORDER BY stored_at_us, frame_id LIMIT $3"
                );
                Ok(p.client().query(&sql, &[&after.0, &after.1, &limit])?.iter().map(postgres_frame).collect())
            }
        })
        .await
    }

    /// Every source with stored results, by name (at most `limit`).
    pub(super) async fn sources(&self, limit: i64) -> Result<Vec<SourceSummary>, ResultsDbError> {
        const SQL: &str =
            "SELECT source, COUNT(*), MAX(captured_at_us) FROM detections GROUP BY source ORDER BY source";
        self.with_conn(move |conn| match conn {
            Conn::Sqlite(s) => {
                let mut stmt = s.conn().prepare_cached(&format!("{SQL} LIMIT ?1"))?;
                let rows = stmt.query_map([limit], |r| {
                    Ok(SourceSummary { source: r.get(0)?, frames: r.get(1)?, last_captured_at_us: r.get(2)? })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }
            Conn::Postgres(p) => {
                let rows = p.client().query(&format!("{SQL} LIMIT $1"), &[&limit])?;
                Ok(rows
                    .iter()
                    .map(|r| SourceSummary { source: r.get(0), frames: r.get(1), last_captured_at_us: r.get(2) })
                    .collect())
            }
        })
        .await
    }
}

fn connect(url: &str) -> Result<Conn, ResultsDbError> {
    match url.strip_prefix("sqlite://") {
        Some(path) => SqliteStore::open(path).map(Conn::Sqlite),
        None => PostgresStore::connect(url).map(Conn::Postgres),
    }
    .map_err(ResultsDbError::Open)
}

fn sqlite_frame(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredFrame> {
    Ok(StoredFrame {
        frame_id: r.get(0)?,
        source: r.get(1)?,
        seq: r.get(2)?,
        width: r.get(3)?,
        height: r.get(4)?,
        captured_at_us: r.get(5)?,
        processed_at_us: r.get(6)?,
        stored_at_us: r.get(7)?,
        model: r.get(8)?,
        batch_size: r.get(9)?,
        inference_us: r.get(10)?,
        image_partition: r.get(11)?,
        image_offset: r.get(12)?,
        detections_json: r.get(13)?,
    })
}

fn postgres_frame(r: &postgres::Row) -> StoredFrame {
    StoredFrame {
        frame_id: r.get(0),
        source: r.get(1),
        seq: r.get(2),
        width: i64::from(r.get::<_, i32>(3)),
        height: i64::from(r.get::<_, i32>(4)),
        captured_at_us: r.get(5),
        processed_at_us: r.get(6),
        stored_at_us: r.get(7),
        model: r.get(8),
        batch_size: i64::from(r.get::<_, i32>(9)),
        inference_us: r.get(10),
        image_partition: r.get(11),
        image_offset: r.get(12),
        detections_json: r.get(13),
    }
}
