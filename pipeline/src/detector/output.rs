//! What a batch writes: one record per input, a result on `detections` or a dead letter
//! on the DLQ, with its headers (trace context for results, the original headers plus
//! `vigil.error.*` for dead letters).

use opentelemetry::trace::TraceContextExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::judge::Verdict;
use super::model_thread::InputRecord;
use crate::codec::dlq::error_headers;
use crate::telemetry::{extract_context, inject_context, spans, start_process_span};

/// Topic names and the consumer group, for records and spans.
#[derive(Debug, Clone)]
pub(crate) struct Destinations {
    pub(crate) images: String,
    pub(crate) detections: String,
    pub(crate) dlq: String,
    pub(crate) group_id: String,
}

impl Destinations {
    /// The output record for `record`: a borrowed view for the producer. Ends the frame's
    /// `process` span (a child of the producer's), whose context the result carries on.
    pub(crate) fn output<'a>(&'a self, record: &'a InputRecord, verdict: &'a Verdict) -> FutureRecord<'a, [u8], [u8]> {
        let (topic, key, payload, headers): (&str, Option<&[u8]>, Option<&[u8]>, OwnedHeaders) = match verdict {
            Verdict::Result { key, value, .. } => {
                let parent = extract_context(Some(&owned_headers(&record.headers)));
                let cx = start_process_span(
                    spans::IMAGES_PROCESS,
                    &parent,
                    &self.images,
                    record.partition,
                    &self.group_id,
                    record.offset,
                );
                let headers = inject_context(&cx, OwnedHeaders::new());
                cx.span().end();
                (&self.detections, Some(key.as_bytes()), Some(value.as_slice()), headers)
            }
            Verdict::DeadLetter { kind, message } => {
                let mut headers = owned_headers(&record.headers);
                for (name, value) in error_headers(kind, message, record.partition, record.offset) {
                    headers = headers.insert(Header { key: name, value: Some(value.as_bytes()) });
                }
                (&self.dlq, record.key.as_deref(), record.payload.as_deref(), headers)
            }
        };
        let mut out: FutureRecord<'a, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = key {
            out = out.key(key);
        }
        if let Some(payload) = payload {
            out = out.payload(payload);
        }
        out
    }
}

/// Headers as librdkafka takes them.
pub(crate) fn owned_headers(headers: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len() + 4), |h, (key, value)| {
        h.insert(Header { key, value: value.as_deref() })
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = owned_headers(&[("traceparent".into(), Some(b"00-abc".to_vec())), ("null".into(), None)]);
        let got: Vec<(String, Option<Vec<u8>>)> =
            h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect();
        assert_eq!(got, vec![("traceparent".into(), Some(b"00-abc".to_vec())), ("null".into(), None)]);
    }
}
