//! Model errors: what failed and what to do about it.

use std::path::PathBuf;

/// Why a frame's bytes could not become a model input. These are properties of the
/// input, not of the worker: the frame goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty image (0 bytes)")]
    Empty,
    #[error("not a supported image format (expected JPEG, PNG, GIF, BMP or WebP)")]
    UnknownFormat,
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {max_pixels}; raise detector.max_image_pixels if such frames are expected")]
    TooLarge { width: u32, height: u32, pixels: u64, max_pixels: u64 },
    #[error("image could not be decoded: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Stable, low-cardinality name used in DLQ headers and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::UnknownFormat => "unknown_format",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Corrupt(_) => "corrupt_image",
        }
    }
}

/// Failures of the model itself: loading weights, or running on the device.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path} is missing; run `scripts/fetch-model.sh` (or set model.dir) to get the NanoDet-g weights")]
    MissingFile { path: PathBuf },
    #[error("cannot read model file {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("model graph {path} is not a valid TF.js graph model: {reason}; re-run `scripts/fetch-model.sh`")]
    BadGraph { path: PathBuf, reason: String },
    #[error("weights file {path} is {actual} bytes but the manifest needs {expected}; the file is truncated or corrupt, re-run `scripts/fetch-model.sh`")]
    WeightsSize { path: PathBuf, expected: usize, actual: usize },
    #[error("weight tensor `{name}` is missing from the manifest")]
    MissingTensor { name: String },
    #[error("weight tensor `{name}` has shape {actual:?}, expected {expected}")]
    BadShape { name: String, expected: String, actual: Vec<usize> },
    #[error("weight tensor `{name}` is in the manifest but not used by the graph")]
    UnusedTensor { name: String },
    #[error("unsupported graph node `{node}` (op {op}): {reason}")]
    Unsupported { node: String, op: String, reason: String },
    #[error("backend `{backend}` is not available: {reason}")]
    BackendUnavailable { backend: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
}
