//! Span names, attributes and the helpers that start them, in one place, per the
//! OpenTelemetry semantic conventions of [`SEMCONV_VERSION`] (messaging spans: `{operation}
//! {destination}`, e.g. `send images`, `process images`).
//!
//! One frame's trace: `send images` (producer) → `process images` (detector, a child of
//! it) → `send detections` (a child of that; its context travels in the result's headers)
//! → `process detections` (sink) → `db write`. A model call serves many frames, so
//! `detect batch` is a span of its own with a link to each frame's `process images`, as the
//! conventions prescribe for batches. A dead letter's `process images` ends in error, with
//! a `send` to the dead-letter topic under it.

use std::borrow::Cow;

use opentelemetry::trace::{Link, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{global, Context, InstrumentationScope, KeyValue};

/// The semantic conventions version every span and attribute here follows.
pub const SEMCONV_VERSION: &str = "1.37.0";

/// [`SEMCONV_VERSION`]'s schema URL, recorded on the instrumentation scope.
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.37.0";

/// The instrumentation scope name of every Vigil span.
pub(crate) const TRACER_NAME: &str = "vigil";

/// Span names that do not name a topic.
pub(crate) mod names {
    /// Detector: one model call over a batch of frames.
    pub(crate) const DETECT_BATCH: &str = "detect batch";
    /// Sink: one frame's part of a batch's database transaction.
    pub(crate) const DB_WRITE: &str = "db write";
}

/// Attribute keys and fixed values.
pub(crate) mod attributes {
    pub(crate) const MESSAGING_SYSTEM: &str = "messaging.system";
    pub(crate) const MESSAGING_SYSTEM_KAFKA: &str = "kafka";
    pub(crate) const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
    pub(crate) const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    pub(crate) const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
    pub(crate) const MESSAGING_DESTINATION_PARTITION_ID: &str = "messaging.destination.partition.id";
    pub(crate) const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
    pub(crate) const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
    pub(crate) const MESSAGING_KAFKA_MESSAGE_KEY: &str = "messaging.kafka.message.key";
    pub(crate) const MESSAGING_KAFKA_OFFSET: &str = "messaging.kafka.offset";
    pub(crate) const MESSAGING_BATCH_MESSAGE_COUNT: &str = "messaging.batch.message_count";
    pub(crate) const ERROR_TYPE: &str = "error.type";
    pub(crate) const DB_SYSTEM_NAME: &str = "db.system.name";
    pub(crate) const DB_OPERATION_NAME: &str = "db.operation.name";
    pub(crate) const DB_COLLECTION_NAME: &str = "db.collection.name";
    pub(crate) const DB_OPERATION_BATCH_SIZE: &str = "db.operation.batch.size";
    /// Vigil's own: the model backend (`cpu`, `wgpu`) and the model call's wall time.
    pub(crate) const HTTP_REQUEST_METHOD: &str = "http.request.method";
    pub(crate) const HTTP_ROUTE: &str = "http.route";
    pub(crate) const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    pub(crate) const VIGIL_BACKEND: &str = "vigil.backend";
    pub(crate) const VIGIL_INFERENCE_MS: &str = "vigil.inference_ms";
}

use attributes as attr;

fn tracer() -> global::BoxedTracer {
    let scope = InstrumentationScope::builder(TRACER_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(SCHEMA_URL)
        .build();
    global::tracer_with_scope(scope)
}

/// Starts a span of `kind` named `name` as a child of `parent` and returns the context
/// holding it (end it with `cx.span().end()`, or let the last clone drop).
pub(crate) fn start(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    parent: &Context,
    attributes: Vec<KeyValue>,
    links: Vec<Link>,
) -> Context {
    let tracer = tracer();
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .with_links(links)
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// The attributes every Kafka span carries.
fn messaging(operation: &'static str, topic: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new(attr::MESSAGING_SYSTEM, attr::MESSAGING_SYSTEM_KAFKA),
        KeyValue::new(attr::MESSAGING_OPERATION_NAME, operation),
        KeyValue::new(attr::MESSAGING_OPERATION_TYPE, operation),
        KeyValue::new(attr::MESSAGING_DESTINATION_NAME, topic.to_owned()),
    ]
}

/// `send {topic}`: one record handed to the producer, a child of `parent`. Its context
/// goes into the record's headers.
pub(crate) fn send(parent: &Context, topic: &str, key: Option<&[u8]>, message_id: Option<&str>) -> Context {
    let mut attributes = messaging("send", topic);
    if let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) {
        attributes.push(KeyValue::new(attr::MESSAGING_KAFKA_MESSAGE_KEY, key.to_owned()));
    }
    if let Some(id) = message_id {
        attributes.push(KeyValue::new(attr::MESSAGING_MESSAGE_ID, id.to_owned()));
    }
    start(format!("send {topic}"), SpanKind::Producer, parent, attributes, Vec::new())
}

/// `{method} {route}`: an API request, a child of the caller's context (`traceparent`).
/// Record its answer with [`http_status`].
pub(crate) fn server(parent: &Context, method: &str, route: &'static str) -> Context {
    let attributes =
        vec![KeyValue::new(attr::HTTP_REQUEST_METHOD, method.to_owned()), KeyValue::new(attr::HTTP_ROUTE, route)];
    start(format!("{method} {route}"), SpanKind::Server, parent, attributes, Vec::new())
}

/// Records an HTTP answer on `cx`'s server span (5xx marks it failed).
pub(crate) fn http_status(cx: &Context, status: u16) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
    if status >= 500 {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
}

/// Where a consumed record came from, for its `process` span.
pub(crate) struct Consumed<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) group_id: &'a str,
    pub(crate) key: Option<&'a [u8]>,
}

/// `process {topic}`: one consumed record, from its reading until its outcome is handed
/// on, a child of the context the record carried.
pub(crate) fn process(parent: &Context, record: Consumed<'_>) -> Context {
    let mut attributes = messaging("process", record.topic);
    attributes.extend([
        KeyValue::new(attr::MESSAGING_DESTINATION_PARTITION_ID, record.partition.to_string()),
        KeyValue::new(attr::MESSAGING_KAFKA_OFFSET, record.offset),
        KeyValue::new(attr::MESSAGING_CONSUMER_GROUP_NAME, record.group_id.to_owned()),
    ]);
    if let Some(key) = record.key.and_then(|k| std::str::from_utf8(k).ok()) {
        attributes.push(KeyValue::new(attr::MESSAGING_KAFKA_MESSAGE_KEY, key.to_owned()));
    }
    start(format!("process {}", record.topic), SpanKind::Consumer, parent, attributes, Vec::new())
}

/// `detect batch`: one model call, a root linked to each frame's `process` span.
pub(crate) fn detect_batch<'a>(frames: impl Iterator<Item = &'a Context>, backend: &str) -> Context {
    let links: Vec<Link> =
        frames.map(|cx| cx.span().span_context().clone()).filter(|sc| sc.is_valid()).map(Link::with_context).collect();
    let attributes = vec![
        KeyValue::new(attr::MESSAGING_BATCH_MESSAGE_COUNT, links.len() as i64),
        KeyValue::new(attr::VIGIL_BACKEND, backend.to_owned()),
    ];
    start(names::DETECT_BATCH, SpanKind::Internal, &Context::new(), attributes, links)
}

/// `db write`: a frame's part in a batch's database transaction, a child of its `process`
/// span, so the frame's own trace shows how long its row took to be stored.
pub(crate) fn db_write(parent: &Context, system: &'static str, table: &'static str, batch_rows: usize) -> Context {
    let attributes = vec![
        KeyValue::new(attr::DB_SYSTEM_NAME, system),
        KeyValue::new(attr::DB_OPERATION_NAME, "INSERT"),
        KeyValue::new(attr::DB_COLLECTION_NAME, table),
        KeyValue::new(attr::DB_OPERATION_BATCH_SIZE, batch_rows as i64),
    ];
    start(names::DB_WRITE, SpanKind::Client, parent, attributes, Vec::new())
}

/// Marks `cx`'s span failed with `kind` (a dead letter's or reject's kind) and `message`.
pub(crate) fn fail(cx: &Context, kind: &str, message: &str) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(attr::ERROR_TYPE, kind.to_owned()));
    span.set_status(Status::error(message.to_owned()));
}

/// The trace and span ids of `cx` as hex, or `None` when it carries no valid span.
pub(crate) fn ids(cx: &Context) -> Option<(String, String)> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}
