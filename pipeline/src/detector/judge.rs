//! Judging a batch: every input record gets exactly one [`Verdict`], a result or a dead
//! letter naming what was wrong with the input. Size, Avro and image checks run per
//! record (in parallel: on a GPU, decoding a batch frame after frame takes longer than its
//! inference), then one model call covers every frame that decoded. A panic while
//! judging a record is that record's dead letter, not the worker's end.
//!
//! A failed model call (an error, a wrong number of results, a panic in the forward
//! pass) is either the input's fault or the backend's: a known-good probe image tells
//! them apart. Probe passes: the batch is retried frame by frame and only a frame that
//! fails alone is `inference_failed`. Probe fails: the backend is broken (a lost GPU),
//! the batch gets no verdicts at all, and the loop commits nothing, retries, and stops
//! the worker after `detector.backend_failure_limit_ms` (see `batch_loop`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Instant;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use rayon::prelude::*;
use tracing::warn;

use super::model_thread::{InputRecord, Processed};
use super::overload::Overload;
use super::DetectorConfig;
use crate::codec::{contract, now_us, DetectedObject, DetectionResult, Frame};
use crate::model::{decode_image, resize_to_input, DecodeLimits, DecodedFrame, Detection, Detector};
use crate::telemetry::spans;
use crate::thread_actor::panic_message;

/// What becomes of one input record.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// An encoded `DetectionResult` for `detections`, keyed by source.
    Result { key: String, value: Vec<u8> },
    /// The input goes to the dead-letter topic unchanged, with these error headers.
    DeadLetter { kind: &'static str, message: String },
}

/// Limits the model thread applies to inputs before decoding them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InputLimits {
    /// Larger records are dead-lettered as `oversized` without being decoded.
    pub(crate) max_record_bytes: usize,
    /// Image decoding limits (decompression bombs).
    pub(crate) decode: DecodeLimits,
    /// Stale records and a busy source's extras: dead letters before any decoding.
    pub(crate) overload: Overload,
}

impl InputLimits {
    pub(crate) fn of(cfg: &DetectorConfig) -> Self {
        InputLimits { max_record_bytes: cfg.max_record_bytes, decode: cfg.decode, overload: Overload::of(cfg) }
    }
}

/// Dead-letter kinds, defined once in [`crate::codec::kinds`] (codec and image kinds come
/// from [`crate::codec::CodecError::kind`] and [`crate::model::DecodeError::kind`]).
pub(crate) use crate::codec::kinds;

/// A JPEG whose last scan (SOS, `FF DA`) is not followed by an end-of-image marker
/// (`FF D9`) was cut short: the decoder would pad the missing rows with grey and the
/// model would run on an image that never existed. (Inside entropy-coded data `FF` is
/// always stuffed, so `FF D9` there is the real marker; an EXIF thumbnail's markers come
/// before the main image's scan.)
pub(crate) fn truncated_jpeg(bytes: &[u8]) -> Option<String> {
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return None;
    }
    let last = |marker: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == marker);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => None,
        (Some(_), _) => {
            Some(format!("truncated JPEG ({} bytes): no end-of-image marker after the last scan", bytes.len()))
        }
        // No scan at all: let the decoder say what is wrong.
        (None, _) => None,
    }
}

/// A frame that decoded, waiting for the model.
struct Ready {
    index: usize,
    frame: Frame,
    image: DecodedFrame,
}

/// A [`Ready`] frame once its pixels have moved into the model's batch.
struct Sent {
    index: usize,
    frame: Frame,
    size: (u32, u32),
}

/// Judges every record of a batch: size, Avro, image, then one model call for all the
/// frames that decoded. Records are decoded in parallel (rayon): on a GPU, decoding and
/// resizing a batch one frame after the other takes longer than its inference.
///
/// When the backend fails (see [`Judged`]) or judging panics outside one record's
/// decoding, the batch comes back without verdicts and with the reason: nothing of it is
/// to be committed, and the model thread goes on.
pub(crate) fn process(model: &mut dyn Detector, records: Vec<InputRecord>, limits: &InputLimits) -> Processed {
    // AssertUnwindSafe: after a panic the model's state is suspect, and the next batch
    // (after the loop's backoff) probes it like any failed batch.
    let judged = catch_unwind(AssertUnwindSafe(|| judge_batch(model, &records, limits))).unwrap_or_else(|panic| {
        let reason = format!("the model thread panicked while processing the batch: {}", panic_message(panic));
        warn!(%reason, frames = records.len(), "batch not processed");
        Judged::BackendFailed(reason)
    });
    match judged {
        Judged::Verdicts { verdicts, inferred, inference_ms } => {
            Processed { records, verdicts, inferred, inference_ms, backend_failure: None }
        }
        Judged::BackendFailed(reason) => {
            Processed { records, verdicts: Vec::new(), inferred: 0, inference_ms: 0.0, backend_failure: Some(reason) }
        }
    }
}

/// [`process`] for a batch while the model backend is failing (see `batch_loop`): the
/// known-good probe image first, so that a batch whose frames need no model (bad input,
/// or nothing but overload verdicts) is not committed while the backend is still down;
/// and no overload verdicts, since the backlog is old because of the outage, not the load.
pub(crate) fn process_while_backend_down(
    model: &mut dyn Detector,
    records: Vec<InputRecord>,
    limits: &InputLimits,
) -> Processed {
    if let Err(failure) = probe(model) {
        let reason = format!("the backend still fails a known-good probe image ({failure})");
        return Processed {
            records,
            verdicts: Vec::new(),
            inferred: 0,
            inference_ms: 0.0,
            backend_failure: Some(reason),
        };
    }
    process(model, records, &InputLimits { overload: Overload::default(), ..*limits })
}

/// What judging a batch came to.
enum Judged {
    /// One verdict per record, in order.
    Verdicts { verdicts: Vec<Verdict>, inferred: usize, inference_ms: f64 },
    /// The model backend itself fails: the batch failed and so does a known-good probe
    /// image ([`probe`]). Nothing is known about the frames; none gets a verdict.
    BackendFailed(String),
}

fn judge_batch(model: &mut dyn Detector, records: &[InputRecord], limits: &InputLimits) -> Judged {
    let early = limits.overload.verdicts(records, now_us() / 1000);
    let judged: Vec<Result<(Frame, DecodedFrame), Verdict>> = records
        .par_iter()
        .zip(early)
        .map(|(record, early)| match early {
            Some(verdict) => Err(verdict),
            None => judge_or_dead_letter_panic(record, limits),
        })
        .collect();
    let mut verdicts: Vec<Option<Verdict>> = vec![None; records.len()];
    let mut ready = Vec::with_capacity(records.len());
    for (index, outcome) in judged.into_iter().enumerate() {
        match outcome {
            Ok((frame, image)) => ready.push(Ready { index, frame, image }),
            Err(verdict) => verdicts[index] = Some(verdict),
        }
    }

    let inferred = ready.len();
    let mut inference_ms = 0.0;
    if !ready.is_empty() {
        // Moved out, not cloned: each is a 2 MB input tensor's worth of floats.
        let (sent, images): (Vec<Sent>, Vec<DecodedFrame>) = ready
            .into_iter()
            .map(|r| (Sent { index: r.index, frame: r.frame, size: (r.image.width, r.image.height) }, r.image))
            .unzip();
        let batch = spans::detect_batch(sent.iter().map(|r| &records[r.index].trace), model.backend_name());
        // Ends when this block does; lines logged meanwhile name it.
        let _attached = batch.clone().attach();
        let started = Instant::now();
        let outcome = detect(model, &images);
        inference_ms = started.elapsed().as_secs_f64() * 1000.0;
        batch.span().set_attribute(KeyValue::new(spans::attributes::VIGIL_INFERENCE_MS, inference_ms));
        if let Err(failure) = &outcome {
            spans::fail(&batch, kinds::INFERENCE_FAILED, failure);
        }
        let per_frame: Vec<Result<Vec<Detection>, String>> = match outcome {
            Ok(detections) => detections.into_iter().map(Ok).collect(),
            Err(failure) => {
                if let Err(probe_failure) = probe(model) {
                    return Judged::BackendFailed(format!(
                        "a batch of {} frames failed ({failure}), and so did a known-good probe image ({probe_failure})",
                        images.len()
                    ));
                }
                warn!(error = %failure, frames = images.len(), "batch inference failed, the backend answers a probe image; retrying frame by frame");
                match one_by_one(model, &images) {
                    Ok(per_frame) => per_frame,
                    Err(reason) => return Judged::BackendFailed(reason),
                }
            }
        };
        let batch_size = images.len() as i32;
        let processed_at_us = now_us();
        for (Sent { index, frame, size: (width, height) }, detections) in sent.into_iter().zip(per_frame) {
            let record = &records[index];
            verdicts[index] = Some(match detections {
                Ok(detections) => {
                    let result = DetectionResult {
                        frame_id: frame.frame_id,
                        source: frame.source.clone(),
                        seq: frame.seq,
                        captured_at_us: frame.captured_at_us,
                        width: width as i32,
                        height: height as i32,
                        model_name: model.model_name().to_owned(),
                        model_version: model.model_version().to_owned(),
                        detections: detections.iter().map(to_object).collect(),
                        processed_at_us,
                        batch_size,
                        inference_ms,
                        source_partition: record.partition,
                        source_offset: record.offset,
                    };
                    match result.encode() {
                        Ok(value) => Verdict::Result { key: frame.source, value },
                        Err(e) => Verdict::DeadLetter { kind: kinds::ENCODE, message: e.to_string() },
                    }
                }
                Err(message) => Verdict::DeadLetter { kind: kinds::INFERENCE_FAILED, message },
            });
        }
    }
    let verdicts = verdicts.into_iter().map(|v| v.expect("every record has a verdict")).collect();
    Judged::Verdicts { verdicts, inferred, inference_ms }
}

/// [`judge`], with a panic turned into the record's dead letter. Left to unwind, it would
/// stop the model thread, and the restarted worker would read the same record and panic
/// again: one bad input would stop its partition for good.
fn judge_or_dead_letter_panic(record: &InputRecord, limits: &InputLimits) -> Result<(Frame, DecodedFrame), Verdict> {
    // AssertUnwindSafe: `judge` only reads the record and the limits; whatever it built
    // when it panicked is dropped.
    catch_unwind(AssertUnwindSafe(|| judge(record, limits))).unwrap_or_else(|panic| {
        let message = format!("panicked while decoding the frame: {}", panic_message(panic));
        warn!(partition = record.partition, offset = record.offset, %message, "dead-lettering the record");
        Err(Verdict::DeadLetter { kind: kinds::PANIC, message })
    })
}

/// One record's frame and decoded image, or the dead letter it earns.
fn judge(record: &InputRecord, limits: &InputLimits) -> Result<(Frame, DecodedFrame), Verdict> {
    let bytes = record.bytes();
    if bytes.len() > limits.max_record_bytes {
        return Err(Verdict::DeadLetter {
            kind: kinds::OVERSIZED,
            message: format!(
                "record is {} bytes, above detector.max_record_bytes = {}",
                bytes.len(),
                limits.max_record_bytes
            ),
        });
    }
    let frame = Frame::decode(bytes).map_err(|e| Verdict::DeadLetter { kind: e.kind(), message: e.to_string() })?;
    contract::check_frame(&frame).map_err(|e| Verdict::DeadLetter { kind: e.kind(), message: e.to_string() })?;
    #[cfg(test)]
    if frame.frame_id == PANICKING_FRAME {
        panic!("injected panic while judging frame {}", frame.frame_id);
    }
    if let Some(message) = truncated_jpeg(&frame.data) {
        return Err(Verdict::DeadLetter { kind: kinds::CORRUPT_IMAGE, message });
    }
    let image = decode_image(&frame.data, &limits.decode)
        .map_err(|e| Verdict::DeadLetter { kind: e.kind(), message: e.to_string() })?;
    Ok((frame, image))
}

/// Test-only: a frame with this id panics while it is judged, standing in for a bug in a
/// decoder (no input that panics one of them is known).
#[cfg(test)]
pub(crate) const PANICKING_FRAME: &str = "panic-while-judging";

/// One model call, its failures as text: an error, a wrong number of results, or a
/// panic in the forward pass (which must not end the model thread: the restarted worker
/// would read the same batch and panic again).
fn detect(model: &mut dyn Detector, images: &[DecodedFrame]) -> Result<Vec<Vec<Detection>>, String> {
    // AssertUnwindSafe: a model that panicked is probed before it is trusted again.
    match catch_unwind(AssertUnwindSafe(|| model.detect(images))) {
        Ok(Ok(detections)) if detections.len() == images.len() => Ok(detections),
        Ok(Ok(detections)) => Err(format!("model returned {} results for {} frames", detections.len(), images.len())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("the model panicked: {}", panic_message(panic))),
    }
}

/// A small image any working model answers (mid-grey, no objects).
fn probe_image() -> &'static DecodedFrame {
    static PROBE: OnceLock<DecodedFrame> = OnceLock::new();
    PROBE.get_or_init(|| resize_to_input(&image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128]))))
}

/// Whether the backend works at all: a known-good image through the model. A failed
/// batch whose probe passes has bad frames (split it); one whose probe fails too says
/// nothing about its frames (a lost device, a broken driver).
fn probe(model: &mut dyn Detector) -> Result<(), String> {
    detect(model, std::slice::from_ref(probe_image())).map(|_| ())
}

/// After a failed batch: each frame alone, so one bad frame cannot sink the others. A
/// frame that fails alone is probed after: if the probe fails too, the backend broke
/// meanwhile and the whole batch is a backend failure (`Err`), not the frame's.
fn one_by_one(
    model: &mut dyn Detector,
    images: &[DecodedFrame],
) -> Result<Vec<Result<Vec<Detection>, String>>, String> {
    let mut per_frame = Vec::with_capacity(images.len());
    for image in images {
        match detect(model, std::slice::from_ref(image)) {
            Ok(mut detections) => per_frame.push(Ok(detections.remove(0))),
            Err(failure) => {
                if let Err(probe_failure) = probe(model) {
                    return Err(format!(
                        "a frame failed alone ({failure}), and so did a known-good probe image ({probe_failure})"
                    ));
                }
                per_frame.push(Err(failure));
            }
        }
    }
    Ok(per_frame)
}

fn to_object(d: &Detection) -> DetectedObject {
    DetectedObject {
        label: d.label.clone(),
        class_id: d.class_id as i32,
        score: d.score,
        x_min: d.bbox[0],
        y_min: d.bbox[1],
        x_max: d.bbox[2],
        y_max: d.bbox[3],
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::detector::test_support::{frame_bytes, limits, png, record, BrokenModel, FakeModel, PanickingModel};

    fn kind(v: &Verdict) -> &str {
        match v {
            Verdict::Result { .. } => "result",
            Verdict::DeadLetter { kind, .. } => kind,
        }
    }

    #[test]
    fn every_record_gets_one_verdict_of_the_right_kind() {
        let mut model = FakeModel { calls: 0 };
        let mut truncated = Vec::new();
        image::RgbImage::from_pixel(64, 48, image::Rgb([10, 200, 30]))
            .write_to(&mut Cursor::new(&mut truncated), image::ImageFormat::Jpeg)
            .unwrap();
        truncated.truncate(truncated.len() / 3);
        let mut unknown = frame_bytes("u", vec![1]);
        unknown[2] ^= 0xFF; // fingerprint no longer matches a known schema
        let records = vec![
            record(0, Some(frame_bytes("a", png(40, 30, [0, 0, 255])))),
            record(1, Some(frame_bytes("b", vec![]))),
            record(2, Some(frame_bytes("c", truncated))),
            record(3, Some(frame_bytes("d", b"hello, not an image".to_vec()))),
            record(4, Some(b"plain text".to_vec())),
            record(5, None),
            record(6, Some(unknown)),
            record(7, Some(vec![0; 200_000])),
            record(8, Some(frame_bytes("e", png(20, 10, [0, 255, 0])))),
        ];
        let out = process(&mut model, records, &limits());
        let kinds: Vec<&str> = out.verdicts.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                "result",
                "empty",
                "corrupt_image",
                "unknown_format",
                "not_avro",
                "not_avro",
                "unknown_schema",
                "oversized",
                "result"
            ]
        );
        assert_eq!(out.inferred, 2);
        assert_eq!(model.calls, 1, "one model call per batch");
        // Results carry the input position and decode as DetectionResult.
        let Verdict::Result { value, key } = &out.verdicts[8] else { panic!() };
        let result = DetectionResult::decode(value).unwrap();
        assert_eq!((key.as_str(), result.frame_id.as_str()), ("cam-1", "e"));
        assert_eq!((result.source_partition, result.source_offset), (2, 8));
        assert_eq!((result.width, result.height, result.batch_size), (20, 10, 2));
        assert_eq!(result.detections[0].x_max, 20.0);
        assert_eq!(out.records.len(), 9);
    }

    #[test]
    fn truncated_jpegs_are_corrupt() {
        let mut jpeg = Vec::new();
        image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(truncated_jpeg(&jpeg), None);
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0, 0, 0]); // trailing padding after EOI is fine
        assert_eq!(truncated_jpeg(&padded), None);
        assert!(truncated_jpeg(&jpeg[..jpeg.len() - 40]).is_some());
        assert_eq!(truncated_jpeg(b"not a jpeg"), None);
        let mut model = FakeModel { calls: 0 };
        let out =
            process(&mut model, vec![record(0, Some(frame_bytes("t", jpeg[..jpeg.len() - 40].to_vec())))], &limits());
        assert_eq!(kind(&out.verdicts[0]), "corrupt_image");
    }

    /// Three frames, the middle one red (the frame the test models fail on).
    fn blue_red_green() -> Vec<InputRecord> {
        vec![
            record(0, Some(frame_bytes("a", png(8, 8, [0, 0, 255])))),
            record(1, Some(frame_bytes("red", png(8, 8, [255, 0, 0])))),
            record(2, Some(frame_bytes("c", png(8, 8, [0, 255, 0])))),
        ]
    }

    #[test]
    fn a_failing_frame_is_isolated() {
        let mut model = FakeModel { calls: 0 };
        let out = process(&mut model, blue_red_green(), &limits());
        let kinds: Vec<&str> = out.verdicts.iter().map(kind).collect();
        assert_eq!(kinds, ["result", "inference_failed", "result"]);
        assert_eq!(model.calls, 6, "the batch, a probe, each frame, a probe after the frame that failed");
    }

    /// A panic in the model's forward pass is a failed batch call, not the model
    /// thread's end: the batch is split and only the frame that panics alone fails.
    #[test]
    fn a_panic_in_the_forward_pass_fails_only_its_frame() {
        let mut model = PanickingModel { inner: FakeModel { calls: 0 } };
        let out = process(&mut model, blue_red_green(), &limits());
        let kinds: Vec<&str> = out.verdicts.iter().map(kind).collect();
        assert_eq!(kinds, ["result", "inference_failed", "result"]);
        let Verdict::DeadLetter { message, .. } = &out.verdicts[1] else { panic!() };
        assert!(message.contains("injected panic in the forward pass"), "{message}");
    }

    /// A backend that fails every call (a lost device) says nothing about the frames:
    /// none of them is dead-lettered.
    #[test]
    fn a_broken_backend_dead_letters_no_frame() {
        let mut model = BrokenModel::forever();
        let records = vec![
            record(0, Some(frame_bytes("a", png(8, 8, [0, 0, 255])))),
            record(1, Some(frame_bytes("b", png(8, 8, [0, 255, 0])))),
        ];
        let out = process(&mut model, records, &limits());
        let failed = out.verdicts.iter().filter(|v| kind(v) == kinds::INFERENCE_FAILED).count();
        assert_eq!(failed, 0, "{:?}", out.verdicts);
        let reason = out.backend_failure.expect("a backend failure");
        assert!(reason.contains("device lost") && reason.contains("probe"), "{reason}");
        assert_eq!((out.records.len(), out.verdicts.len()), (2, 0), "the records come back, without verdicts");
        // The same with a model that panics on every call.
        let mut model = PanickingModel { inner: FakeModel { calls: 0 } };
        let red = vec![record(0, Some(frame_bytes("red", png(8, 8, [255, 0, 0]))))];
        let out = process(&mut model, red, &limits());
        assert!(out.backend_failure.is_none(), "the probe passes: the frame fails alone");
        assert_eq!(kind(&out.verdicts[0]), kinds::INFERENCE_FAILED);
    }

    #[test]
    fn a_panic_while_judging_a_frame_is_that_frames_dead_letter() {
        let mut model = FakeModel { calls: 0 };
        let records = vec![
            record(0, Some(frame_bytes("a", png(8, 8, [0, 0, 255])))),
            record(1, Some(frame_bytes(PANICKING_FRAME, png(8, 8, [0, 0, 255])))),
            record(2, Some(frame_bytes("c", png(8, 8, [0, 255, 0])))),
        ];
        let out = process(&mut model, records, &limits());
        let kinds: Vec<&str> = out.verdicts.iter().map(kind).collect();
        assert_eq!(kinds, ["result", "panic", "result"]);
        let Verdict::DeadLetter { message, .. } = &out.verdicts[1] else { panic!() };
        assert!(message.contains("injected panic while judging"), "{message}");
        assert_eq!((out.inferred, model.calls), (2, 1));
    }

    /// Valid but unusual images (see `model::unusual_images`) are results, never dead
    /// letters.
    #[test]
    fn every_unusual_image_gets_a_result() {
        let corpus = crate::model::unusual_images::corpus();
        let names: Vec<&str> = corpus.iter().map(|(name, _)| name.as_str()).collect();
        let records = corpus
            .iter()
            .enumerate()
            .map(|(i, (name, bytes))| record(i as i64, Some(frame_bytes(name, bytes.clone()))));
        let out = process(&mut FakeModel { calls: 0 }, records.collect(), &limits());
        let refused: Vec<String> = names
            .iter()
            .zip(&out.verdicts)
            .filter_map(|(name, verdict)| match verdict {
                Verdict::Result { .. } => None,
                Verdict::DeadLetter { kind, message } => Some(format!("{name}: {kind}: {message}")),
            })
            .collect();
        assert!(refused.is_empty(), "{refused:#?}");
        assert_eq!(out.inferred, corpus.len());
    }

    /// A frame that decodes but breaks the input contract (`codec::contract`) is an
    /// `invalid_field` dead letter: stored, its U+0000 would make the database refuse it.
    #[test]
    fn a_frame_breaking_the_input_contract_is_an_invalid_field() {
        let mut model = FakeModel { calls: 0 };
        let with_source = |source: &str| {
            let mut frame = Frame::decode(&frame_bytes("f", png(8, 8, [0, 0, 255]))).unwrap();
            frame.source = source.into();
            frame.encode().unwrap()
        };
        let records = vec![
            record(0, Some(with_source("cam\u{0}7"))),
            record(1, Some(with_source(&"c".repeat(256)))),
            record(2, Some(with_source("cam-7"))),
        ];
        let out = process(&mut model, records, &limits());
        let kinds: Vec<&str> = out.verdicts.iter().map(kind).collect();
        assert_eq!(kinds, ["invalid_field", "invalid_field", "result"]);
        let Verdict::DeadLetter { message, .. } = &out.verdicts[0] else { panic!() };
        assert!(message.contains("source") && message.contains("control character"), "{message}");
        assert_eq!(out.inferred, 1);
    }

    #[test]
    fn decompression_bomb_is_dead_lettered() {
        let mut model = FakeModel { calls: 0 };
        let bomb = crate::testing::png_bomb(60_000, 60_000);
        let out = process(&mut model, vec![record(0, Some(frame_bytes("bomb", bomb)))], &limits());
        assert_eq!(kind(&out.verdicts[0]), "too_large", "{:?}", out.verdicts[0]);
        assert_eq!(model.calls, 0);
    }
}
