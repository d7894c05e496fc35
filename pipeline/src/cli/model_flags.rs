//! What the commands that run the model locally share: the `--backend` flag, and running
//! the model work off the async runtime.

use vigil::model::{Backend, DecodeLimits, ModelConfig};
use vigil::settings::Settings;

use super::failure::Failure;
use super::EXIT_OK;

/// `--backend`, mirrored onto `detector.backend`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct BackendFlag {
    /// Where the model runs: auto (GPU via wgpu if present, else CPU), wgpu, cpu [config: detector.backend].
    #[arg(long, value_name = "BACKEND", value_parser = ["auto", "wgpu", "cpu"])]
    pub(crate) backend: Option<String>,
}

impl BackendFlag {
    /// Config keys this flag sets.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        self.backend.iter().map(|b| ("detector.backend", b.clone())).collect()
    }
}

/// Runs `work` (model loading and inference: blocking CPU/GPU work) on a blocking thread
/// with the model settings, the backend and the decoding limits.
pub(crate) async fn on_blocking_thread<A: Send + 'static>(
    settings: &Settings,
    args: A,
    work: fn(&ModelConfig, Backend, &DecodeLimits, &A) -> anyhow::Result<()>,
) -> Result<u8, Failure> {
    let (model, detector) = (settings.model.clone(), settings.detector.clone());
    tokio::task::spawn_blocking(move || work(&model, detector.backend, &detector.decode, &args))
        .await
        .map_err(Failure::runtime)?
        .map_err(Failure::runtime)?;
    Ok(EXIT_OK)
}
