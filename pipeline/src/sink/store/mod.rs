//! Where detections end up: a database that stores the rows **and** the consumer's
//! position in one transaction.
//!
//! Two implementations behind one trait: SQLite (`sqlite://path`, embedded, the
//! default) and PostgreSQL (`postgres://…`). Both run their schema migrations when
//! opened, insert rows idempotently (`ON CONFLICT (frame_id) DO NOTHING`) and upsert
//! `consumer_offsets(group_id, topic, partition) → next_offset` in the same
//! transaction, so a crash at any point leaves rows and offsets consistent: on restart
//! the sink seeks to the stored offsets and re-reads at most one uncommitted batch,
//! whose rows are then skipped as duplicates. The upsert keeps the larger offset: a batch
//! stored late by a member that has since lost the partition must not move the next
//! owner's position backwards (which would re-read, or after a reset skip, records).
//!
//! All calls block (database I/O; the `postgres` crate even runs its own runtime), so
//! the sink calls them from a dedicated thread ([`super::db::DbWorker`]), never from the
//! async runtime.

mod postgres;
mod sqlite;

use std::collections::HashMap;

pub(crate) use self::postgres::PostgresStore;
pub(crate) use self::sqlite::SqliteStore;

use super::error::StoreError;

/// One row of the `detections` table: one per frame, also when nothing was detected.
///
/// Timestamps are microseconds since the Unix epoch (UTC), as in the Avro schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DetectionRow {
    /// Unique id of the frame (primary key; makes inserts idempotent).
    pub frame_id: String,
    /// Camera / source id.
    pub source: String,
    /// Per-source sequence number.
    pub seq: i64,
    /// When the frame was captured.
    pub captured_at_us: i64,
    /// Original image width, pixels.
    pub width: i32,
    /// Original image height, pixels.
    pub height: i32,
    /// Model name (e.g. `nanodet-g`).
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Number of detections in `detections_json`.
    pub detection_count: i32,
    /// The detections as a JSON array of `{label, class_id, score, box:[x0,y0,x1,y1]}`.
    pub detections_json: String,
    /// When the detector produced the result.
    pub processed_at_us: i64,
    /// Size of the inference batch the frame was part of.
    pub batch_size: i32,
    /// Inference time of that batch, microseconds.
    pub inference_us: i64,
    /// Partition of the frame in the `images` topic.
    pub source_partition: i32,
    /// Offset of the frame in the `images` topic.
    pub source_offset: i64,
    /// Partition of the result in the `detections` topic.
    pub result_partition: i32,
    /// Offset of the result in the `detections` topic.
    pub result_offset: i64,
}

/// A frame the detector could not process, read from the dead-letter topic: stored in
/// `dead_letters` so that the API can answer for it (`GET /v1/frames/{id}`). One row per
/// `images` record (its partition and offset are the key): a redelivered dead letter is
/// stored once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeadLetterRow {
    /// Partition of the frame's record in `images`.
    pub source_partition: i32,
    /// Offset of the frame's record in `images`.
    pub source_offset: i64,
    /// The frame's id, when its record decodes as a Frame (not for `not_avro` and the like).
    pub frame_id: Option<String>,
    /// The source id: the Frame's, else the record key.
    pub source: Option<String>,
    /// Stable error kind (`corrupt_image`, `not_avro`, …).
    pub kind: String,
    /// What was wrong.
    pub message: String,
    /// Where the dead letter itself is, in the dead-letter topic.
    pub dlq_partition: i32,
    pub dlq_offset: i64,
}

/// A record of the input topic the sink could not decode. Stored (with its bytes) in
/// `sink_rejects` in the same transaction as the offsets, so nothing is lost silently.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RejectRow {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Stable error kind (`not_avro`, `unknown_schema`, …).
    pub kind: String,
    /// Human-readable reason.
    pub message: String,
    /// The record value, unchanged.
    pub payload: Vec<u8>,
}

/// The next offset to read for one partition, written with the rows it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionOffset {
    pub partition: i32,
    pub next_offset: i64,
}

/// Everything one consumer batch writes, in one database transaction.
#[derive(Debug, Clone, Default)]
pub(crate) struct Batch {
    /// Consumer group the offsets belong to.
    pub group_id: String,
    /// Topic the offsets belong to.
    pub topic: String,
    pub rows: Vec<DetectionRow>,
    pub rejects: Vec<RejectRow>,
    pub dead_letters: Vec<DeadLetterRow>,
    pub offsets: Vec<PartitionOffset>,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    /// Rows newly inserted.
    pub inserted: u64,
    /// Rows skipped because their `frame_id` was already stored (a redelivery).
    pub duplicates: u64,
    /// Undecodable records stored in `sink_rejects`.
    pub rejected: u64,
    /// Dead letters newly stored in `dead_letters`.
    pub dead_letters: u64,
}

/// Totals for audits (`vigil verify`) and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StoreStats {
    /// Rows in `detections`.
    pub rows: u64,
    /// Distinct `frame_id`s in `detections` (equal to `rows`: it is the primary key).
    pub distinct_frames: u64,
    /// Distinct `(source_partition, source_offset)` pairs: rows whose input record was
    /// the same would show up here as `rows - distinct_sources > 0`.
    pub distinct_sources: u64,
    /// Rows in `sink_rejects`.
    pub rejects: u64,
}

/// A database holding detections and the sink's consumer offsets.
pub(crate) trait Store: Send {
    /// `sqlite` or `postgres`, for logs.
    fn kind(&self) -> &'static str;

    /// Writes a batch in ONE transaction: rows (idempotent on `frame_id`), rejects
    /// (idempotent on topic/partition/offset) and the offsets upsert, which never lowers a
    /// stored offset. Either all of it is stored or none.
    fn write_batch(&mut self, batch: &Batch) -> Result<BatchOutcome, StoreError>;

    /// The rows of `rows` the database refuses, by index, each with the reason: every row
    /// is tried in a transaction that is then rolled back, so nothing is stored. Called
    /// only after a batch failed on a refused row, to set that row aside.
    fn refused_rows(&mut self, rows: &[DetectionRow]) -> Result<Vec<(usize, String)>, StoreError>;

    /// Whether the connection is gone for good (the server ended the session, the socket
    /// closed): only a new store can go on. Always false for an embedded database.
    fn is_closed(&self) -> bool;

    /// The stored next offsets of `group_id` for `topic`, by partition.
    fn load_offsets(&mut self, group_id: &str, topic: &str) -> Result<HashMap<i32, i64>, StoreError>;

    /// Row counts for audits.
    fn stats(&mut self) -> Result<StoreStats, StoreError>;

    /// All stored `frame_id`s (for audits on test-sized data).
    fn frame_ids(&mut self) -> Result<Vec<String>, StoreError>;
}

/// Opens (and migrates) the database named by `url`: `sqlite://path`,
/// `sqlite::memory:`, or `postgres://…` / `postgresql://…`.
pub(crate) fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    match parse_url(url)? {
        StoreUrl::Sqlite(path) => Ok(Box::new(SqliteStore::open(&path)?)),
        StoreUrl::Postgres(conn) => Ok(Box::new(PostgresStore::connect(&conn)?)),
    }
}

/// A database URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreUrl {
    /// A file path (or `:memory:`).
    Sqlite(String),
    /// A libpq-style connection URL, passed to the `postgres` crate unchanged.
    Postgres(String),
}

/// Parses a database URL, naming what is accepted when it is not.
pub(crate) fn parse_url(url: &str) -> Result<StoreUrl, StoreError> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        if rest.is_empty() {
            return Err(StoreError::BadUrl { url: url.to_owned(), reason: "the SQLite path is empty".into() });
        }
        return Ok(StoreUrl::Sqlite(rest.to_owned()));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        if rest == ":memory:" {
            return Ok(StoreUrl::Sqlite(":memory:".into()));
        }
        if !rest.is_empty() {
            return Ok(StoreUrl::Sqlite(rest.to_owned()));
        }
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(StoreUrl::Postgres(url.to_owned()));
    }
    Err(StoreError::BadUrl {
        url: url.to_owned(),
        reason: "expected sqlite://PATH or postgres://USER@HOST:PORT/DB".into(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("sqlite://vigil-data/vigil.sqlite").unwrap(),
            StoreUrl::Sqlite("vigil-data/vigil.sqlite".into())
        );
        assert_eq!(parse_url("sqlite:///tmp/a.db").unwrap(), StoreUrl::Sqlite("/tmp/a.db".into()));
        assert_eq!(parse_url("sqlite::memory:").unwrap(), StoreUrl::Sqlite(":memory:".into()));
        assert!(matches!(parse_url("postgres://u@h/db").unwrap(), StoreUrl::Postgres(_)));
        assert!(matches!(parse_url("postgresql://u@h/db").unwrap(), StoreUrl::Postgres(_)));
        let err = parse_url("mysql://x").unwrap_err().to_string();
        assert!(err.contains("sqlite://"), "{err}");
        assert!(parse_url("sqlite://").is_err());
    }

    pub(crate) fn row(frame_id: &str, partition: i32, offset: i64) -> DetectionRow {
        DetectionRow {
            frame_id: frame_id.into(),
            source: "cam-1".into(),
            seq: offset,
            captured_at_us: 1_700_000_000_000_000,
            width: 640,
            height: 480,
            model_name: "nanodet-g".into(),
            model_version: "test".into(),
            detection_count: 1,
            detections_json: r#"[{"label":"dog","class_id":16,"score":0.9,"box":[1.0,2.0,3.0,4.0]}]"#.into(),
            processed_at_us: 1_700_000_000_100_000,
            batch_size: 4,
            inference_us: 1234,
            source_partition: partition,
            source_offset: offset,
            result_partition: partition,
            result_offset: offset,
        }
    }

    /// The contract every store must honour; run against each implementation.
    pub(crate) fn contract(store: &mut dyn Store) {
        let group = "g1";
        let topic = "detections";
        assert!(store.load_offsets(group, topic).unwrap().is_empty());

        let batch = Batch {
            group_id: group.into(),
            topic: topic.into(),
            rows: vec![row("f1", 0, 0), row("f2", 0, 1), row("f3", 1, 0)],
            rejects: vec![],
            dead_letters: Vec::new(),
            offsets: vec![
                PartitionOffset { partition: 0, next_offset: 2 },
                PartitionOffset { partition: 1, next_offset: 1 },
            ],
        };
        let out = store.write_batch(&batch).unwrap();
        assert_eq!(out, BatchOutcome { inserted: 3, duplicates: 0, rejected: 0, dead_letters: 0 });
        let offsets = store.load_offsets(group, topic).unwrap();
        assert_eq!(offsets, HashMap::from([(0, 2), (1, 1)]));

        // Redelivery of the same records plus one new one: duplicates skipped, offsets move.
        let mut again = batch.clone();
        again.rows.push(row("f4", 1, 1));
        again.rejects.push(RejectRow {
            topic: topic.into(),
            partition: 1,
            offset: 2,
            kind: "not_avro".into(),
            message: "bad magic".into(),
            payload: vec![1, 2, 3],
        });
        again.offsets = vec![PartitionOffset { partition: 1, next_offset: 3 }];
        let out = store.write_batch(&again).unwrap();
        assert_eq!(out, BatchOutcome { inserted: 1, duplicates: 3, rejected: 1, dead_letters: 0 });
        // The same reject again is not stored twice.
        assert_eq!(store.write_batch(&again).unwrap().rejected, 0);
        // Dead letters: one per images record, also when the dead letter comes twice, with
        // or without a decodable frame.
        let dead = |offset, frame_id: Option<&str>| DeadLetterRow {
            source_partition: 2,
            source_offset: offset,
            frame_id: frame_id.map(str::to_owned),
            source: Some("cam-1".into()),
            kind: "corrupt_image".into(),
            message: "truncated JPEG".into(),
            dlq_partition: 0,
            dlq_offset: offset,
        };
        let dlq = Batch {
            group_id: "g1.dead-letters".into(),
            topic: "images.dlq".into(),
            dead_letters: vec![dead(7, Some("f9")), dead(8, None), dead(7, Some("f9"))],
            offsets: vec![PartitionOffset { partition: 0, next_offset: 9 }],
            ..Batch::default()
        };
        assert_eq!(store.write_batch(&dlq).unwrap().dead_letters, 2);
        assert_eq!(store.write_batch(&dlq).unwrap().dead_letters, 0, "redelivered dead letters are stored once");
        assert_eq!(store.load_offsets("g1.dead-letters", "images.dlq").unwrap(), HashMap::from([(0, 9)]));
        assert_eq!(store.load_offsets(group, topic).unwrap(), HashMap::from([(0, 2), (1, 3)]));
        // A stale batch (a member that lost the partition, stored late) never moves a stored
        // offset backwards: the next owner already stored past it.
        let stale = Batch {
            group_id: group.into(),
            topic: topic.into(),
            rows: vec![],
            rejects: vec![],
            dead_letters: Vec::new(),
            offsets: vec![PartitionOffset { partition: 1, next_offset: 1 }],
        };
        store.write_batch(&stale).unwrap();
        assert_eq!(store.load_offsets(group, topic).unwrap(), HashMap::from([(0, 2), (1, 3)]), "offset went back");
        // Offsets are per group and topic.
        assert!(store.load_offsets("other", topic).unwrap().is_empty());
        assert!(store.load_offsets(group, "other").unwrap().is_empty());

        let stats = store.stats().unwrap();
        assert_eq!(stats, StoreStats { rows: 4, distinct_frames: 4, distinct_sources: 4, rejects: 1 });
        let mut ids = store.frame_ids().unwrap();
        ids.sort();
        assert_eq!(ids, ["f1", "f2", "f3", "f4"]);
    }
}
