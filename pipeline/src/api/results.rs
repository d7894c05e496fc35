//! Reading results back: one frame (optionally waiting for it), a source's frames newest
//! first with filters and a cursor, and the list of sources.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use chrono::DateTime;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{JsonPath, JsonQuery};
use super::reply::Refusal;
use super::results_db::{Before, ResultsDbError};
use super::schema::{
    DeadLetteredResult, Detection, DetectionsPage, ErrorBody, FrameResult, Id, SourceInfo, SourceList, StoredResult,
};
use super::App;

/// How often a long poll asks the database.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Most frames one page holds.
const MAX_LIMIT: i64 = 500;

fn unavailable(e: ResultsDbError) -> Refusal {
    Refusal::unavailable("database", format!("{e}; retry shortly"), 2)
}

/// The frame a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct FramePath {
    /// The `frame_id` an upload answered with (or a producer chose).
    pub(super) frame_id: Id,
}

/// `?wait=SECONDS` of `GET /v1/frames/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    /// Hold the request up to this many seconds (at most `api.max_wait_s`) until the
    /// result is stored.
    #[param(minimum = 0)]
    pub(super) wait: Option<f64>,
}

/// A frame's result: `status: stored` with its detections, or `status: dead_lettered` with
/// the error when the detector could not process it; 404 until either is stored.
#[utoipa::path(
    get,
    path = "/v1/frames/{frame_id}",
    tag = "results",
    params(FramePath, WaitQuery),
    responses(
        (status = 200, description = "The frame's result.", body = FrameResult),
        (status = 400, description = "A malformed frame id or `wait`; an unknown query parameter.", body = ErrorBody),
        (status = 404, description = "Not stored (yet): queued, in the model, or unknown. Ask again, or add `?wait=`.", body = ErrorBody),
    )
)]
pub(super) async fn get_frame(
    State(app): State<Arc<App>>,
    JsonPath(path): JsonPath<FramePath>,
    JsonQuery(query): JsonQuery<WaitQuery>,
) -> Result<Json<FrameResult>, Refusal> {
    let frame_id = path.frame_id.as_frame_id()?;
    let wait = match query.wait {
        None => 0.0,
        Some(w) if w.is_finite() && w >= 0.0 => w.min(app.config.max_wait_s as f64),
        Some(w) => return Err(Refusal::bad_request("invalid_wait", format!("wait={w}: give seconds, 0 or more"))),
    };
    let until = Instant::now() + Duration::from_secs_f64(wait);
    loop {
        if let Some(frame) = app.db.frame(frame_id).await.map_err(unavailable)? {
            return Ok(Json(FrameResult::Stored(StoredResult::from_row(&frame))));
        }
        if let Some(dead) = app.db.dead_letter(frame_id).await.map_err(unavailable)? {
            return Ok(Json(FrameResult::DeadLettered(DeadLetteredResult::from_row(dead))));
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

/// The source a route is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct SourcePath {
    pub(super) source: Id,
}

/// The query of a source's detections.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    /// Only frames captured at or after this time (RFC 3339).
    #[param(format = DateTime, example = "2026-12-01T08:00:00Z")]
    pub(super) since: Option<String>,
    /// Only detections of this label (and frames that have one).
    #[param(example = "dog")]
    pub(super) label: Option<String>,
    /// Only detections scoring at least this (and frames that have one).
    #[param(minimum = 0, maximum = 1)]
    pub(super) min_score: Option<f64>,
    /// Frames per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub(super) limit: Option<i64>,
    /// `next_cursor` of the previous page, unchanged.
    #[param(pattern = r"^-?[0-9]{1,18}:[^\u0000-\u001f\u007f-\u009f]+$")]
    pub(super) cursor: Option<String>,
}

fn parse_cursor(cursor: &str) -> Option<Before> {
    let (us, frame_id) = cursor.split_once(':')?;
    Some(Before { captured_at_us: us.parse().ok()?, frame_id: frame_id.to_owned() })
}

/// A source's results, newest first, a page at a time (pass `next_cursor` as `cursor`).
/// With `label` or `min_score`, only the frames with such a detection, narrowed to those.
#[utoipa::path(
    get,
    path = "/v1/sources/{source}/detections",
    tag = "results",
    params(SourcePath, PageQuery),
    responses(
        (status = 200, description = "One page of results.", body = DetectionsPage),
        (status = 400, description = "A malformed source or query parameter; an unknown query parameter.", body = ErrorBody),
    )
)]
pub(super) async fn get_detections(
    State(app): State<Arc<App>>,
    JsonPath(path): JsonPath<SourcePath>,
    JsonQuery(q): JsonQuery<PageQuery>,
) -> Result<Json<DetectionsPage>, Refusal> {
    let source = path.source.as_source()?;
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
    let keep =
        |d: &Detection| q.label.as_deref().is_none_or(|l| d.label == l) && q.min_score.is_none_or(|m| d.score >= m);
    // With filters, rows are read in chunks until the page is full; a page that scanned
    // many rows without filling ends early with a cursor, so no request scans without bound.
    let mut frames = Vec::new();
    let mut exhausted = false;
    for _ in 0..if filtered { 8 } else { 1 } {
        let chunk = app.db.page(source, since_us, before.clone(), limit).await.map_err(unavailable)?;
        exhausted = (chunk.len() as i64) < limit;
        for f in &chunk {
            before = Some(Before { captured_at_us: f.captured_at_us, frame_id: f.frame_id.clone() });
            let result = StoredResult::from_row(f).narrowed(keep);
            if !filtered || !result.detections.is_empty() {
                frames.push(result);
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
    Ok(Json(DetectionsPage { source: source.to_owned(), frames, next_cursor: next }))
}

/// Every source with stored results, by name (at most 10,000).
#[utoipa::path(
    get,
    path = "/v1/sources",
    tag = "results",
    responses((status = 200, description = "The sources.", body = SourceList))
)]
pub(super) async fn get_sources(State(app): State<Arc<App>>) -> Result<Json<SourceList>, Refusal> {
    let sources = app.db.sources(10_000).await.map_err(unavailable)?;
    Ok(Json(SourceList { sources: sources.iter().map(SourceInfo::from_row).collect() }))
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
}
