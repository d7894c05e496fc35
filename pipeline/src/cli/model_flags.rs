//! What the commands that run the model locally share: the `--backend` and `--precision`
//! flags, and running the model work off the async runtime.

use vigil::model::{Backend, DecodeLimits, ModelConfig};
use vigil::settings::Settings;

use super::failure::Failure;
use super::EXIT_OK;

/// `--backend` and `--precision`, mirrored onto `detector.backend` and `model.precision`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ModelFlags {
    /// Where the model runs: auto (GPU via wgpu if present, else CPU), wgpu, cpu [config: detector.backend].
    #[arg(long, value_name = "BACKEND", value_parser = ["auto", "wgpu", "cpu"])]
    pub(crate) backend: Option<String>,
    /// Float type of the network: f32, or f16 (wgpu only: half the memory traffic, and
    /// tensor cores on Vulkan GPUs) [config: model.precision].
    #[arg(long, value_name = "TYPE", value_parser = ["f32", "f16"])]
    pub(crate) precision: Option<String>,
}

impl ModelFlags {
    /// Config keys these flags set.
    pub(crate) fn overrides(&self) -> Vec<(&'static str, String)> {
        let backend = self.backend.iter().map(|b| ("detector.backend", b.clone()));
        backend.chain(self.precision.iter().map(|p| ("model.precision", p.clone()))).collect()
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
