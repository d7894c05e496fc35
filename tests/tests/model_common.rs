//! Shared helpers for the model tests: where the weights, samples and fixtures are.

#![allow(dead_code)]

use std::path::PathBuf;

use vigil::model::{Backend, ModelConfig, NanoDet};

pub use vigil_tests::repo_root;

/// `models/` of the checkout, or `VIGIL_MODEL_DIR`.
pub fn model_dir() -> PathBuf {
    std::env::var_os("VIGIL_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("models"))
}

pub fn model_config() -> ModelConfig {
    ModelConfig { dir: model_dir(), ..ModelConfig::default() }
}

pub fn load(backend: Backend) -> NanoDet {
    NanoDet::load(&model_config(), backend).unwrap_or_else(|e| {
        panic!("cannot load NanoDet-g on {backend}: {e}\n(scripts/test.sh fetches the weights and installs the Vulkan driver)")
    })
}

pub fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/nanodet_reference.json")).expect("reference fixture");
    serde_json::from_str(&text).expect("reference fixture is JSON")
}

pub fn sample(name: &str) -> Vec<u8> {
    let path = repo_root().join("samples").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
