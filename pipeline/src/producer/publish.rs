//! Publishing frames: idempotent producer, bounded in-flight deliveries, optional rate.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backpressure::{admits, record_bytes, Backpressure, BUDGET};
use super::{FrameInput, ProducerError};
use crate::codec::{contract, now_us, Frame, ImageEncoding};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::kafka::{ensure_topics, idempotent_producer_config, try_enqueue, Enqueued};
use crate::settings::Settings;
use crate::telemetry::inject_context;
use crate::telemetry::spans::{self, attributes as attr};

/// Knobs of one `produce_frames` call that are not configuration.
#[derive(Debug, Clone, Default)]
pub(super) struct ProduceOptions {
    /// Draw an indicatif progress bar on stderr (only when stderr is a terminal).
    pub show_progress: bool,
    /// Expected number of frames, for the progress bar (`None`: unknown / looping).
    pub total: Option<u64>,
}

/// What a `produce_frames` call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProduceSummary {
    /// Frames acknowledged by the broker (acks=all).
    pub delivered: u64,
    /// Frames whose delivery failed after the producer's retries.
    pub failed: u64,
    /// Payload bytes of delivered frames (image bytes, before Avro framing).
    pub bytes: u64,
    /// Delivered frames whose format was not recognised from magic bytes (sent anyway).
    pub unidentified: u64,
    /// Inputs that could not be read (never became frames).
    pub unreadable: u64,
    /// Wall time of the call.
    pub elapsed: Duration,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
    /// The first few frames not delivered (file path, or `source #seq`), to name them.
    pub not_delivered: Vec<String>,
    /// Inputs never handed to the producer: left after a send error stopped the run, or
    /// after shutdown (0 when the number of inputs is not known, with `--loop`).
    pub unsent: u64,
    /// The send error that stopped the run early, if one did.
    pub stopped: Option<String>,
}

/// How many undelivered frames a summary names.
const NAMED: usize = 10;

impl ProduceSummary {
    /// `Err` when a frame was not delivered or a send error stopped the run, naming the
    /// first frames and the first error.
    pub fn check(&self) -> Result<(), ProducerError> {
        if self.failed == 0 && self.stopped.is_none() {
            return Ok(());
        }
        Err(ProducerError::Delivery {
            failed: self.failed,
            total: self.failed + self.delivered,
            not_delivered: self.not_delivered.clone(),
            first_error: self.first_error.clone().or_else(|| self.stopped.clone()).unwrap_or_default(),
            unsent: self.unsent,
        })
    }

    /// Counts a frame that was not delivered, naming it among the first few.
    fn fail(&mut self, name: &str, error: String) {
        self.failed += 1;
        if self.not_delivered.len() < NAMED {
            self.not_delivered.push(name.to_string());
        }
        self.first_error.get_or_insert(error);
    }

    /// One human line, e.g. `delivered 20 frames (1.2 MiB) to images in 0.8 s, 0 failed`.
    pub fn line(&self, topic: &str) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 { self.delivered as f64 / secs } else { 0.0 };
        format!(
            "delivered {} frames ({:.1} MiB) to {topic} in {secs:.1} s ({rate:.1} frames/s), {} failed, {} unidentified, {} unreadable{}",
            self.delivered,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.failed,
            self.unidentified,
            self.unreadable,
            if self.unsent > 0 { format!(", {} not sent", self.unsent) } else { String::new() },
        )
    }
}

struct InFlight {
    delivery: DeliveryFuture,
    /// Partition and counted bytes, while the embedded broker's guard counts them.
    held: Option<(i32, u64)>,
    frame_id: String,
    /// The input it came from, to name it if it is not delivered.
    name: String,
    bytes: u64,
    unidentified: bool,
    trace: Context,
}

/// Publishes every input to `kafka.topics.images` (created first if missing) with the
/// idempotent producer: key = source, the input's `frame_id`, a per-source `seq` (from 0
/// in each call) and the call's `session` id, a W3C `traceparent` header. Inputs are pulled on a dedicated
/// thread (file reads, image generation) through a bounded channel; at most
/// `producer.max_in_flight` records await acknowledgement. Stops early, after flushing,
/// when `shutdown` fires, and when the producer refuses a record for a reason other than
/// a full queue or its size (a fatal producer error, an unknown topic): every record
/// already handed over is then settled, so each frame is delivered or counted as failed
/// and named. Delivery failures are counted in the summary, not returned as errors;
/// errors are setup failures (client, topics), inputs that break the contract, and
/// encoding bugs.
pub(super) async fn produce_frames<I>(
    settings: &Settings,
    inputs: I,
    options: ProduceOptions,
    shutdown: CancellationToken,
) -> Result<ProduceSummary, ProducerError>
where
    I: IntoIterator<Item = Result<FrameInput, ProducerError>>,
    I::IntoIter: Send + 'static,
{
    let started = Instant::now();
    let topic = settings.kafka.topics.images.name.clone();
    let pcfg = &settings.producer;
    let mut client = idempotent_producer_config(&settings.kafka);
    client.set("linger.ms", pcfg.linger_ms.to_string()).set("message.timeout.ms", pcfg.delivery_timeout_ms.to_string());
    if !settings.kafka.client.contains_key("partitioner") {
        // Same key → partition mapping as the Java clients.
        client.set("partitioner", "murmur2_random");
    }
    let producer: FutureProducer = client.create().map_err(ProducerError::Client)?;
    ensure_topics(&settings.kafka, &[&settings.kafka.topics.images]).await?;
    let mut guard = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || Backpressure::for_embedded_broker(&settings))
            .await
            .map_err(ProducerError::BackpressureTask)??
    };
    if let Some(g) = &guard {
        info!(
            group = g.group_id(),
            budget_mib = BUDGET / (1024 * 1024),
            "the in-memory broker keeps 5 MiB per partition: frames wait while a partition holds more than the \
             budget that the detector group has not committed past"
        );
    }
    // Bytes this producer has in flight per partition (counted by the guard).
    let mut pending: HashMap<i32, u64> = HashMap::new();

    let (tx, mut rx) = mpsc::channel::<Result<FrameInput, ProducerError>>(16);
    let iter = inputs.into_iter();
    let reader_stop = shutdown.clone();
    let reader = std::thread::Builder::new()
        .name("vigil-produce-inputs".into())
        .spawn(move || {
            for item in iter {
                if reader_stop.is_cancelled() || tx.blocking_send(item).is_err() {
                    break;
                }
            }
        })
        .map_err(ProducerError::SpawnReader)?;

    let progress = progress_bar(&options);
    let mut ticker = pcfg.frame_interval().map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    // `seq` counts per source from 0 in this session: together they let an audit find
    // frames that never reached a reader (`vigil verify`).
    let session = uuid::Uuid::new_v4().to_string();
    let mut seqs: HashMap<String, i64> = HashMap::new();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut summary = ProduceSummary::default();
    let max_in_flight = pcfg.max_in_flight;

    loop {
        let input = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            item = rx.recv() => match item {
                None => break,
                Some(Err(e)) => {
                    warn!("skipping input: {e}");
                    summary.unreadable += 1;
                    continue;
                }
                Some(Ok(input)) => input,
            },
        };
        if let Some(ticker) = ticker.as_mut() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
        }
        let encoding = ImageEncoding::sniff(&input.data);
        let name = input
            .attributes
            .get("file")
            .cloned()
            .unwrap_or_else(|| format!("{} #{}", input.source, seqs.get(&input.source).copied().unwrap_or(0)));
        if encoding == ImageEncoding::Unknown {
            warn!(input = %name, bytes = input.data.len(), "not recognised as an image (sending it anyway; the detector will judge)");
        }
        // `run` checked the source before sending anything; this refuses a library caller's
        // bad input frame by frame, like a frame that is too large, so the others still go
        // (before it takes a `seq`, which would leave a gap for `vigil verify` to report).
        if let Err(e) = contract::check_source(&input.source).and_then(|()| contract::check_frame_id(&input.frame_id)) {
            let error = format!("{name}: {e}; not sent");
            warn!("{error}");
            summary.fail(&name, error);
            continue;
        }
        let seq = seqs.entry(input.source.clone()).or_insert(0);
        let frame = Frame {
            frame_id: input.frame_id,
            source: input.source,
            seq: *seq,
            captured_at_us: now_us(),
            encoding,
            width: input.width,
            height: input.height,
            data: input.data,
            attributes: input.attributes,
            session: Some(session.clone()),
        };
        *seq += 1;
        let payload = frame.encode().map_err(ProducerError::Encode)?;
        if payload.len() > settings.detector.max_record_bytes {
            warn!(
                input = %name,
                bytes = payload.len(),
                max = settings.detector.max_record_bytes,
                "above detector.max_record_bytes: sending it anyway; the detector will dead-letter it as oversized"
            );
        }
        // A new trace per frame: it follows the frame through every stage.
        let trace = spans::send(&Context::new(), &topic, Some(frame.source.as_bytes()), Some(&frame.frame_id));
        let headers = inject_context(&trace, OwnedHeaders::new());
        let mut record = FutureRecord::to(&topic).key(&frame.source).payload(&payload).headers(headers);
        let mut held = None;
        if let Some(g) = guard.as_ref() {
            let partition = g.partition_of(frame.source.as_bytes());
            let bytes = record_bytes(frame.source.len(), payload.len(), 0);
            let room = Room { partition, bytes, shutdown: &shutdown };
            if !wait_for_room(&mut guard, room, &mut in_flight, &mut summary, &progress, &mut pending).await? {
                trace.span().end();
                break;
            }
            record = record.partition(partition);
            *pending.entry(partition).or_default() += bytes;
            held = Some((partition, bytes));
        }
        let delivery = loop {
            match try_enqueue(&producer, record) {
                Ok(Enqueued::Sent(delivery)) => break Ok(delivery),
                Ok(Enqueued::Full(back)) => {
                    // librdkafka's queue is full: settle the oldest delivery (or wait), then retry.
                    record = back;
                    match in_flight.pop_front() {
                        Some(done) => settle(done, &mut summary, &progress, &mut pending).await,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                // Too large for the topic: this frame is refused, the others still go.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                    let error = format!(
                        "{name}: the frame is {} bytes, above kafka.max_message_bytes = {}; not sent (raise \
                         kafka.max_message_bytes and the topics' max.message.bytes, or send a smaller image)",
                        payload.len(),
                        settings.kafka.max_message_bytes
                    );
                    warn!("{error}");
                    if let Some((p, bytes)) = held {
                        release(&mut pending, p, bytes);
                    }
                    summary.fail(&name, error);
                    break Err(false);
                }
                // Any other refusal concerns the producer, not this frame (a fatal error, a
                // topic gone): stop taking inputs, settle what was handed over, report.
                Err(e) => {
                    let error = format!("the Kafka producer refused a frame: {e}");
                    warn!(input = %name, "{error}; stopping: the frames already queued are settled, the rest not sent");
                    if let Some((p, bytes)) = held {
                        release(&mut pending, p, bytes);
                    }
                    summary.fail(&name, error.clone());
                    summary.stopped = Some(error);
                    break Err(true);
                }
            }
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(stop) => {
                trace.span().end();
                if stop {
                    break;
                }
                continue;
            }
        };
        in_flight.push_back(InFlight {
            delivery,
            held,
            frame_id: frame.frame_id,
            name,
            bytes: frame.data.len() as u64,
            unidentified: encoding == ImageEncoding::Unknown,
            trace,
        });
        settle_ready(&mut in_flight, &mut summary, &progress, &mut pending);
        while in_flight.len() >= max_in_flight {
            let done = in_flight.pop_front().expect("non-empty");
            settle(done, &mut summary, &progress, &mut pending).await;
        }
    }
    drop(rx);
    while let Some(done) = in_flight.pop_front() {
        settle(done, &mut summary, &progress, &mut pending).await;
    }
    // Every delivery is settled above; a flush error only concerns librdkafka's own requests.
    if let Err(e) = producer.flush(Duration::from_secs(10)) {
        debug!(error = %e, "producer flush on exit");
    }
    if reader.join().is_err() {
        warn!("the input reader thread panicked; the frames it had not read yet were not sent");
    }
    progress.finish_and_clear();
    if let Some(total) = options.total {
        summary.unsent = total.saturating_sub(summary.delivered + summary.failed + summary.unreadable);
    }
    if summary.failed > 0 {
        warn!(
            failed = summary.failed,
            first = %summary.not_delivered.join(", "),
            "frames not delivered; running the same command again resends them (a file's frame keeps its id)"
        );
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Where a frame goes and how much it counts, for [`wait_for_room`].
struct Room<'a> {
    partition: i32,
    bytes: u64,
    shutdown: &'a CancellationToken,
}

/// Waits until the embedded broker's partition has room for the frame (see
/// `backpressure`), settling this producer's deliveries meanwhile (a delivered frame is
/// then counted once, from the topic). `false` when `shutdown` fired first.
async fn wait_for_room(
    guard: &mut Option<Backpressure>,
    room: Room<'_>,
    in_flight: &mut VecDeque<InFlight>,
    summary: &mut ProduceSummary,
    progress: &ProgressBar,
    pending: &mut HashMap<i32, u64>,
) -> Result<bool, ProducerError> {
    let started = Instant::now();
    let mut warned = false;
    // Cheap path: no broker round trip while the bound from the last measurement has room.
    if guard.as_mut().is_some_and(|g| g.admit_within_bound(room.partition, room.bytes)) {
        return Ok(true);
    }
    loop {
        settle_ready(in_flight, summary, progress, pending);
        let Some(mut g) = guard.take() else { return Ok(true) };
        let (mut g, unconsumed) = tokio::task::spawn_blocking(move || {
            let unconsumed = g.unconsumed(room.partition);
            (g, unconsumed)
        })
        .await
        .map_err(ProducerError::BackpressureTask)?;
        let group = g.group_id().to_string();
        let in_flight_bytes = pending.get(&room.partition).copied().unwrap_or(0);
        let admitted = unconsumed.filter(|u| admits(*u, in_flight_bytes, room.bytes));
        g.set_bound(room.partition, admitted.map(|u| u + in_flight_bytes + room.bytes));
        *guard = Some(g);
        if admitted.is_some() {
            return Ok(true);
        }
        if let Some(done) = in_flight.pop_front() {
            settle(done, summary, progress, pending).await;
            continue;
        }
        if !warned && started.elapsed() > Duration::from_secs(5) {
            warned = true;
            warn!(
                partition = room.partition,
                unconsumed_mib = unconsumed.map(|u| u as f64 / (1024.0 * 1024.0)),
                %group,
                "holding frames back: this partition of the in-memory broker would delete frames that detector \
                 group {group} has not committed past (it keeps 5 MiB per partition). Start detectors; on this \
                 broker they must run --delivery at-least-once (it does not store transactional offsets)"
            );
        }
        tokio::select! {
            biased;
            _ = room.shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

fn release(pending: &mut HashMap<i32, u64>, partition: i32, bytes: u64) {
    if let Some(held) = pending.get_mut(&partition) {
        *held = held.saturating_sub(bytes);
    }
}

async fn settle(
    mut done: InFlight,
    summary: &mut ProduceSummary,
    progress: &ProgressBar,
    pending: &mut HashMap<i32, u64>,
) {
    let outcome = (&mut done.delivery).await;
    record(done, outcome, summary, progress, pending);
}

/// Settles the oldest deliveries that have already completed, without waiting. The
/// embedded broker's guard counts a frame in `pending` until it is settled, and also in the
/// topic once delivered: left unsettled, delivered frames counted twice and held the next
/// frames back (0.6–2.9 s at 50 % load in `vigil bench pipeline`).
fn settle_ready(
    in_flight: &mut VecDeque<InFlight>,
    summary: &mut ProduceSummary,
    progress: &ProgressBar,
    pending: &mut HashMap<i32, u64>,
) {
    while let Some(front) = in_flight.front_mut() {
        let Some(outcome) = (&mut front.delivery).now_or_never() else { break };
        let done = in_flight.pop_front().expect("the front exists");
        record(done, outcome, summary, progress, pending);
    }
}

/// Counts a delivery's `outcome` and ends its span.
fn record(
    done: InFlight,
    outcome: <DeliveryFuture as std::future::Future>::Output,
    summary: &mut ProduceSummary,
    progress: &ProgressBar,
    pending: &mut HashMap<i32, u64>,
) {
    if let Some((partition, bytes)) = done.held {
        release(pending, partition, bytes);
    }
    let span = done.trace.span();
    match outcome {
        Ok(Ok(delivery)) => {
            span.set_attribute(KeyValue::new(attr::MESSAGING_DESTINATION_PARTITION_ID, delivery.partition.to_string()));
            span.set_attribute(KeyValue::new(attr::MESSAGING_KAFKA_OFFSET, delivery.offset));
            debug!(frame_id = %done.frame_id, partition = delivery.partition, offset = delivery.offset, "delivered");
            summary.delivered += 1;
            summary.bytes += done.bytes;
            summary.unidentified += u64::from(done.unidentified);
            progress.inc(1);
        }
        Ok(Err((e, _))) => {
            warn!(frame_id = %done.frame_id, input = %done.name, error = %e, "delivery failed");
            span.set_status(opentelemetry::trace::Status::error(e.to_string()));
            summary.fail(&done.name, e.to_string());
        }
        Err(_) => summary.fail(&done.name, "producer dropped before delivery".into()),
    }
    span.end();
}

fn progress_bar(options: &ProduceOptions) -> ProgressBar {
    if !options.show_progress {
        return ProgressBar::hidden();
    }
    let bar = match options.total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} frames  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {pos} frames  {per_sec}  {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
