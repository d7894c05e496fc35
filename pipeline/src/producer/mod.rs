//! `vigil produce`: images from files, directories, globs or a synthetic generator onto
//! the `images` topic, with the idempotent producer (`enable.idempotence=true`,
//! `acks=all`). Images are never decoded here: the format is sniffed from magic bytes,
//! unrecognised files are sent anyway with a warning (the detector judges them).
//!
//! Library entry point: [`produce_frames`] (used by `vigil up` and tests).

pub mod config;
mod inputs;
mod publish;

use std::path::PathBuf;

pub use config::*;
pub use inputs::{
    expand_paths, read_file, synthetic_frame, synthetic_jpeg, FrameInput, SYNTHETIC_SIZE,
};
pub use publish::{produce_frames, ProduceOptions, ProduceSummary};
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::codec::CodecError;
use crate::kafka::KafkaPlumbingError;
use crate::settings::Settings;

/// Why producing failed.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("nothing to send: give image PATHs (files, directories, globs) and/or --synthetic N")]
    NothingToSend,
    #[error(
        "cannot create the Kafka producer: {0} (check kafka.client.* and kafka.bootstrap_servers)"
    )]
    Client(KafkaError),
    #[error(transparent)]
    Kafka(#[from] KafkaPlumbingError),
    #[error("cannot encode a frame (a bug): {0}")]
    Encode(CodecError),
    #[error("{failed} of {total} frames were not delivered; first error: {first_error}")]
    Delivery {
        failed: u64,
        total: u64,
        first_error: String,
    },
}

impl ProducerError {
    /// The command line was wrong (no inputs, a path that matches nothing): exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ProducerError::NothingToSend | ProducerError::Input { .. }
        )
    }
}

/// `vigil produce` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Publish images (files, directories, globs, or generated test images) to the images topic",
    long_about = "Publish images to the images topic (kafka.topics.images), one record per image: key = source id, \
        value = an Avro Frame (schemas/Frame.avsc) with a fresh frame_id and a per-source sequence number.\n\n\
        Files are sent byte for byte and never decoded; a file whose format is not recognised from its magic \
        bytes is still sent, with a warning (the detector dead-letters what it cannot decode). The producer is \
        idempotent (enable.idempotence=true, acks=all). Missing topics are created with the configured \
        partition counts (images: 12 by default). Prints one summary line at the end; exits 1 if any frame \
        was not delivered.",
    after_help = "Examples:\n  \
        vigil produce samples/                           # every file under samples/\n  \
        vigil produce 'photos/*.jpg' --source cam-7      # a glob (quote it), as camera cam-7\n  \
        vigil produce --synthetic 500                    # 500 generated 320x240 JPEGs\n  \
        vigil produce --synthetic 10 --fps 2 --loop      # a 2 frames/s test stream until Ctrl-C\n  \
        vigil --bootstrap 127.0.0.1:9092 produce img.jpg"
)]
pub struct ProduceArgs {
    /// Image files, directories (recursive) or glob patterns.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Source (camera) id: the record key [config: producer.source_id].
    #[arg(long, value_name = "ID")]
    pub source: Option<String>,
    /// Frames per second, 0 = as fast as possible [config: producer.frames_per_second].
    #[arg(long, value_name = "F")]
    pub fps: Option<f64>,
    /// Start over when the inputs are exhausted; runs until Ctrl-C.
    #[arg(long = "loop")]
    pub repeat: bool,
    /// Also send N generated JPEG test images.
    #[arg(long, value_name = "N")]
    pub synthetic: Option<u64>,
}

impl ProduceArgs {
    /// Config keys these flags set.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = Vec::new();
        if let Some(source) = &self.source {
            o.push(("producer.source_id", source.clone()));
        }
        if let Some(fps) = self.fps {
            o.push(("producer.frames_per_second", fps.to_string()));
        }
        o
    }
}

/// Runs `vigil produce`: prints the summary line on stdout; `Err` if anything failed.
pub async fn run(
    settings: &Settings,
    args: ProduceArgs,
    shutdown: CancellationToken,
) -> Result<ProduceSummary, ProducerError> {
    let files = expand_paths(&args.paths)?;
    let synthetic = args.synthetic.unwrap_or(0);
    if files.is_empty() && synthetic == 0 {
        return Err(ProducerError::NothingToSend);
    }
    let source = settings.producer.source_id.clone();
    let total = (!args.repeat).then_some(files.len() as u64 + synthetic);
    let one_pass = {
        let source = source.clone();
        move || {
            let source_f = source.clone();
            let source_s = source.clone();
            files
                .clone()
                .into_iter()
                .map(move |path| read_file(&source_f, &path))
                .chain((0..synthetic).map(move |i| Ok(synthetic_frame(&source_s, i))))
        }
    };
    let inputs: Box<dyn Iterator<Item = Result<FrameInput, ProducerError>> + Send> = if args.repeat
    {
        Box::new(std::iter::repeat_with(one_pass).flatten())
    } else {
        Box::new(one_pass())
    };
    let options = ProduceOptions {
        show_progress: true,
        total,
        record_frame_ids: false,
    };
    let summary = produce_frames(settings, inputs, options, shutdown).await?;
    println!("{}", summary.line(&settings.kafka.topics.images.name));
    if summary.failed > 0 {
        return Err(ProducerError::Delivery {
            failed: summary.failed,
            total: summary.failed + summary.delivered,
            first_error: summary.first_error.clone().unwrap_or_default(),
        });
    }
    Ok(summary)
}
