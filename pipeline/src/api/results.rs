//! Reading results back: one frame (optionally waiting for it), a source's frames newest
//! first with filters and a cursor, and the list of sources.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::reply::Refusal;
use super::results_db::{Before, ResultsDbError, StoredFrame};
use super::App;
use crate::codec::contract;

/// How often a long poll asks the database.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Most frames one page holds.
const MAX_LIMIT: i64 = 500;

fn unavailable(e: ResultsDbError) -> Refusal {
    Refusal::unavailable("database", format!("{e}; retry shortly"), 2)
}

/// A time in microseconds as RFC 3339 (UTC, microseconds).
pub(super) fn rfc3339(us: i64) -> Value {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map_or(Value::Null, |t| Value::String(t.to_rfc3339_opts(SecondsFormat::Micros, true)))
}

/// The JSON of a stored frame, its detections kept when `keep` says so.
pub(super) fn frame_json(f: &StoredFrame, keep: impl Fn(&Value) -> bool) -> Value {
    let detections: Vec<Value> = match serde_json::from_str::<Value>(&f.detections_json) {
        Ok(Value::Array(all)) => all.into_iter().filter(|d| keep(d)).collect(),
        _ => Vec::new(),
    };
    json!({
        "status": "stored",
        "frame_id": f.frame_id,
        "source": f.source,
        "seq": f.seq,
        "width": f.width,
        "height": f.height,
        "captured_at": rfc3339(f.captured_at_us),
        "processed_at": rfc3339(f.processed_at_us),
        "stored_at": rfc3339(f.stored_at_us),
        "model": f.model,
        "batch_size": f.batch_size,
        "inference_ms": f.inference_us as f64 / 1000.0,
        "detections": detections,
    })
}

/// `?wait=SECONDS` of `GET /v1/frames/{id}`.
#[derive(Debug, Deserialize)]
pub(super) struct WaitQuery {
    pub(super) wait: Option<f64>,
}

/// `GET /v1/frames/{frame_id}`: the stored result, or `status: dead_lettered` with the
/// error when the detector could not process it; 404 until either is stored. `?wait=S` holds the
/// request up to S seconds (at most `api.max_wait_s`) until it is stored.
pub(super) async fn get_frame(
    State(app): State<Arc<App>>,
    Path(frame_id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<Value>, Refusal> {
    contract::check_frame_id(&frame_id)
        .map_err(|e| Refusal::bad_request("invalid_frame_id", format!("frame_id: {e}")))?;
    let wait = match query.wait {
        None => 0.0,
        Some(w) if w.is_finite() && w >= 0.0 => w.min(app.config.max_wait_s as f64),
        Some(w) => return Err(Refusal::bad_request("invalid_wait", format!("wait={w}: give seconds, 0 or more"))),
    };
    let until = Instant::now() + Duration::from_secs_f64(wait);
    loop {
        if let Some(frame) = app.db.frame(&frame_id).await.map_err(unavailable)? {
            return Ok(Json(frame_json(&frame, |_| true)));
        }
        if let Some(dead) = app.db.dead_letter(&frame_id).await.map_err(unavailable)? {
            return Ok(Json(json!({
                "status": "dead_lettered",
                "frame_id": dead.frame_id,
                "source": dead.source,
                "stored_at": rfc3339(dead.stored_at_us),
                "error": {"kind": dead.kind, "message": dead.message},
            })));
        }
        if Instant::now() >= until || app.shutdown.is_cancelled() {
            return Err(Refusal::not_found(format!(
                "frame {frame_id} has no stored result yet (queued, in the model, or unknown); ask again, or add ?wait=SECONDS"
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_EVERY) => {}
            _ = app.shutdown.cancelled() => {}
        }
    }
}

/// The query of a source's detections.
#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    /// Only frames captured at or after this time (RFC 3339).
    pub(super) since: Option<String>,
    /// Only detections of this label (and frames that have one).
    pub(super) label: Option<String>,
    /// Only detections scoring at least this (and frames that have one).
    pub(super) min_score: Option<f64>,
    /// Frames per page (1 to 500, default 50).
    pub(super) limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub(super) cursor: Option<String>,
}

fn parse_cursor(cursor: &str) -> Option<Before> {
    let (us, frame_id) = cursor.split_once(':')?;
    Some(Before { captured_at_us: us.parse().ok()?, frame_id: frame_id.to_owned() })
}

/// `GET /v1/sources/{source}/detections`: the source's frames newest first.
pub(super) async fn get_detections(
    State(app): State<Arc<App>>,
    Path(source): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, Refusal> {
    contract::check_source(&source).map_err(|e| Refusal::bad_request("invalid_source", format!("source: {e}")))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Refusal::bad_request("invalid_limit", format!("limit={limit}: give 1 to {MAX_LIMIT}")));
    }
    let since_us = match &q.since {
        None => i64::MIN,
        Some(s) => DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_micros()).map_err(|e| {
            Refusal::bad_request(
                "invalid_since",
                format!("since={s:?}: {e}; give an RFC 3339 time, e.g. 2026-12-01T08:00:00Z"),
            )
        })?,
    };
    if let Some(score) = q.min_score.filter(|s| !(0.0..=1.0).contains(s)) {
        return Err(Refusal::bad_request("invalid_min_score", format!("min_score={score}: give 0 to 1")));
    }
    let mut before = match &q.cursor {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            Refusal::bad_request("invalid_cursor", "cursor: pass next_cursor of the previous page unchanged")
        })?),
    };
    let filtered = q.label.is_some() || q.min_score.is_some();
    let keep = |d: &Value| {
        q.label.as_deref().is_none_or(|l| d.get("label").and_then(Value::as_str) == Some(l))
            && q.min_score.is_none_or(|m| d.get("score").and_then(Value::as_f64).is_some_and(|s| s >= m))
    };
    // With filters, rows are read in chunks until the page is full; a page that scanned
    // many rows without filling ends early with a cursor, so no request scans without bound.
    let mut frames = Vec::new();
    let mut exhausted = false;
    for _ in 0..if filtered { 8 } else { 1 } {
        let chunk = app.db.page(&source, since_us, before.clone(), limit).await.map_err(unavailable)?;
        exhausted = (chunk.len() as i64) < limit;
        for f in &chunk {
            before = Some(Before { captured_at_us: f.captured_at_us, frame_id: f.frame_id.clone() });
            let json = frame_json(f, keep);
            if !filtered || json["detections"].as_array().is_some_and(|d| !d.is_empty()) {
                frames.push(json);
                if frames.len() as i64 == limit {
                    break;
                }
            }
        }
        if exhausted || frames.len() as i64 == limit {
            break;
        }
    }
    let next = (!exhausted).then(|| before.map(|b| format!("{}:{}", b.captured_at_us, b.frame_id))).flatten();
    Ok(Json(json!({"source": source, "frames": frames, "next_cursor": next})))
}

/// `GET /v1/sources`: every source with stored results.
pub(super) async fn get_sources(State(app): State<Arc<App>>) -> Result<Json<Value>, Refusal> {
    let sources = app.db.sources(10_000).await.map_err(unavailable)?;
    let list: Vec<Value> = sources
        .iter()
        .map(|s| json!({"source": s.source, "frames": s.frames, "last_captured_at": rfc3339(s.last_captured_at_us)}))
        .collect();
    Ok(Json(json!({ "sources": list })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let b = parse_cursor("1700000000000000:cam-1:frame").unwrap();
        assert_eq!(b, Before { captured_at_us: 1_700_000_000_000_000, frame_id: "cam-1:frame".into() });
        assert!(parse_cursor("nonsense").is_none());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_700_000_000_123_456), json!("2023-11-14T22:13:20.123456Z"));
    }
}
