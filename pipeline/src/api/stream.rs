//! `GET /v1/stream[?source=ID][&label=L]`: results as the sink stores them, as
//! Server-Sent Events (`event: detection`, `id:` the frame id, `data:` the same JSON as
//! `GET /v1/frames/{id}`).
//!
//! One task per replica reads what was stored since its last look (every
//! [`POLL_EVERY`], only while someone listens) and broadcasts it; each client filters its
//! own copy. A client too slow for the broadcast buffer misses results and is told so
//! (`event: lagged`, `data:` how many), never slowing the others.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;
use tracing::warn;

use super::reply::Refusal;
use super::results::frame_json;
use super::App;
use crate::codec::{contract, now_us};

/// How often the feed asks the database for newly stored results.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Results kept for slow clients before they miss some.
const BUFFER: usize = 1024;

/// Most results read per look.
const BATCH: i64 = 500;

/// The broadcast of newly stored results.
pub(super) struct Feed {
    tx: broadcast::Sender<Arc<Value>>,
}

impl Feed {
    pub(super) fn new() -> Self {
        Feed { tx: broadcast::channel(BUFFER).0 }
    }
}

/// Reads newly stored results while clients listen, until shutdown.
pub(super) async fn run(app: Arc<App>) {
    let mut after = (now_us(), String::new());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL_EVERY) => {}
            _ = app.shutdown.cancelled() => return,
        }
        if app.feed.tx.receiver_count() == 0 {
            // Nobody listens: a client that connects sees what is stored from then on.
            after = (now_us(), String::new());
            continue;
        }
        match app.db.stored_after(after.clone(), BATCH).await {
            Ok(frames) => {
                for frame in frames {
                    after = (frame.stored_at_us, frame.frame_id.clone());
                    // No receiver left: the next look starts over.
                    app.feed.tx.send(Arc::new(frame_json(&frame, |_| true))).ok();
                }
            }
            Err(e) => warn!(error = %e, "live stream: cannot read newly stored results; retrying"),
        }
    }
}

/// Which results a client wants.
#[derive(Debug, Deserialize)]
pub(super) struct StreamQuery {
    pub(super) source: Option<String>,
    pub(super) label: Option<String>,
}

/// `GET /v1/stream`.
pub(super) async fn get_stream(
    State(app): State<Arc<App>>,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Refusal> {
    if let Some(source) = &query.source {
        contract::check_source(source).map_err(|e| Refusal::bad_request("invalid_source", format!("source: {e}")))?;
    }
    let rx = app.feed.tx.subscribe();
    let shutdown = app.shutdown.clone();
    let events = stream::unfold((rx, query, shutdown), |(mut rx, query, shutdown)| async move {
        loop {
            let received = tokio::select! {
                received = rx.recv() => received,
                _ = shutdown.cancelled() => return None,
            };
            let event = match received {
                Ok(frame) => match wanted(&frame, &query) {
                    Some(frame) => {
                        let id = frame["frame_id"].as_str().unwrap_or_default().to_owned();
                        Event::default().event("detection").id(id).data(frame.to_string())
                    }
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Event::default().event("lagged").data(missed.to_string())
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok(event), (rx, query, shutdown)));
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The frame as this client wants it (its detections narrowed to `label`), or `None`.
fn wanted(frame: &Value, query: &StreamQuery) -> Option<Value> {
    if query.source.as_deref().is_some_and(|s| frame["source"].as_str() != Some(s)) {
        return None;
    }
    let Some(label) = query.label.as_deref() else { return Some(frame.clone()) };
    let mut frame = frame.clone();
    let kept: Vec<Value> =
        frame["detections"].as_array()?.iter().filter(|d| d["label"].as_str() == Some(label)).cloned().collect();
    if kept.is_empty() {
        return None;
    }
    frame["detections"] = Value::Array(kept);
    Some(frame)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn clients_get_their_source_and_label() {
        let frame = json!({"source": "cam-1", "detections": [{"label": "dog"}, {"label": "person"}]});
        let q = |source: Option<&str>, label: Option<&str>| StreamQuery {
            source: source.map(str::to_owned),
            label: label.map(str::to_owned),
        };
        assert_eq!(wanted(&frame, &q(None, None)), Some(frame.clone()));
        assert_eq!(wanted(&frame, &q(Some("cam-2"), None)), None);
        let dogs = wanted(&frame, &q(Some("cam-1"), Some("dog"))).unwrap();
        assert_eq!(dogs["detections"], json!([{"label": "dog"}]));
        assert_eq!(wanted(&frame, &q(None, Some("giraffe"))), None);
    }
}
