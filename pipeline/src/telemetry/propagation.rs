//! W3C trace context in Kafka headers: every record carries `traceparent` (and
//! `tracestate`), so a frame's trace id is the same in every stage and process.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::{global, Context};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Name of the W3C trace-context header carried by every record.
#[cfg(test)]
pub(crate) const TRACEPARENT_HEADER: &str = "traceparent";

/// Writes `cx`'s trace context (`traceparent`, `tracestate`) into Kafka headers,
/// replacing nothing (call it on headers that do not yet carry them).
pub(crate) fn inject_context(cx: &Context, headers: OwnedHeaders) -> OwnedHeaders {
    let mut fields = HeaderMap::default();
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut fields));
    fields.0.iter().fold(headers, |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_bytes()) }))
}

/// Reads the trace context from a record's headers (an empty context when there is none
/// or it is malformed: tracing never fails a record).
pub(crate) fn extract_context<H: Headers>(headers: Option<&H>) -> Context {
    match headers {
        Some(headers) => {
            let extractor = KafkaHeaders(headers);
            global::get_text_map_propagator(|p| p.extract(&extractor))
        }
        None => Context::new(),
    }
}

/// Reads the trace context of an incoming HTTP request (`traceparent`), so that a client's
/// trace continues through the API into Kafka; an empty context without one.
pub(crate) fn extract_http(headers: &axum::http::HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HttpHeaders(headers)))
}

struct HttpHeaders<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[derive(Default)]
struct HeaderMap(HashMap<String, String>);

impl Injector for HeaderMap {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// Read-only view of Kafka headers for the propagator (UTF-8 values only).
struct KafkaHeaders<'a, H: Headers>(&'a H);

impl<H: Headers> Extractor for KafkaHeaders<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        // Last one wins, like Kafka clients' `lastHeader`.
        self.0
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(key))
            .filter_map(|h| h.value.and_then(|v| std::str::from_utf8(v).ok()))
            .last()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanKind;

    use super::*;
    use crate::telemetry::spans::{ids, start};

    fn trace_id(cx: &Context) -> Option<String> {
        ids(cx).map(|(trace, _)| trace)
    }

    #[test]
    fn traceparent_roundtrips_through_kafka_headers() {
        let _guard = crate::telemetry::init_for_tests();
        let cx = start("send images", SpanKind::Producer, &Context::new(), vec![], vec![]);
        let id = trace_id(&cx).expect("sdk spans are valid");
        let headers = inject_context(&cx, OwnedHeaders::new().insert(Header { key: "other", value: Some("x") }));
        assert!(headers.iter().any(|h| h.key == TRACEPARENT_HEADER));
        let extracted = extract_context(Some(&headers));
        assert_eq!(trace_id(&extracted).as_deref(), Some(id.as_str()));
        // A child span in the next stage shares the trace id.
        let child = start("process images", SpanKind::Consumer, &extracted, vec![], vec![]);
        assert_eq!(trace_id(&child), Some(id));
    }

    #[test]
    fn missing_or_garbage_headers_give_an_empty_context() {
        let _guard = crate::telemetry::init_for_tests();
        assert!(trace_id(&extract_context::<OwnedHeaders>(None)).is_none());
        let junk = OwnedHeaders::new().insert(Header { key: TRACEPARENT_HEADER, value: Some("not-a-traceparent") });
        assert!(trace_id(&extract_context(Some(&junk))).is_none());
    }
}
