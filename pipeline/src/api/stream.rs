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

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tokio::sync::broadcast;
use tracing::warn;
use utoipa::IntoParams;

use super::extract::JsonQuery;
use super::reply::Refusal;
use super::schema::{ErrorBody, Id, StoredResult};
use super::App;
use crate::codec::now_us;

/// How often the feed asks the database for newly stored results.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Results kept for slow clients before they miss some.
const BUFFER: usize = 1024;

/// Most results read per look.
const BATCH: i64 = 500;

/// The broadcast of newly stored results.
pub(super) struct Feed {
    tx: broadcast::Sender<Arc<StoredResult>>,
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
                    app.feed.tx.send(Arc::new(StoredResult::from_row(&frame))).ok();
                }
            }
            Err(e) => warn!(error = %e, "live stream: cannot read newly stored results; retrying"),
        }
    }
}

/// Which results a client wants.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    /// Only this source's results.
    pub(super) source: Option<Id>,
    /// Only results with a detection of this label, narrowed to those.
    #[param(example = "dog")]
    pub(super) label: Option<String>,
}

/// Results as the sink stores them, as Server-Sent Events, until the client leaves:
/// `event: detection` with `id:` the frame id and `data:` a `StoredResult`; `event: lagged`
/// with `data:` the number of results this client was too slow to receive.
#[utoipa::path(
    get,
    path = "/v1/stream",
    tag = "results",
    params(StreamQuery),
    responses(
        (status = 200, description = "An endless event stream; each `detection` event's data is a StoredResult.", content_type = "text/event-stream", body = String),
        (status = 400, description = "A malformed source; an unknown query parameter.", body = ErrorBody),
    )
)]
pub(super) async fn get_stream(
    State(app): State<Arc<App>>,
    JsonQuery(query): JsonQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Refusal> {
    if let Some(source) = &query.source {
        source.as_source()?;
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
                Ok(frame) => {
                    let Some(frame) = wanted(&frame, &query) else { continue };
                    match Event::default().event("detection").id(frame.frame_id.clone()).json_data(&frame) {
                        Ok(event) => event,
                        Err(e) => {
                            warn!(error = %e, "live stream: cannot serialize a result; skipped");
                            continue;
                        }
                    }
                }
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
fn wanted(frame: &StoredResult, query: &StreamQuery) -> Option<StoredResult> {
    if query.source.as_ref().is_some_and(|Id(s)| frame.source != *s) {
        return None;
    }
    let Some(label) = query.label.as_deref() else { return Some(frame.clone()) };
    let narrowed = frame.clone().narrowed(|d| d.label == label);
    (!narrowed.detections.is_empty()).then_some(narrowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_their_source_and_label() {
        let frame = StoredResult::example("cam-1", &["dog", "person"]);
        let q = |source: Option<&str>, label: Option<&str>| StreamQuery {
            source: source.map(|s| Id(s.to_owned())),
            label: label.map(str::to_owned),
        };
        assert_eq!(wanted(&frame, &q(None, None)), Some(frame.clone()));
        assert_eq!(wanted(&frame, &q(Some("cam-2"), None)), None);
        let dogs = wanted(&frame, &q(Some("cam-1"), Some("dog"))).unwrap();
        assert_eq!(dogs.detections.iter().map(|d| d.label.as_str()).collect::<Vec<_>>(), ["dog"]);
        assert_eq!(dogs.frame_id, frame.frame_id);
        assert_eq!(wanted(&frame, &q(None, Some("giraffe"))), None);
    }
}
