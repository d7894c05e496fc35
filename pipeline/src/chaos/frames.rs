//! The scenario's input: unique frames from [`SOURCES`] cameras (enough that every
//! partition of `images` gets some: keys spread by murmur2), each camera with its own
//! producer `session` and gap-free `seq` so that `vigil verify` can find lost frames,
//! small synthetic JPEGs (the model resizes them anyway), sent at a fixed rate by the
//! idempotent producer on a thread of its own. Poison frames of every bad-input kind can
//! be mixed in. Delivery reports say how far each partition was sent (for `progress`).

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio_util::sync::CancellationToken;

use super::ChaosError;
use crate::codec::{Frame, ImageEncoding};
use crate::kafka::{idempotent_producer_config, KafkaConfig};

/// Cameras per scenario: with 6 partitions, 12 keys reach every one of them.
pub(crate) const SOURCES: usize = 12;

/// Side of the generated square JPEGs, pixels.
const SIDE: u32 = 64;

/// Every kind of bad input the poison scenario sends, in turn (the dead-letter kinds of
/// `crate::codec::kinds` that input alone causes).
pub(crate) const POISON_KINDS: [&str; 9] = [
    "not_avro",
    "unknown_schema",
    "bad_record",
    "oversized",
    "invalid_field",
    "empty",
    "unknown_format",
    "corrupt_image",
    "too_large",
];

/// `detector.max_record_bytes` of the poison scenario's detectors: every good frame (a
/// 64×64 JPEG, ~2 KB) is far below it, the `oversized` poison frame above it.
pub(crate) const POISON_MAX_RECORD_BYTES: usize = 100_000;

/// Every how many frames one is poison: every kind at least once (`--quick`, 120 frames:
/// 1 in 13), and 1% of the frames at full size.
pub(crate) fn poison_every(frames: u64) -> u64 {
    (frames / POISON_KINDS.len() as u64).clamp(1, 100)
}

/// What to send.
#[derive(Debug, Clone)]
pub(crate) struct StreamPlan {
    /// At least this many frames (poison included)…
    pub min_frames: u64,
    /// …and on until `more` is cancelled (the fault driver is done).
    pub more: CancellationToken,
    /// Frames per second; 0: as fast as the producer takes them.
    pub rate: f64,
    /// Every n-th frame is poison (0: none).
    pub poison_every: u64,
    /// Tag in each frame's attributes.
    pub scenario: String,
}

/// What was sent, when the stream ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamSummary {
    pub frames: u64,
    pub poison: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// From the first send to the last delivery report.
    pub elapsed: Duration,
}

/// The running stream.
pub(crate) struct FrameStream {
    /// Next offset per partition of `images` (delivery reports).
    pub sent: Arc<Mutex<Vec<i64>>>,
    /// Frames handed to the producer so far.
    pub count: Arc<AtomicU64>,
    thread: JoinHandle<Result<StreamSummary, ChaosError>>,
}

struct Reports {
    sent: Arc<Mutex<Vec<i64>>>,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                if let (Ok(p), Ok(mut sent)) = (usize::try_from(m.partition()), self.sent.lock()) {
                    if p < sent.len() {
                        sent[p] = sent[p].max(m.offset() + 1);
                    }
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

impl FrameStream {
    /// Starts sending to `kafka.topics.images` (`partitions` partitions).
    pub(crate) fn start(
        kafka: &KafkaConfig,
        partitions: usize,
        plan: StreamPlan,
        stop: CancellationToken,
    ) -> Result<FrameStream, ChaosError> {
        let sent = Arc::new(Mutex::new(vec![0i64; partitions]));
        let reports = Reports { sent: sent.clone(), failed: AtomicU64::new(0), first_error: Mutex::new(None) };
        let producer: ThreadedProducer<Reports> = idempotent_producer_config(kafka)
            .set("linger.ms", "5")
            .create_with_context(reports)
            .map_err(ChaosError::Producer)?;
        let topic = kafka.topics.images.name.clone();
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let thread = std::thread::Builder::new()
            .name("chaos-frames".into())
            .spawn(move || send_all(&producer, &topic, &plan, &counter, &stop))
            .map_err(|e| ChaosError::io("a thread for the frame stream", e))?;
        Ok(FrameStream { sent, count, thread })
    }

    /// Waits for the stream to end (all frames delivered or failed).
    pub(crate) fn finish(self) -> Result<StreamSummary, ChaosError> {
        self.thread.join().map_err(|_| ChaosError::Bug("the frame stream thread panicked".into()))?
    }
}

fn send_all(
    producer: &ThreadedProducer<Reports>,
    topic: &str,
    plan: &StreamPlan,
    count: &AtomicU64,
    stop: &CancellationToken,
) -> Result<StreamSummary, ChaosError> {
    let sessions: Vec<String> = (0..SOURCES).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut seqs = [0i64; SOURCES];
    let mut summary = StreamSummary::default();
    let started = Instant::now();
    let mut i: u64 = 0;
    while (i < plan.min_frames || !plan.more.is_cancelled()) && !stop.is_cancelled() {
        if plan.rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / plan.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                continue;
            }
        }
        let cam = (i as usize) % SOURCES;
        let source = format!("chaos-cam-{cam:02}");
        let poison = plan.poison_every > 0 && i % plan.poison_every == plan.poison_every / 2;
        let kind = POISON_KINDS[(summary.poison as usize) % POISON_KINDS.len()];
        let payload = if poison {
            poison_payload(kind, &source, &sessions[cam], &mut seqs[cam], &plan.scenario)?
        } else {
            let data = synthetic_jpeg(i);
            frame(&source, &sessions[cam], &mut seqs[cam], data, &plan.scenario).encode().map_err(ChaosError::Encode)?
        };
        let mut record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(topic).key(source.as_str()).payload(payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(ChaosError::Send(e)),
            }
        }
        summary.poison += u64::from(poison);
        i += 1;
        count.store(i, Ordering::Relaxed);
    }
    producer.flush(Duration::from_secs(120)).map_err(ChaosError::Send)?;
    summary.frames = i;
    summary.elapsed = started.elapsed();
    summary.failed = producer.context().failed.load(Ordering::Relaxed);
    summary.first_error = producer.context().first_error.lock().ok().and_then(|e| e.clone());
    Ok(summary)
}

/// A frame of `source` holding `data`, with the next sequence number of its session.
fn frame(source: &str, session: &str, seq: &mut i64, data: Vec<u8>, scenario: &str) -> Frame {
    let f = Frame {
        frame_id: uuid::Uuid::new_v4().to_string(),
        source: source.to_string(),
        seq: *seq,
        captured_at_us: crate::codec::now_us(),
        encoding: ImageEncoding::sniff(&data),
        width: Some(SIDE as i32),
        height: Some(SIDE as i32),
        data,
        attributes: HashMap::from([("chaos".to_string(), scenario.to_string())]),
        session: Some(session.to_string()),
    };
    *seq += 1;
    f
}

/// The record value of one bad input of `kind`. Kinds that still decode as a `Frame` of
/// their camera take its next sequence number (they are frames, too large or with bad
/// images); the others take none: not frames at all, or (`invalid_field`) a frame whose
/// `source` breaks the input contract, in a session of its own.
fn poison_payload(
    kind: &str,
    source: &str,
    session: &str,
    seq: &mut i64,
    scenario: &str,
) -> Result<Vec<u8>, ChaosError> {
    let good = |seq: &mut i64, data: Vec<u8>| frame(source, session, seq, data, scenario).encode();
    let bytes = match kind {
        "not_avro" => b"{\"frame\": \"json, not avro\"}".to_vec(),
        "unknown_schema" => {
            let mut v = vec![0xC3, 0x01];
            v.extend_from_slice(&[0xAB; 8]);
            v.extend_from_slice(b"body of a schema nobody knows");
            v
        }
        "bad_record" => {
            // A real frame cut in half: header and fingerprint fine, body truncated.
            let mut unused = 0;
            let whole = good(&mut unused, synthetic_jpeg(7)).map_err(ChaosError::Encode)?;
            whole[..whole.len() / 2].to_vec()
        }
        "oversized" => {
            // A good image padded past the limit: refused by size before it is decoded.
            let mut data = synthetic_jpeg(13);
            data.resize(POISON_MAX_RECORD_BYTES + 10_000, 0);
            good(seq, data).map_err(ChaosError::Encode)?
        }
        "invalid_field" => {
            // A control character in `source`: the database would refuse its row.
            let bad_source = format!("{source}\u{7}");
            let session = uuid::Uuid::new_v4().to_string();
            frame(&bad_source, &session, &mut 0, synthetic_jpeg(17), scenario).encode().map_err(ChaosError::Encode)?
        }
        "empty" => good(seq, Vec::new()).map_err(ChaosError::Encode)?,
        "unknown_format" => good(seq, b"this is a text file, not an image".to_vec()).map_err(ChaosError::Encode)?,
        "corrupt_image" => {
            let jpeg = synthetic_jpeg(11);
            good(seq, jpeg[..jpeg.len() / 3].to_vec()).map_err(ChaosError::Encode)?
        }
        "too_large" => good(seq, crate::testing::png_bomb(60_000, 60_000)).map_err(ChaosError::Encode)?,
        other => return Err(ChaosError::Bug(format!("unknown poison kind {other}"))),
    };
    Ok(bytes)
}

/// Generated test image `index`: a 64×64 JPEG, different for every index.
pub(crate) fn synthetic_jpeg(index: u64) -> Vec<u8> {
    let tint = ((index * 37) % 256) as u8;
    let img = RgbImage::from_fn(SIDE, SIDE, |x, y| {
        Rgb([(x * 255 / SIDE) as u8, (y * 255 / SIDE) as u8, tint ^ ((x ^ y) as u8 & 0x1F)])
    });
    let mut out = Cursor::new(Vec::new());
    JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .expect("encoding an in-memory RGB image as JPEG cannot fail");
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecError;

    /// The poison kinds a `--quick` stream (120 frames) sends, by the stream's own rule.
    fn codec_kinds_sent() -> std::collections::BTreeSet<&'static str> {
        let every = poison_every(120);
        let poison = (0..120u64).filter(|i| i % every == every / 2).count();
        (0..poison).map(|n| POISON_KINDS[n % POISON_KINDS.len()]).collect()
    }

    #[test]
    fn poison_is_one_percent_at_full_size_and_every_kind_in_quick() {
        assert_eq!(poison_every(2_400), 100, "1% of the full-size frames");
        assert_eq!(poison_every(120), 13);
        assert!(120 / poison_every(120) >= POISON_KINDS.len() as u64);
    }

    #[test]
    fn poison_payloads_are_what_their_kind_says() {
        for kind in POISON_KINDS {
            let mut seq = 0;
            let bytes = poison_payload(kind, "cam", "session", &mut seq, "t").unwrap();
            let decoded = Frame::decode(&bytes);
            match kind {
                "not_avro" | "unknown_schema" | "bad_record" => {
                    let err = decoded.expect_err(kind);
                    assert_eq!(CodecError::kind(&err), kind);
                    assert_eq!(seq, 0, "{kind} takes no sequence number");
                }
                "invalid_field" => {
                    let frame = decoded.unwrap_or_else(|e| panic!("{kind}: {e}"));
                    assert!(crate::codec::contract::check_frame(&frame).is_err(), "{kind} breaks the contract");
                    assert_eq!(seq, 0, "{kind} takes no sequence number of its camera");
                }
                _ => {
                    let frame = decoded.unwrap_or_else(|e| panic!("{kind}: {e}"));
                    assert_eq!((frame.seq, seq), (0, 1), "{kind} takes the next sequence number");
                    assert!(crate::codec::contract::check_frame(&frame).is_ok(), "{kind}");
                    let oversized = bytes.len() > POISON_MAX_RECORD_BYTES;
                    assert_eq!(oversized, kind == "oversized", "{kind}: {} bytes", bytes.len());
                }
            }
        }
        assert_eq!(ImageEncoding::sniff(&synthetic_jpeg(3)), ImageEncoding::Jpeg);
        let kinds = codec_kinds_sent();
        assert_eq!(kinds.len(), POISON_KINDS.len(), "each kind once: {kinds:?}");
        assert_ne!(synthetic_jpeg(1), synthetic_jpeg(2));
    }
}
