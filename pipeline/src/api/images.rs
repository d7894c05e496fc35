//! `GET /v1/frames/{frame_id}/image`: a frame's image, read back from the `images` topic at
//! the partition and offset its stored result records. The database keeps results only,
//! so the image is there for as long as the topic's retention keeps it (404 after that),
//! and the viewer can draw boxes on the frame they were found in.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::extract::JsonPath;
use super::reply::Refusal;
use super::results::FramePath;
use super::schema::{Binary, ErrorBody};
use super::App;
use crate::codec::{Frame, ImageEncoding};
use crate::kafka::{reader_config, KafkaConfig};

/// How long one read may take before the request is answered 503.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads single records of `images` by position. One consumer, one read at a time: the
/// viewer asks for a few images per second at most, and browsers cache them (a frame's
/// image never changes).
pub(super) struct ImageReader {
    consumer: Mutex<BaseConsumer>,
    topic: String,
}

/// What a read found.
pub(super) enum Found {
    Image(Box<Frame>),
    /// Nothing at that position any more (retention, or a topic recreated since).
    Gone,
}

impl ImageReader {
    pub(super) fn new(kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut config = reader_config(kafka, "api-images");
        // The images topic is written without transactions; a read at a known position
        // needs no isolation, and partition EOF ends a read past the log's end at once.
        config.set("isolation.level", "read_uncommitted").set("enable.partition.eof", "true");
        Ok(ImageReader { consumer: Mutex::new(config.create()?), topic: kafka.topics.images.name.clone() })
    }

    /// The record at `partition`/`offset`, decoded (blocking; run it off the runtime).
    pub(super) fn read(&self, partition: i32, offset: i64) -> Result<Found, KafkaError> {
        let consumer = self.consumer.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        consumer.assign(&list)?;
        let deadline = Instant::now() + READ_TIMEOUT;
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut));
            }
            match consumer.poll(left) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break Ok(Found::Gone),
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => break Ok(Found::Gone),
                Some(Err(e)) => break Err(e),
                Some(Ok(m)) if m.partition() != partition || m.offset() < offset => continue,
                Some(Ok(m)) if m.offset() > offset => break Ok(Found::Gone),
                Some(Ok(m)) => {
                    break Ok(m
                        .payload()
                        .and_then(|bytes| Frame::decode(bytes).ok())
                        .map_or(Found::Gone, |f| Found::Image(Box::new(f))))
                }
            }
        };
        // Nothing stays assigned between reads (no fetching in the background).
        consumer.unassign().ok();
        found
    }
}

fn content_type(encoding: ImageEncoding) -> &'static str {
    match encoding {
        ImageEncoding::Jpeg => "image/jpeg",
        ImageEncoding::Png => "image/png",
        ImageEncoding::Gif => "image/gif",
        ImageEncoding::Bmp => "image/bmp",
        ImageEncoding::Webp => "image/webp",
        ImageEncoding::Unknown => "application/octet-stream",
    }
}

/// A frame's image, as uploaded, with its type (`application/octet-stream` for bytes of
/// no known image format). Served once the frame has a stored result, for as long as the
/// `images` topic's retention keeps it.
#[utoipa::path(
    get,
    path = "/v1/frames/{frame_id}/image",
    tag = "results",
    params(FramePath),
    responses(
        (status = 200, description = "The image.", content(
            (Binary = "image/jpeg"), (Binary = "image/png"), (Binary = "image/gif"), (Binary = "image/bmp"),
            (Binary = "image/webp"), (Binary = "application/octet-stream"),
        )),
        (status = 400, description = "A malformed frame id.", body = ErrorBody),
        (status = 404, description = "No stored result, or the image is past the topic's retention.", body = ErrorBody),
    )
)]
pub(super) async fn get_image(
    State(app): State<Arc<App>>,
    JsonPath(path): JsonPath<FramePath>,
) -> Result<Response, Refusal> {
    let frame_id = path.frame_id.as_frame_id()?;
    let stored = app
        .db
        .frame(frame_id)
        .await
        .map_err(|e| Refusal::unavailable("database", format!("{e}; retry shortly"), 2))?
        .ok_or_else(|| {
            Refusal::not_found(format!("frame {frame_id} has no stored result; its image is served once it has"))
        })?;
    let images = app.images.clone();
    let read = tokio::task::spawn_blocking(move || images.read(stored.image_partition, stored.image_offset)).await;
    let frame = match read {
        Ok(Ok(Found::Image(frame))) if frame.frame_id == frame_id => frame,
        Ok(Ok(_)) => {
            return Err(Refusal::not_found(format!(
                "the image of frame {frame_id} is no longer in the images topic (retention); its result is still at /v1/frames/{frame_id}"
            )))
        }
        Ok(Err(e)) => return Err(Refusal::unavailable("kafka", format!("cannot read the image from Kafka: {e}; retry shortly"), 2)),
        Err(e) => return Err(Refusal::internal(format!("the image read did not complete: {e}"))),
    };
    let mut response = frame.data.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(frame.encoding)));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400, immutable"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}
