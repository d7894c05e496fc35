//! Shared helpers for the model tests: where the weights, samples and fixtures are.

#![allow(dead_code)]

use vigil::model::{Backend, ModelConfig, NanoDet};

/// `VIGIL_MODEL_DIR`, else vigil's default `model.dir` (`~/.cache/vigil/models`).
pub(crate) use vigil_tests::{model_dir, repo_root};

pub(crate) fn model_config() -> ModelConfig {
    ModelConfig { dir: model_dir(), ..ModelConfig::default() }
}

pub(crate) fn load(backend: Backend) -> NanoDet {
    NanoDet::load(&model_config(), backend).unwrap_or_else(|e| {
        panic!("cannot load NanoDet-g on {backend}: {e}\n(scripts/test.sh fetches the weights and installs the Vulkan driver)")
    })
}

pub(crate) fn reference() -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo_root().join("tests/fixtures/nanodet_reference.json")).expect("reference fixture");
    serde_json::from_str(&text).expect("reference fixture is JSON")
}

pub(crate) fn sample(name: &str) -> Vec<u8> {
    let path = repo_root().join("samples").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
