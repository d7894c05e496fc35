//! `POST /v1/frames?source=ID`: one image in, one Frame on `images`, acknowledged by the
//! brokers (`acks=all`, idempotent producer) before the client hears `202`.
//!
//! The image is the body (`Content-Type: image/*`) or the `image` part of a
//! `multipart/form-data` form. It is never decoded here (that is the detector's work, off
//! this process): its format is sniffed from its first bytes, so bytes of no supported
//! format, or of another type than declared, are refused at once (415) rather than
//! dead-lettered later. A file with an image's signature but broken content still goes
//! through, and the detector dead-letters it.
//!
//! `Idempotency-Key`: the frame id is derived from the source and the key, and the first
//! answer for a key is remembered, so a client that retries after a lost answer gets the
//! same `frame_id` and the frame is produced once. Across replicas (no shared memory) a
//! retry that lands elsewhere is produced again, under the same frame id: the sink's
//! primary key still stores it once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use opentelemetry::trace::TraceContextExt;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use tokio::sync::{OnceCell, Semaphore};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::JsonQuery;
use super::reply::Refusal;
use super::schema::{Accepted, Binary, ErrorBody, Id};
use super::App;
use crate::codec::{now_us, Frame, ImageEncoding};
use crate::kafka::{try_enqueue, Enqueued};
use crate::telemetry::{inject_context, spans};

/// Namespace of frame ids derived from an `Idempotency-Key` (fixed: never change it).
const KEYED_FRAMES: Uuid = Uuid::from_u128(0x5b0e_54a1_8c3f_4f6e_a1d2_7e09_c4b3_21f8);

/// Idempotency keys remembered per replica; the oldest are forgotten beyond.
const REMEMBERED_KEYS: usize = 100_000;

/// The query of an upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    /// Camera / source id: the record key (a source's frames keep their order).
    pub(super) source: Option<Id>,
}

/// An upload as a form: one part, `image` (any other part is refused, so that a misnamed
/// part is not silently ignored).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Describes the form for the OpenAPI document; `image_part` reads it.
pub(super) struct UploadForm {
    /// The image file (JPEG, PNG, GIF, BMP or WebP).
    #[schema(value_type = Binary)]
    image: Vec<u8>,
}

/// The producer side of the API.
pub(super) struct Ingest {
    producer: FutureProducer,
    topic: String,
    max_message_bytes: usize,
    delivery_timeout: Duration,
    /// `Frame.session` of this replica: `(session, source, seq)` lets `vigil verify` find gaps.
    session: String,
    seqs: Mutex<HashMap<String, i64>>,
    keys: Mutex<Remembered>,
    in_flight: Semaphore,
}

#[derive(Default)]
struct Remembered {
    answers: HashMap<String, Arc<OnceCell<Accepted>>>,
    order: VecDeque<String>,
}

impl Ingest {
    pub(super) fn new(producer: FutureProducer, settings: &crate::settings::Settings) -> Self {
        Ingest {
            producer,
            topic: settings.kafka.topics.images.name.clone(),
            max_message_bytes: settings.kafka.max_message_bytes as usize,
            delivery_timeout: Duration::from_millis(settings.producer.delivery_timeout_ms),
            session: Uuid::new_v4().to_string(),
            seqs: Mutex::new(HashMap::new()),
            keys: Mutex::new(Remembered::default()),
            in_flight: Semaphore::new(settings.api.max_in_flight),
        }
    }

    /// The answer cell of `key` (shared by concurrent retries: the second waits for the first).
    fn remembered(&self, key: &str) -> Arc<OnceCell<Accepted>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = keys.answers.get(key) {
            return cell.clone();
        }
        if keys.order.len() >= REMEMBERED_KEYS {
            if let Some(oldest) = keys.order.pop_front() {
                keys.answers.remove(&oldest);
            }
        }
        let cell = Arc::new(OnceCell::new());
        keys.answers.insert(key.to_owned(), cell.clone());
        keys.order.push_back(key.to_owned());
        cell
    }

    fn next_seq(&self, source: &str) -> i64 {
        let mut seqs = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
        let seq = seqs.entry(source.to_owned()).or_insert(0);
        *seq += 1;
        *seq - 1
    }

    /// Produces one frame and waits for the brokers' acknowledgement.
    async fn produce(
        &self,
        frame_id: String,
        source: &str,
        data: Vec<u8>,
        parent: &opentelemetry::Context,
    ) -> Result<Accepted, Refusal> {
        let _permit = self.in_flight.try_acquire().map_err(|_| {
            Refusal::unavailable(
                "busy",
                "too many uploads are waiting for the broker (api.max_in_flight); retry shortly",
                1,
            )
        })?;
        let frame = Frame {
            frame_id,
            source: source.to_owned(),
            seq: self.next_seq(source),
            captured_at_us: now_us(),
            encoding: ImageEncoding::sniff(&data),
            width: None,
            height: None,
            data,
            attributes: HashMap::from([("via".to_owned(), "api".to_owned())]),
            session: Some(self.session.clone()),
        };
        let payload = frame.encode().map_err(|e| Refusal::internal(format!("cannot encode the frame: {e}")))?;
        if payload.len() > self.max_message_bytes {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the frame is {} bytes, above kafka.max_message_bytes = {}",
                    payload.len(),
                    self.max_message_bytes
                ),
            ));
        }
        let trace = spans::send(parent, &self.topic, Some(source.as_bytes()), Some(&frame.frame_id));
        let headers = inject_context(&trace, OwnedHeaders::new());
        let record = FutureRecord::to(&self.topic).key(source).payload(&payload).headers(headers);
        let delivery = match try_enqueue(&self.producer, record) {
            Ok(Enqueued::Sent(delivery)) => delivery,
            Ok(Enqueued::Full(_)) => {
                trace.span().end();
                return Err(Refusal::unavailable("backpressure", "the producer's queue is full; retry shortly", 1));
            }
            Err(e) => {
                trace.span().end();
                return Err(Refusal::unavailable("kafka", format!("the Kafka producer refused the frame: {e}"), 5));
            }
        };
        let outcome = tokio::time::timeout(self.delivery_timeout + Duration::from_secs(5), delivery).await;
        let span = trace.span();
        let result = match outcome {
            Ok(Ok(Ok(d))) => Ok(Accepted {
                frame_id: frame.frame_id,
                source: frame.source,
                seq: frame.seq,
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Ok(Err((e, _)))) => Err(not_acknowledged(&e)),
            Ok(Err(_)) | Err(_) => {
                Err(Refusal::unavailable("kafka", "the broker did not acknowledge the frame in time; retry", 5))
            }
        };
        if let Err(refusal) = &result {
            spans::fail(&trace, refusal.code, &refusal.message);
        }
        span.end();
        result
    }
}

fn not_acknowledged(e: &KafkaError) -> Refusal {
    Refusal::unavailable("kafka", format!("the brokers did not acknowledge the frame ({e}); retry"), 5)
}

/// Uploads one image as a frame of `source`. Answers 202 once the brokers have
/// acknowledged the frame (never before); its result follows at
/// `GET /v1/frames/{frame_id}`. A retry with the same `Idempotency-Key` gets the same
/// `frame_id` and is not produced twice.
#[utoipa::path(
    post,
    path = "/v1/frames",
    tag = "frames",
    params(
        ("source" = Id, Query, description = "The camera or app the frame comes from."),
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,200}$",
            description = "1 to 200 visible ASCII characters; a retry with the same key (and source) is the same frame."),
    ),
    request_body(
        description = "The image as the body, with its `image/*` type, or as the `image` part of a form. The bytes \
                       must be a JPEG, PNG, GIF, BMP or WebP file, of the declared type; one that has such a \
                       file's signature but cannot be decoded is dead-lettered by the detector.",
        content((Binary = "image/*"), (UploadForm = "multipart/form-data")),
    ),
    responses(
        (status = 202, description = "On the `images` topic, acknowledged by the brokers.", body = Accepted),
        (status = 400, description = "No or a malformed source, Idempotency-Key or form; an unknown query parameter; an empty image.", body = ErrorBody),
        (status = 413, description = "Larger than `api.max_body_bytes` or the topic's message limit.", body = ErrorBody),
        (status = 415, description = "Not an `image/*` body or a form; bytes of no supported image format, or of another type than declared.", body = ErrorBody),
    )
)]
pub(super) async fn post_frame(
    State(app): State<Arc<App>>,
    JsonQuery(query): JsonQuery<UploadQuery>,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), Refusal> {
    let parent = crate::telemetry::extract_http(request.headers());
    let cx = spans::server(&parent, "POST", "/v1/frames");
    let result = accept(&app, query, request, &cx).await;
    spans::http_status(&cx, result.as_ref().map_or_else(|r| r.status.as_u16(), |_| 202));
    cx.span().end();
    result.map(|accepted| (StatusCode::ACCEPTED, Json(accepted)))
}

async fn accept(
    app: &App,
    query: UploadQuery,
    request: Request,
    cx: &opentelemetry::Context,
) -> Result<Accepted, Refusal> {
    let max = app.config.max_body_bytes;
    let declared_length =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let Some(id) = query.source.filter(|Id(s)| !s.is_empty()) else {
        return Err(Refusal::bad_request("missing_source", "name the camera: POST /v1/frames?source=ID"));
    };
    let source = id.as_source()?;
    let key = idempotency_key(request.headers())?;
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (data, declared) = if content_type.starts_with("multipart/form-data") {
        image_part(request, max).await?
    } else if content_type.starts_with("image/") {
        let body = axum::body::to_bytes(request.into_body(), max).await.map_err(|_| too_large(max))?;
        (body.to_vec(), Some(content_type))
    } else {
        return Err(unsupported(&content_type));
    };
    if data.is_empty() {
        return Err(Refusal::bad_request("empty", "the image is empty"));
    }
    check_format(declared.as_deref(), &data)?;
    let Some(key) = key else {
        return app.ingest.produce(Uuid::new_v4().to_string(), source, data, cx).await;
    };
    let keyed = format!("{source}\n{key}");
    let frame_id = Uuid::new_v5(&KEYED_FRAMES, keyed.as_bytes()).to_string();
    let cell = app.ingest.remembered(&keyed);
    cell.get_or_try_init(|| app.ingest.produce(frame_id, source, data, cx)).await.cloned()
}

fn too_large(max: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the upload is larger than api.max_body_bytes = {max} bytes; send a smaller image"),
    )
}

fn unsupported(content_type: &str) -> Refusal {
    Refusal::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "Content-Type {content_type:?}: send the image as the body with Content-Type image/jpeg (or png, gif, \
             bmp, webp), or as the `image` part of multipart/form-data"
        ),
    )
}

/// The `Idempotency-Key` header, if any: 1 to 200 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(k) if (1..=200).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(k.to_owned())),
        _ => Err(Refusal::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        )),
    }
}

/// Refuses bytes of no supported image format, and bytes of another format than the
/// declared `image/…` type (`image/*`, `application/octet-stream` or no type: any format).
fn check_format(content_type: Option<&str>, data: &[u8]) -> Result<(), Refusal> {
    let sniffed = ImageEncoding::sniff(data);
    if sniffed == ImageEncoding::Unknown {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unknown_format",
            "the bytes are not a JPEG, PNG, GIF, BMP or WebP file (judged by their first bytes); send one of those",
        ));
    }
    let Some(declared) = content_type
        .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .and_then(|t| t.strip_prefix("image/").map(str::to_owned))
    else {
        return Ok(());
    };
    let same = match sniffed {
        ImageEncoding::Jpeg => matches!(declared.as_str(), "jpeg" | "jpg" | "pjpeg"),
        ImageEncoding::Bmp => matches!(declared.as_str(), "bmp" | "x-ms-bmp" | "x-bmp"),
        known => declared == known.as_str(),
    };
    if same || declared == "*" {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "type_mismatch",
        format!("declared image/{declared} but the bytes are {sniffed}; send the right Content-Type"),
    ))
}

/// The `image` part of a form.
/// The form's `image` part and its declared type.
async fn image_part(request: Request, max: usize) -> Result<(Vec<u8>, Option<String>), Refusal> {
    let bad = |message: String| Refusal::bad_request("bad_form", message);
    let mut form =
        Multipart::from_request(request, &()).await.map_err(|e| bad(format!("cannot read the form: {e}")))?;
    let mut image = None;
    while let Some(field) = form.next_field().await.map_err(|e| bad(format!("cannot read the form: {e}")))? {
        match field.name() {
            Some("image") if image.is_none() => {}
            Some("image") => return Err(bad("the form has two `image` parts; send one".into())),
            other => return Err(bad(format!("the form has a part {other:?}; send only the `image` part"))),
        }
        let declared = field.content_type().map(str::to_owned);
        let bytes = field.bytes().await.map_err(|_| too_large(max))?;
        if bytes.len() > max {
            return Err(too_large(max));
        }
        image = Some((bytes.to_vec(), declared));
    }
    image.ok_or_else(|| bad("the form has no `image` part".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_must_be_a_supported_image_of_the_declared_type() {
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0];
        assert!(check_format(Some("image/jpeg"), &jpeg).is_ok());
        assert!(check_format(Some("image/jpg; q=1"), &jpeg).is_ok());
        assert!(check_format(Some("image/*"), &jpeg).is_ok());
        assert!(check_format(Some("application/octet-stream"), &jpeg).is_ok(), "a form part of no image type");
        assert!(check_format(None, &jpeg).is_ok());
        assert_eq!(check_format(Some("image/png"), &jpeg).unwrap_err().code, "type_mismatch");
        assert_eq!(check_format(Some("image/png"), b"not an image").unwrap_err().code, "unknown_format");
        assert_eq!(check_format(None, b"null").unwrap_err().code, "unknown_format");
    }

    #[test]
    fn idempotency_keys_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert("idempotency-key", "upload-42".parse().unwrap());
        assert_eq!(idempotency_key(&headers).unwrap().as_deref(), Some("upload-42"));
        headers.insert("idempotency-key", "two words".parse().unwrap());
        assert_eq!(idempotency_key(&headers).unwrap_err().code, "invalid_idempotency_key");
    }
}
