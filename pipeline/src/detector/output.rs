//! What a batch writes: one record per input, a result on `detections` or a dead letter
//! on the DLQ, with its headers (trace context for results, the original headers plus
//! `vigil.error.*` for dead letters).
//!
//! A dead letter must fit the DLQ, or the batch holding it aborts and is redone forever
//! (the broker, or the producer's `message.max.bytes`, refuses it every time). The
//! detector learns the DLQ's limit at start ([`Destinations::new`]); a dead letter whose
//! whole form exceeds it is sent truncated: its payload cut to what fits, flagged with
//! `vigil.dlq.truncated`, `vigil.dlq.original_bytes` and `vigil.dlq.sha256` (see
//! `codec::dlq`). Should its own delivery be refused for its size anyway (the limit was
//! lowered after start, or misread) [`TRUNCATE_AFTER_FAILURES`] times, it goes truncated
//! to half its size, then a quarter, ..., so that the redo ends in a commit. Only size
//! refusals of the dead letter itself count: a broker outage, however long, fails every
//! attempt but truncates nothing. Refusals are counted per dead letter, not per batch:
//! batches without it commit in between while it is redone.

use std::collections::HashMap;
use std::sync::Mutex;

use opentelemetry::trace::TraceContextExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tracing::{info, warn};

use super::judge::Verdict;
use super::model_thread::InputRecord;
use crate::codec::dlq::{cut_to_fit, error_headers, record_size, truncation_headers, Parts, RECORD_OVERHEAD_BYTES};
use crate::kafka::{max_message_bytes, DLQ_HEADROOM_BYTES};
use crate::settings::Settings;
use crate::telemetry::{inject_context, spans};

/// Size refusals of its own delivery after which a dead letter goes truncated, whatever
/// its size (see the module doc; [`Destinations::refused`]).
pub(crate) const TRUNCATE_AFTER_FAILURES: u32 = 3;

/// Most dead letters whose failures are remembered (those of revoked partitions are never
/// settled here): past it the memory starts over.
const MAX_REMEMBERED: usize = 10_000;

/// How a batch writes its dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterForm {
    /// Whole when it fits the DLQ's limit, truncated to the limit otherwise.
    Sized,
    /// Truncated to the whole record's size halved `halvings` times (and to the limit).
    Truncated { halvings: u32 },
}

impl DeadLetterForm {
    /// The form for a dead letter whose delivery was refused for its size `failures` times.
    pub(crate) fn after_failures(failures: u32) -> Self {
        match failures.checked_sub(TRUNCATE_AFTER_FAILURES) {
            None => DeadLetterForm::Sized,
            Some(n) => DeadLetterForm::Truncated { halvings: (n + 1).min(usize::BITS - 1) },
        }
    }
}

/// Topic names, for records and spans; the DLQ's limit and the
/// size refusals of the dead letters not committed yet.
#[derive(Debug)]
pub(crate) struct Destinations {
    pub(crate) images: String,
    pub(crate) detections: String,
    pub(crate) dlq: String,
    /// Largest dead letter the DLQ topic and the producer both accept, bytes (as counted
    /// by [`record_size`]).
    pub(crate) dlq_limit: usize,
    /// Size refusals of each dead letter not committed yet, by its `(partition, offset)`
    /// in `images`.
    refusals: Mutex<HashMap<(i32, i64), u32>>,
}

/// An output record and, for a dead letter, its size against [`Destinations::dlq_limit`].
pub(crate) struct Output<'a> {
    pub(crate) record: FutureRecord<'a, [u8], [u8]>,
    pub(crate) dead_letter_bytes: Option<usize>,
}

impl Destinations {
    /// The destinations of `settings`, with the DLQ's limit learned from the broker: the
    /// topic's `max.message.bytes` (override or broker default), capped by the producer's
    /// `message.max.bytes`. A broker that cannot say (the in-memory broker) is assumed to
    /// accept what the producer sends, the limit Vigil creates the DLQ with. Warns when
    /// the DLQ accepts less than `images` plus room for headers.
    pub(crate) async fn new(settings: &Settings) -> Destinations {
        let kafka = &settings.kafka;
        let topics = &kafka.topics;
        // The detector producer's `message.max.bytes` (see `transaction::producer_config`).
        let producer_limit = kafka.topic_max_message_bytes(&topics.dlq);
        let described = max_message_bytes(kafka, &[&topics.dlq.name, &topics.images.name]).await;
        let dlq_topic = described[0].unwrap_or_else(|| {
            info!(topic = %topics.dlq.name, assumed = producer_limit, "the broker did not say the dead-letter topic's max.message.bytes; assuming it accepts what the producer may send");
            producer_limit
        });
        let images_limit = described[1].unwrap_or(kafka.max_message_bytes);
        let dlq_limit = dlq_topic.min(producer_limit);
        if u64::from(dlq_limit) < u64::from(images_limit) + u64::from(DLQ_HEADROOM_BYTES) {
            warn!(
                topic = %topics.dlq.name,
                max_message_bytes = dlq_topic,
                producer_max_bytes = producer_limit,
                images_max_message_bytes = images_limit,
                "the dead-letter topic accepts records up to {dlq_limit} bytes, less than {} accepts plus {DLQ_HEADROOM_BYTES} bytes for headers: dead letters larger than that are sent truncated (vigil.dlq.truncated)",
                topics.images.name,
            );
        } else {
            info!(topic = %topics.dlq.name, limit = dlq_limit, "dead letters up to this size are sent whole");
        }
        Destinations {
            images: topics.images.name.clone(),
            detections: topics.detections.name.clone(),
            dlq: topics.dlq.name.clone(),
            dlq_limit: dlq_limit as usize,
            refusals: Mutex::default(),
        }
    }

    /// The form of each record's dead letter in a new commit attempt (one per record;
    /// [`DeadLetterForm::Sized`] for results), after its size refusals so far.
    pub(crate) fn forms(&self, records: &[InputRecord], verdicts: &[Verdict]) -> Vec<DeadLetterForm> {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        records
            .iter()
            .zip(verdicts)
            .map(|(record, verdict)| match verdict {
                Verdict::Result { .. } => DeadLetterForm::Sized,
                Verdict::DeadLetter { .. } => DeadLetterForm::after_failures(
                    refusals.get(&(record.partition, record.offset)).copied().unwrap_or(0),
                ),
            })
            .collect()
    }

    /// The dead letter of the `images` record at `position` was refused for its size
    /// (by the producer or the broker): its next attempt is one step nearer truncation.
    pub(crate) fn refused(&self, position: (i32, i64)) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if refusals.len() >= MAX_REMEMBERED {
            refusals.clear();
        }
        let n = refusals.entry(position).or_default();
        *n += 1;
        warn!(partition = position.0, offset = position.1, refusals = *n, "dead letter refused for its size");
    }

    /// `records` were committed: their dead letters' refusals are forgotten.
    pub(crate) fn committed(&self, records: &[InputRecord]) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if !refusals.is_empty() {
            for record in records {
                refusals.remove(&(record.partition, record.offset));
            }
        }
    }

    /// The output record for `record`: a borrowed view for the producer. Its `send` span
    /// (a child of the frame's `process` span) travels in a result's headers; a dead
    /// letter keeps the original headers, so its trace stays the producer's, and its
    /// `process` span ends in error. Ends the frame's `process` span.
    pub(crate) fn output<'a>(
        &'a self,
        record: &'a InputRecord,
        verdict: &'a Verdict,
        form: DeadLetterForm,
    ) -> Output<'a> {
        let (topic, key, payload, headers, dead_letter_bytes) = match verdict {
            Verdict::Result { key, value, .. } => {
                let send = spans::send(&record.trace, &self.detections, Some(key.as_bytes()), None);
                let headers = inject_context(&send, OwnedHeaders::new());
                send.span().end();
                (&self.detections, Some(key.as_bytes()), Some(value.as_slice()), headers, None)
            }
            Verdict::DeadLetter { kind, message } => {
                spans::fail(&record.trace, kind, message);
                let send = spans::send(&record.trace, &self.dlq, record.key.as_deref(), None);
                spans::fail(&send, kind, message);
                send.span().end();
                let letter = self.dead_letter(record, kind, message, form);
                (&self.dlq, letter.key, letter.payload, letter.headers, Some(letter.bytes))
            }
        };
        record.trace.span().end();
        let mut out: FutureRecord<'a, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = key {
            out = out.key(key);
        }
        if let Some(payload) = payload {
            out = out.payload(payload);
        }
        Output { record: out, dead_letter_bytes }
    }

    /// The dead letter of `record`: whole if `form` allows and it fits, else truncated.
    fn dead_letter<'a>(
        &self,
        record: &'a InputRecord,
        kind: &str,
        message: &str,
        form: DeadLetterForm,
    ) -> DeadLetter<'a> {
        let error = error_headers(kind, message, record.partition, record.offset);
        let original = || record.headers.iter().map(|(name, value)| (name.len(), value.as_ref().map_or(0, Vec::len)));
        let vigil = |headers: &[(&str, String)]| {
            headers.iter().map(|(name, value)| (name.len(), value.len())).collect::<Vec<_>>()
        };
        let (key, value) = (record.key.as_deref(), record.payload.as_deref());
        let len = |b: Option<&[u8]>| b.map_or(0, <[u8]>::len);
        let whole = record_size(len(key), len(value), original().chain(vigil(&error)));
        let limit = match form {
            DeadLetterForm::Sized if whole <= self.dlq_limit => {
                let mut headers = owned_headers(&record.headers);
                for (name, v) in &error {
                    headers = headers.insert(Header { key: name, value: Some(v.as_bytes()) });
                }
                return DeadLetter { key, payload: value, headers, bytes: whole };
            }
            DeadLetterForm::Sized => self.dlq_limit,
            DeadLetterForm::Truncated { halvings } => self.dlq_limit.min(whole >> halvings),
        };
        let truncation = truncation_headers(value.unwrap_or_default());
        let vigil_headers: Vec<(usize, usize)> = vigil(&error).into_iter().chain(vigil(&truncation)).collect();
        let parts = Parts {
            key: len(key),
            value: len(value),
            original_headers: record_size(0, 0, original()) - RECORD_OVERHEAD_BYTES,
            vigil_headers: record_size(0, 0, vigil_headers) - RECORD_OVERHEAD_BYTES,
        };
        let cut = cut_to_fit(parts, limit);
        let mut headers = if cut.original_headers { owned_headers(&record.headers) } else { OwnedHeaders::new() };
        for (name, v) in error.iter().chain(&truncation) {
            headers = headers.insert(Header { key: name, value: Some(v.as_bytes()) });
        }
        let bytes = RECORD_OVERHEAD_BYTES
            + cut.key
            + cut.value
            + parts.vigil_headers
            + if cut.original_headers { parts.original_headers } else { 0 };
        warn!(
            partition = record.partition,
            offset = record.offset,
            kind,
            whole_bytes = whole,
            sent_bytes = bytes,
            limit,
            original_headers_kept = cut.original_headers,
            ?form,
            "dead letter truncated to fit the dead-letter topic (vigil.dlq.truncated)"
        );
        DeadLetter { key: key.map(|k| &k[..cut.key]), payload: value.map(|v| &v[..cut.value]), headers, bytes }
    }
}

/// A dead letter's parts, borrowed from its input record.
struct DeadLetter<'a> {
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: OwnedHeaders,
    /// Its size as [`record_size`] counts it.
    bytes: usize,
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

    use super::super::test_support::record;
    use super::*;
    use crate::codec::dlq::{sha256_hex, HEADER_ORIGINAL_BYTES, HEADER_SHA256, HEADER_TRUNCATED};

    #[test]
    fn headers_round_trip() {
        let h = owned_headers(&[("traceparent".into(), Some(b"00-abc".to_vec())), ("null".into(), None)]);
        let got: Vec<(String, Option<Vec<u8>>)> =
            h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect();
        assert_eq!(got, vec![("traceparent".into(), Some(b"00-abc".to_vec())), ("null".into(), None)]);
    }

    fn destinations(dlq_limit: usize) -> Destinations {
        Destinations {
            images: "images".into(),
            detections: "detections".into(),
            dlq: "images.dlq".into(),
            dlq_limit,
            refusals: Mutex::default(),
        }
    }

    /// What a record weighs against a broker's or producer's limit, framing aside: key,
    /// value, header names and values.
    fn raw_bytes(out: &FutureRecord<'_, [u8], [u8]>) -> usize {
        let headers =
            out.headers.as_ref().map_or(0, |h| h.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum());
        out.key.map_or(0, <[u8]>::len) + out.payload.map_or(0, <[u8]>::len) + headers
    }

    fn header<'a>(out: &'a FutureRecord<'_, [u8], [u8]>, name: &str) -> Option<&'a [u8]> {
        out.headers.as_ref()?.iter().find(|h| h.key == name)?.value
    }

    fn poison() -> InputRecord {
        let mut r = record(7, Some((0..200_000u32).map(|i| (i % 251) as u8).collect()));
        r.headers = vec![("traceparent".into(), Some(vec![b'x'; 55])), ("origin".into(), None)];
        r
    }

    fn not_avro() -> Verdict {
        Verdict::DeadLetter { kind: "not_avro", message: "not an Avro single-object record".into() }
    }

    #[test]
    fn a_dead_letter_that_fits_is_sent_whole() {
        let dest = destinations(1 << 20);
        let (r, v) = (poison(), not_avro());
        let out = dest.output(&r, &v, DeadLetterForm::Sized);
        assert_eq!(out.record.payload, r.payload.as_deref());
        assert_eq!(header(&out.record, HEADER_TRUNCATED), None);
        assert!(out.dead_letter_bytes.unwrap() > raw_bytes(&out.record));
    }

    #[test]
    fn a_dead_letter_too_large_for_the_dlq_is_truncated_to_fit_key_and_headers_included() {
        let limit = 64 * 1024;
        let dest = destinations(limit);
        let (r, v) = (poison(), not_avro());
        let out = dest.output(&r, &v, DeadLetterForm::Sized);
        let original = r.payload.as_deref().unwrap();
        let payload = out.record.payload.unwrap();
        assert!(raw_bytes(&out.record) + 200 <= limit, "{} bytes against {limit}", raw_bytes(&out.record));
        assert!(out.dead_letter_bytes.unwrap() <= limit);
        assert!(payload.len() > limit - 4096 && original.starts_with(payload), "cut to what fits: {}", payload.len());
        assert_eq!(out.record.key, Some(&b"cam-1"[..]), "the key is kept");
        assert_eq!(header(&out.record, "traceparent").map(<[u8]>::len), Some(55), "the original headers are kept");
        assert_eq!(header(&out.record, HEADER_TRUNCATED), Some(&b"true"[..]));
        assert_eq!(header(&out.record, HEADER_ORIGINAL_BYTES), Some(&b"200000"[..]));
        assert_eq!(header(&out.record, HEADER_SHA256), Some(sha256_hex(original).as_bytes()));
        assert_eq!(header(&out.record, "vigil.error.kind"), Some(&b"not_avro"[..]));
    }

    #[test]
    fn size_refusals_are_counted_per_dead_letter_until_it_commits() {
        let dest = destinations(1 << 20);
        let (poison, v) = (poison(), not_avro());
        let mut other = record(3, Some(vec![1, 2, 3]));
        other.partition = 0;
        let result = Verdict::Result { key: "cam-0".into(), value: vec![0] };
        let mut forms = Vec::new();
        // The poison is refused for its size, a batch of other records commits, and so on.
        for _ in 0..TRUNCATE_AFTER_FAILURES + 1 {
            forms.push(dest.forms(std::slice::from_ref(&poison), std::slice::from_ref(&v))[0]);
            dest.refused((poison.partition, poison.offset));
            assert_eq!(dest.forms(&[other.clone()], std::slice::from_ref(&result)), vec![DeadLetterForm::Sized]);
            dest.committed(&[other.clone()]);
        }
        let truncated = DeadLetterForm::Truncated { halvings: 1 };
        assert_eq!(forms, vec![DeadLetterForm::Sized, DeadLetterForm::Sized, DeadLetterForm::Sized, truncated]);
        // Once committed, it is forgotten.
        dest.committed(std::slice::from_ref(&poison));
        assert_eq!(dest.forms(std::slice::from_ref(&poison), std::slice::from_ref(&v)), vec![DeadLetterForm::Sized]);
    }

    #[test]
    fn repeated_failures_halve_every_dead_letter_until_it_fits() {
        let dest = destinations(1 << 20);
        let (r, v) = (poison(), not_avro());
        for failures in 0..TRUNCATE_AFTER_FAILURES {
            let out = dest.output(&r, &v, DeadLetterForm::after_failures(failures));
            assert_eq!(out.record.payload, r.payload.as_deref(), "sent whole after {failures} failures");
        }
        let mut last = usize::MAX;
        for failures in TRUNCATE_AFTER_FAILURES..TRUNCATE_AFTER_FAILURES + 20 {
            let out = dest.output(&r, &v, DeadLetterForm::after_failures(failures));
            let bytes = out.dead_letter_bytes.unwrap();
            assert_eq!(header(&out.record, HEADER_TRUNCATED), Some(&b"true"[..]), "after {failures} failures");
            assert!(bytes < last || bytes <= RECORD_OVERHEAD_BYTES + 2048, "shrinks: {bytes} after {last}");
            last = bytes;
        }
        // At the end only the vigil.* headers are left: error, position, digest.
        let out = dest.output(&r, &v, DeadLetterForm::after_failures(u32::MAX));
        assert_eq!(out.record.payload.map(<[u8]>::len), Some(0));
        assert_eq!(header(&out.record, "traceparent"), None);
    }
}
