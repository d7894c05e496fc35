//! PostgreSQL store (`postgres://…`), through the synchronous `postgres` crate.
//!
//! The `postgres` crate drives its own small runtime internally, so it must never be
//! called from inside a tokio runtime: the sink calls it from its database thread.

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, NoTls};

use super::{Batch, BatchOutcome, DetectionRow, Store, StoreStats};
use crate::codec::now_us;
use crate::sink::error::StoreError;
use crate::sink::failpoint::{self, Point};

/// Schema migrations, applied in order under an advisory lock (several sinks may start
/// at once); `schema_migrations` records the last one. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: detections + consumer offsets + rejects.
    r#"
    CREATE TABLE detections (
        frame_id         TEXT    PRIMARY KEY,
        source           TEXT    NOT NULL,
        seq              BIGINT  NOT NULL,
        captured_at_us   BIGINT  NOT NULL,
        width            INTEGER NOT NULL,
        height           INTEGER NOT NULL,
        model_name       TEXT    NOT NULL,
        model_version    TEXT    NOT NULL,
        detection_count  INTEGER NOT NULL,
        detections       JSONB   NOT NULL,
        processed_at_us  BIGINT  NOT NULL,
        batch_size       INTEGER NOT NULL,
        inference_us     BIGINT  NOT NULL,
        source_partition INTEGER NOT NULL,
        source_offset    BIGINT  NOT NULL,
        result_partition INTEGER NOT NULL,
        result_offset    BIGINT  NOT NULL,
        stored_at_us     BIGINT  NOT NULL
    );
    CREATE INDEX detections_source_seq ON detections (source, seq);
    CREATE TABLE consumer_offsets (
        group_id      TEXT    NOT NULL,
        topic         TEXT    NOT NULL,
        partition     INTEGER NOT NULL,
        next_offset   BIGINT  NOT NULL,
        updated_at_us BIGINT  NOT NULL,
        PRIMARY KEY (group_id, topic, partition)
    );
    CREATE TABLE sink_rejects (
        topic        TEXT    NOT NULL,
        partition    INTEGER NOT NULL,
        "offset"     BIGINT  NOT NULL,
        kind         TEXT    NOT NULL,
        message      TEXT    NOT NULL,
        payload      BYTEA   NOT NULL,
        stored_at_us BIGINT  NOT NULL,
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
        source_offset    BIGINT  NOT NULL,
        frame_id         TEXT,
        source           TEXT,
        kind             TEXT    NOT NULL,
        message          TEXT    NOT NULL,
        dlq_partition    INTEGER NOT NULL,
        dlq_offset       BIGINT  NOT NULL,
        stored_at_us     BIGINT  NOT NULL,
        PRIMARY KEY (source_partition, source_offset)
    );
    CREATE INDEX dead_letters_frame_id ON dead_letters (frame_id);
    "#,
];

/// Arbitrary constant key for `pg_advisory_xact_lock` around migrations.
const MIGRATION_LOCK_KEY: i64 = 0x5649_4749_4c00_0001; // "VIGIL\0\0\x01"

/// Inserts one detection row; `$18` is the time it is stored.
const INSERT_ROW: &str = "INSERT INTO detections (frame_id, source, seq, captured_at_us, width, height, model_name,
        model_version, detection_count, detections, processed_at_us, batch_size, inference_us,
        source_partition, source_offset, result_partition, result_offset, stored_at_us)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CAST($10::TEXT AS JSONB), $11, $12, $13, $14, $15, $16, $17, $18)
     ON CONFLICT (frame_id) DO NOTHING";

/// Inserts one dead letter; `$9` is the time it is stored.
const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (source_partition, source_offset, frame_id, source, kind,
        message, dlq_partition, dlq_offset, stored_at_us)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";

/// Runs [`INSERT_ROW`] (prepared as `insert`) for `r`: 1 when stored, 0 when its frame
/// already was.
fn insert_row(
    tx: &mut postgres::Transaction<'_>,
    insert: &postgres::Statement,
    r: &DetectionRow,
    now: i64,
) -> Result<u64, postgres::Error> {
    tx.execute(
        insert,
        &[
            &r.frame_id,
            &r.source,
            &r.seq,
            &r.captured_at_us,
            &r.width,
            &r.height,
            &r.model_name,
            &r.model_version,
            &r.detection_count,
            &r.detections_json,
            &r.processed_at_us,
            &r.batch_size,
            &r.inference_us,
            &r.source_partition,
            &r.source_offset,
            &r.result_partition,
            &r.result_offset,
            &now,
        ],
    )
}

/// A PostgreSQL database.
pub(crate) struct PostgresStore {
    client: Client,
}

fn err(context: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |cause| StoreError::Postgres { context, cause }
}

impl PostgresStore {
    /// Connects (no TLS) and migrates.
    ///
    /// Bounded waits on the socket: a server that vanished without closing the connection
    /// (host down, packets dropped) must surface as an error within seconds, so that the
    /// sink's outage limit (`sink.db_outage_limit_ms`) is what decides when it gives up.
    /// Values in the URL win over these defaults.
    pub(crate) fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(|cause| StoreError::PostgresConnect { cause })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        config.keepalives(true).keepalives_idle(Duration::from_secs(15));
        let client = config.connect(NoTls).map_err(|cause| StoreError::PostgresConnect { cause })?;
        let mut store = PostgresStore { client };
        store.migrate()?;
        Ok(store)
    }

    /// The connection, for readers of the stored results (`api`).
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let mut tx = self.client.transaction().map_err(err("starting the migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .map_err(err("taking the migration lock"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_us BIGINT NOT NULL)",
        )
        .map_err(err("creating schema_migrations"))?;
        let current: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations", &[])
            .map_err(err("reading the schema version"))?
            .get(0);
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(sql).map_err(err("applying a schema migration"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at_us) VALUES ($1, $2)",
                &[&(i as i64 + 1), &now_us()],
            )
            .map_err(err("recording a schema migration"))?;
        }
        tx.commit().map_err(err("committing the migration"))
    }
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<BatchOutcome, StoreError> {
        failpoint::batch_begun();
        let now = now_us();
        let mut tx = self.client.transaction().map_err(err("starting a batch transaction"))?;
        let mut out = BatchOutcome::default();
        let insert = tx.prepare(INSERT_ROW).map_err(err("preparing the row insert"))?;
        for r in &batch.rows {
            if insert_row(&mut tx, &insert, r, now).map_err(err("inserting a detection row"))? == 1 {
                out.inserted += 1;
            } else {
                out.duplicates += 1;
            }
        }
        if !batch.rejects.is_empty() {
            let reject = tx
                .prepare(
                    r#"INSERT INTO sink_rejects (topic, partition, "offset", kind, message, payload, stored_at_us)
                       VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"#,
                )
                .map_err(err("preparing the reject insert"))?;
            for r in &batch.rejects {
                out.rejected += tx
                    .execute(&reject, &[&r.topic, &r.partition, &r.offset, &r.kind, &r.message, &r.payload, &now])
                    .map_err(err("inserting a reject"))?;
            }
        }
        if !batch.dead_letters.is_empty() {
            let insert = tx.prepare(INSERT_DEAD_LETTER).map_err(err("preparing the dead letter insert"))?;
            for d in &batch.dead_letters {
                let params: [&(dyn postgres::types::ToSql + Sync); 9] = [
                    &d.source_partition,
                    &d.source_offset,
                    &d.frame_id,
                    &d.source,
                    &d.kind,
                    &d.message,
                    &d.dlq_partition,
                    &d.dlq_offset,
                    &now,
                ];
                out.dead_letters += tx.execute(&insert, &params).map_err(err("inserting a dead letter"))?;
            }
        }
        let upsert = tx
            .prepare(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at_us)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (group_id, topic, partition)
                 DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset),
                    updated_at_us = EXCLUDED.updated_at_us",
            )
            .map_err(err("preparing the offset upsert"))?;
        for o in &batch.offsets {
            tx.execute(&upsert, &[&batch.group_id, &batch.topic, &o.partition, &o.next_offset, &now])
                .map_err(err("upserting an offset"))?;
        }
        failpoint::kill_at(Point::SinkKillBeforeDbCommit);
        tx.commit().map_err(err("committing a batch"))?;
        failpoint::kill_at(Point::SinkKillAfterDbCommit);
        Ok(out)
    }

    fn refused_rows(&mut self, rows: &[DetectionRow]) -> Result<Vec<(usize, String)>, StoreError> {
        let now = now_us();
        // Dropped without commit: rolled back, savepoints and all.
        let mut tx = self.client.transaction().map_err(err("starting a probe transaction"))?;
        let insert = tx.prepare(INSERT_ROW).map_err(err("preparing the row insert"))?;
        let mut refused = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            // A failed statement aborts a PostgreSQL transaction: each row gets a savepoint
            // (rolled back when dropped), so the rows after a refused one are still tried.
            let mut row_tx = tx.transaction().map_err(err("starting a savepoint"))?;
            match insert_row(&mut row_tx, &insert, r, now) {
                Ok(_) => row_tx.commit().map_err(err("releasing a savepoint"))?,
                Err(cause) => {
                    let e = StoreError::Postgres { context: "inserting a detection row", cause };
                    if !e.is_row_refused() {
                        return Err(e);
                    }
                    refused.push((i, e.to_string()));
                }
            }
        }
        Ok(refused)
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn load_offsets(&mut self, group_id: &str, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
                &[&group_id, &topic],
            )
            .map_err(err("reading offsets"))?;
        Ok(rows.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1))).collect())
    }

    fn stats(&mut self) -> Result<StoreStats, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT COUNT(*)::BIGINT,
                        (SELECT COUNT(*) FROM (SELECT DISTINCT source_partition, source_offset FROM detections) s)::BIGINT,
                        (SELECT COUNT(*) FROM sink_rejects)::BIGINT
                 FROM detections",
                &[],
            )
            .map_err(err("counting rows"))?;
        let rows = row.get::<_, i64>(0) as u64;
        Ok(StoreStats {
            rows,
            distinct_frames: rows,
            distinct_sources: row.get::<_, i64>(1) as u64,
            rejects: row.get::<_, i64>(2) as u64,
        })
    }

    fn frame_ids(&mut self) -> Result<Vec<String>, StoreError> {
        let rows = self.client.query("SELECT frame_id FROM detections", &[]).map_err(err("listing frame ids"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the store contract in a fresh schema of the database named by
    /// `VIGIL_TEST_DATABASE_URL` (e.g. `postgres://127.0.0.1:5432/test`); skipped, with a
    /// message, when it is not set.
    #[test]
    fn contract_on_postgres() {
        let Ok(url) = std::env::var("VIGIL_TEST_DATABASE_URL") else {
            eprintln!("skipped: VIGIL_TEST_DATABASE_URL is not set (e.g. postgres://127.0.0.1:5432/test)");
            return;
        };
        let schema = format!("vigil_unit_{}", uuid::Uuid::new_v4().simple());
        let mut admin = Client::connect(&url, NoTls).expect("connect to VIGIL_TEST_DATABASE_URL");
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
        let scoped = with_search_path(&url, &schema);
        let result = std::panic::catch_unwind(|| {
            let mut store = PostgresStore::connect(&scoped).unwrap();
            crate::sink::store::tests::contract(&mut store);
            // Migrations are idempotent: a second connect finds version 1 and does nothing.
            let mut again = PostgresStore::connect(&scoped).unwrap();
            assert_eq!(again.stats().unwrap().rows, 4);
        });
        admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// Adds `options=-csearch_path=<schema>` to a URL.
    pub(crate) fn with_search_path(url: &str, schema: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-csearch_path%3D{schema}")
    }
}
