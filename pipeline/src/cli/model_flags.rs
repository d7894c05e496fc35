//! Flags shared by the commands that run the model.

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
