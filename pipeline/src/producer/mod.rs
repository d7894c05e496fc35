//! `vigil produce`: images from files, directories, globs or a synthetic generator onto
//! the `images` topic, with the idempotent producer (`enable.idempotence=true`,
//! `acks=all`). Images are never decoded here: the format is sniffed from magic bytes,
//! unrecognised files are sent anyway with a warning (the detector judges them).
//!
//! Crash safety: a file's frame id is derived from the file (module `inputs`), so running the
//! same command again after a crash (kill -9 included) sends the same frames again, and
//! downstream stores each of them once. Every frame handed to the Kafka producer is
//! either delivered or counted and named in the summary; a send error stops the run
//! after the queued frames are settled.
//!
//! Library entry point: [`run`] (used by `vigil produce` and `vigil up`).

mod backpressure;
mod config;
mod inputs;
mod publish;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub(crate) use backpressure::partition_for;
pub use config::ProducerConfig;
pub(crate) use inputs::InputFile;
use inputs::{expand_paths, read_file, sniff_file, synthetic_frame, FrameInput};
pub use publish::ProduceSummary;
use publish::{produce_frames, ProduceOptions};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::codec::{contract, CodecError, ContractError, ImageEncoding};
use crate::kafka::KafkaPlumbingError;
use crate::settings::Settings;

/// Why producing failed.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("nothing to send: no image files in the given paths, and no synthetic frames asked for (give image PATHs: files, directories, globs; or --synthetic N)")]
    NothingToSend,
    #[error("cannot create the Kafka producer: {0} (check kafka.client.* and kafka.bootstrap_servers)")]
    Client(KafkaError),
    #[error("producer.source_id (--source): {0}")]
    Contract(#[from] ContractError),
    #[error("the task that watches the in-memory broker's partitions did not complete: {0}")]
    BackpressureTask(tokio::task::JoinError),
    #[error("cannot start the thread that reads the inputs: {0}")]
    SpawnReader(std::io::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaPlumbingError),
    #[error("cannot encode a frame (a bug): {0}")]
    Encode(CodecError),
    #[error(
        "{failed} of {total} frames were not delivered ({names}); first error: {first_error}{unsent}. Running the \
         same command again is safe: a file gets the same frame id, so a frame already stored is not stored twice",
        names = not_delivered.join(", "),
        unsent = if *unsent > 0 { format!("; {unsent} more inputs were not sent") } else { String::new() }
    )]
    Delivery { failed: u64, total: u64, not_delivered: Vec<String>, first_error: String, unsent: u64 },
}

impl ProducerError {
    /// The command line was wrong (no inputs, a path that matches nothing): exit code 2.
    pub fn is_usage(&self) -> bool {
        match self {
            ProducerError::NothingToSend | ProducerError::Input { .. } | ProducerError::Contract(_) => true,
            ProducerError::Kafka(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// What one producer run sends.
#[derive(Debug, Clone, Default)]
pub struct ProduceRequest {
    /// Image files, directories (recursive) or glob patterns.
    pub paths: Vec<PathBuf>,
    /// Also send this many generated test images.
    pub synthetic: u64,
    /// Start over when the inputs are exhausted (until `count` or shutdown).
    pub repeat: bool,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Leave out files whose format is not recognised from their magic bytes (a README
    /// among sample images) instead of sending them for the detector to dead-letter.
    pub images_only: bool,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub show_progress: bool,
}

/// The files `request` names (expanded, and only images with `images_only`); refuses a
/// request with nothing to send. Lets `vigil up` refuse before it starts anything.
pub(crate) fn files_to_send(request: &ProduceRequest) -> Result<Vec<InputFile>, ProducerError> {
    let mut files = expand_paths(&request.paths)?;
    if request.images_only {
        files.retain(|file| sniff_file(&file.path) != ImageEncoding::Unknown);
    }
    if files.is_empty() && request.synthetic == 0 {
        return Err(ProducerError::NothingToSend);
    }
    Ok(files)
}

/// Sends what `request` names to `kafka.topics.images` until it is all delivered (or
/// `shutdown`). Refuses a source that breaks the input contract before sending anything.
/// Delivery failures are counted in the summary ([`ProduceSummary::check`]).
///
/// Files are sent in sorted order, so a frame's `seq` is its file's position (pass after
/// pass with `repeat`), counted from 0 in each run's session; a rerun sends the same
/// frame ids in a new session.
pub async fn run(
    settings: &Settings,
    request: &ProduceRequest,
    shutdown: CancellationToken,
) -> Result<ProduceSummary, ProducerError> {
    contract::check_source(&settings.producer.source_id)?;
    let files = files_to_send(request)?;
    let images = settings.kafka.topics.images.name.as_str();
    crate::kafka::use_schema_registry(&settings.kafka, &[(crate::codec::RecordType::Frame, images)]).await?;
    let synthetic = request.synthetic;
    let one_pass_len = files.len() as u64 + synthetic;
    let source = settings.producer.source_id.clone();
    let one_pass = move |pass: u64| {
        let source_f = source.clone();
        let source_s = source.clone();
        files
            .clone()
            .into_iter()
            .map(move |file| read_file(&source_f, &file, pass))
            .chain((0..synthetic).map(move |i| Ok(synthetic_frame(&source_s, i))))
    };
    let limit = request.count.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let (inputs, total): (Box<dyn Iterator<Item = Result<FrameInput, ProducerError>> + Send>, Option<u64>) =
        if request.repeat {
            (Box::new((0..).flat_map(one_pass).take(limit)), request.count)
        } else {
            (Box::new(one_pass(0).take(limit)), Some(request.count.map_or(one_pass_len, |n| n.min(one_pass_len))))
        };
    let options = ProduceOptions { show_progress: request.show_progress, total };
    produce_frames(settings, inputs, options, shutdown).await
}
