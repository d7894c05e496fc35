//! The model thread: Avro decode, image decode and batched inference off the async
//! runtime. One job (one batch) at a time through a bounded channel, so the loop can read
//! the next batch while the model works on this one. A panic on the thread never ends
//! it: judging catches panics (see `judge::process`), and a batch that panicked outside
//! one record's decoding comes back as a failed batch.

use std::time::Instant;

use tokio::sync::oneshot;
use tracing::info;

use opentelemetry::Context;
use rdkafka::message::{Headers, Message};

use super::judge::{process, process_while_backend_down, InputLimits, Verdict};
use super::DetectorError;
use crate::model::{Detector, ModelError, NanoDet};
use crate::settings::Settings;
use crate::telemetry::{extract_context, spans};
use crate::thread_actor::{StartError, ThreadActor};

/// A consumed `images` record, owned.
#[derive(Debug, Clone)]
pub(crate) struct InputRecord {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    /// `None` for a record without a value (a tombstone): dead-lettered as `not_avro`.
    pub(crate) payload: Option<Vec<u8>>,
    /// The record's headers, kept for the dead letter.
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
    /// The partition's assignment epoch when the record was read (see `DetectorContext`).
    pub(crate) epoch: u64,
    /// The record's Kafka timestamp, milliseconds since the epoch (`detector.max_frame_age_ms`).
    pub(crate) timestamp_ms: Option<i64>,
    /// The frame's `process` span (a child of the producer's `send`), from its reading
    /// until its result or dead letter is handed to the producer.
    pub(crate) trace: Context,
}

impl InputRecord {
    /// Copies a consumed message, tagged with its partition's current ownership epoch, and
    /// starts its `process` span.
    pub(crate) fn from_message(message: &impl Message, epoch: u64, group_id: &str) -> Self {
        let parent = extract_context(message.headers());
        let trace = spans::process(
            &parent,
            spans::Consumed {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                group_id,
                key: message.key(),
            },
        );
        InputRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
                .unwrap_or_default(),
            epoch,
            timestamp_ms: message.timestamp().to_millis(),
            trace,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }
}

/// A processed batch: the records back (for the dead letters' original bytes) and one
/// verdict per record, in order.
pub(crate) struct Processed {
    pub(crate) records: Vec<InputRecord>,
    pub(crate) verdicts: Vec<Verdict>,
    /// Frames that reached the model.
    pub(crate) inferred: usize,
    /// Wall time of the model call(s), milliseconds.
    pub(crate) inference_ms: f64,
    /// Set when the model backend failed (a known-good probe image failed too) or the
    /// model thread panicked outside judging one record: `verdicts` is then empty and
    /// nothing of the batch may be committed.
    pub(crate) backend_failure: Option<String>,
}

/// Handle to the model thread, a dependency of [`super::run`]. Dropping it stops the
/// thread after its current job.
pub struct ModelThread {
    actor: ThreadActor<Box<dyn Detector>>,
    limits: InputLimits,
    model_name: String,
}

impl ModelThread {
    /// Starts the thread with NanoDet-g on the configured backend (fetching the weights
    /// first when `model.fetch` allows it) and waits until the model is loaded.
    pub async fn nanodet(settings: &Settings) -> Result<ModelThread, DetectorError> {
        let model = settings.model.clone();
        let (backend, max_batch) = (settings.detector.backend, settings.detector.max_batch);
        info!(backend = %backend, dir = %model.dir.display(), "loading NanoDet-g");
        let load = move || {
            let nanodet = NanoDet::load(&model, backend)?;
            let started = Instant::now();
            let sizes = nanodet.pretune(max_batch)?;
            if !sizes.is_empty() {
                info!(batches = ?sizes, ms = started.elapsed().as_millis() as u64, "pre-tuned the batch sizes this worker runs");
            }
            Ok(Box::new(nanodet) as Box<dyn Detector>)
        };
        Self::start(load, InputLimits::of(&settings.detector)).await
    }

    /// Starts the thread, builds the model there with `load` (weights stay on the thread
    /// that uses them) and waits until it is ready.
    pub(crate) async fn start<F>(load: F, limits: InputLimits) -> Result<ModelThread, DetectorError>
    where
        F: FnOnce() -> Result<Box<dyn Detector>, ModelError> + Send + 'static,
    {
        let init = move || {
            let started = Instant::now();
            let model = load()?;
            let name = model.model_name().to_owned();
            info!(model = %name, version = model.model_version(), load_ms = started.elapsed().as_millis() as u64, "model loaded");
            Ok((model, name))
        };
        // One batch in the model at a time, one waiting.
        match ThreadActor::start("model", 1, init).await {
            Ok((actor, model_name)) => Ok(ModelThread { actor, limits, model_name }),
            Err(StartError::Spawn(e)) => Err(DetectorError::SpawnModelThread(e)),
            Err(StartError::Init(e)) => Err(DetectorError::Model(e)),
            Err(StartError::Panicked(message)) => Err(DetectorError::ModelThread(Some(message))),
        }
    }

    /// The loaded model's name, for logs.
    pub(crate) fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Hands a batch to the model thread; the receiver yields it processed.
    /// `backend_down`: the backend has been failing (see [`process_while_backend_down`]).
    pub(crate) fn submit(
        &self,
        records: Vec<InputRecord>,
        backend_down: bool,
    ) -> Result<oneshot::Receiver<Processed>, DetectorError> {
        let limits = self.limits;
        self.actor
            .call(move |model: &mut Box<dyn Detector>| match backend_down {
                false => process(model.as_mut(), records, &limits),
                true => process_while_backend_down(model.as_mut(), records, &limits),
            })
            .map_err(|_| DetectorError::ModelThread(None))
    }
}

/// Used by [`ModelThread::start`] callers that already have a model (tests): wraps it in
/// a loader.
#[cfg(test)]
pub(crate) fn preloaded(model: Box<dyn Detector>) -> impl FnOnce() -> Result<Box<dyn Detector>, ModelError> + Send {
    move || Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::judge::PANICKING_FRAME;
    use crate::detector::test_support::{frame_bytes, limits, png, record, FakeModel};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_and_load_errors() {
        let thread = ModelThread::start(preloaded(Box::new(FakeModel { calls: 0 })), limits()).await.unwrap();
        assert_eq!(thread.model_name(), "fake");
        let rx = thread.submit(vec![record(0, Some(frame_bytes("a", png(4, 4, [1, 2, 3]))))], false).unwrap();
        let processed = rx.await.unwrap();
        assert!(matches!(processed.verdicts[0], Verdict::Result { .. }));
        drop(thread);

        let err = ModelThread::start(|| Err(ModelError::Inference("no weights".into())), limits()).await.err().unwrap();
        assert!(err.to_string().contains("no weights"), "{err}");
    }

    /// A panic while judging one frame must not stop the thread: the restarted worker
    /// would read the same record again and crash again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_a_panic_while_judging_a_frame() {
        let thread = ModelThread::start(preloaded(Box::new(FakeModel { calls: 0 })), limits()).await.unwrap();
        let poison = vec![record(0, Some(frame_bytes(PANICKING_FRAME, png(4, 4, [1, 2, 3]))))];
        let processed = thread.submit(poison, false).unwrap().await.expect("the batch comes back");
        assert!(matches!(processed.verdicts[0], Verdict::DeadLetter { kind: "panic", .. }));
        let next = thread.submit(vec![record(1, Some(frame_bytes("b", png(4, 4, [1, 2, 3]))))], false).unwrap();
        assert!(matches!(next.await.expect("the thread still runs").verdicts[0], Verdict::Result { .. }));
    }
}
