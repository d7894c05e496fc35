//! NanoDet-g on burn: weights loading, network, pre- and post-processing.
//!
//! The pipeline only sees [`Detector`]: a batch of [`DecodedFrame`]s in, one
//! `Vec` of [`Detection`]s per frame out. [`NanoDet::load`] first makes sure the weights are
//! in `model.dir` (`ensure_weights`: fetched on first run unless `model.fetch = "never"`).

mod backend;
mod config;
mod cpu;
mod error;
mod fetch;
mod graph;
mod jpeg;
mod nanodet;
mod network;
mod postprocess;
mod preprocess;
#[cfg(test)]
pub(crate) mod unusual_images;
mod weights;

pub use backend::{Backend, ResolvedBackend};
pub use config::{default_model_dir, model_dir_for, ModelConfig, ModelFetch, Precision};
pub use error::{DecodeError, ModelError};
pub(crate) use fetch::ensure_weights;
pub use nanodet::NanoDet;
pub use network::OpProfile;
pub use postprocess::iou;
pub use postprocess::Detection;
pub(crate) use postprocess::PostProcess;
pub use preprocess::{decode_image, decode_rgb8, resize_to_input, DecodeLimits, DecodedFrame, INPUT_SIZE};

/// What the detect stage needs from a model: batched inference, one result per frame.
///
/// Implementations own their device and weights; calls are blocking (CPU/GPU work), so
/// the pipeline runs them on a dedicated thread, never on the async runtime.
pub trait Detector: Send {
    /// Model name and version recorded with every result (e.g. `nanodet-g`, `human-models@3.0.4`).
    fn model_name(&self) -> &str;
    fn model_version(&self) -> &str;
    /// Where it runs (`cpu`, `wgpu`), for the `detect batch` span.
    fn backend_name(&self) -> &str;
    /// Runs the model on `frames` (any batch size ≥ 1) and returns one entry per frame,
    /// in order, boxes in the frame's original pixel coordinates.
    fn detect(&mut self, frames: &[DecodedFrame]) -> Result<Vec<Vec<Detection>>, ModelError>;
}
