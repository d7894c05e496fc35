//! The weights loader refuses damaged model files with errors that name the problem.

mod model_common;

use std::path::Path;

use model_common::model_dir;
use vigil::model::{Backend, ModelConfig, ModelError, ModelFetch, NanoDet};

/// A copy of the real model files, with `edit` applied to the graph JSON.
fn damaged(edit_json: impl FnOnce(&mut serde_json::Value), edit_bin: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir();
    let mut json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(src.join("nanodet.json")).expect("weights fetched (scripts/fetch-model.sh)"),
    )
    .unwrap();
    let mut bin = std::fs::read(src.join("nanodet.bin")).unwrap();
    edit_json(&mut json);
    edit_bin(&mut bin);
    std::fs::write(dir.path().join("nanodet.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    std::fs::write(dir.path().join("nanodet.bin"), bin).unwrap();
    dir
}

/// Loads from `dir`, never fetching: a missing file must stay an error here.
fn load_from(dir: &Path) -> ModelError {
    match NanoDet::load(
        &ModelConfig { dir: dir.to_path_buf(), fetch: ModelFetch::Never, ..ModelConfig::default() },
        Backend::Cpu,
    ) {
        Ok(_) => panic!("damaged model loaded"),
        Err(e) => e,
    }
}

fn manifest(json: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    json["weightsManifest"][0]["weights"].as_array_mut().unwrap()
}

#[test]
fn missing_directory_names_the_fix() {
    let err = load_from(Path::new("/nonexistent/vigil-models"));
    assert!(matches!(err, ModelError::NotFetched { .. }), "{err:?}");
    let text = err.to_string();
    for needle in
        ["/nonexistent/vigil-models", "VIGIL__MODEL__DIR", "VIGIL__MODEL__FETCH=if-missing", "scripts/fetch-model.sh"]
    {
        assert!(text.contains(needle), "`{needle}` not in: {text}");
    }
    // The message is complete on its own; no `source()` repeats part of it in an error chain.
    assert!(std::error::Error::source(&err).is_none());
}

#[test]
fn shard_missing_from_a_present_directory_is_refused() {
    // The manifest names a second shard that is not there: both weight files exist, so
    // nothing is fetched and the loader names the missing file.
    let dir = damaged(
        |json| json["weightsManifest"][0]["paths"].as_array_mut().unwrap().push("nanodet-2.bin".into()),
        |_| {},
    );
    let err = load_from(dir.path());
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err:?}");
    assert_eq!(err.to_string().matches("is missing").count(), 1, "{err}");
}

#[test]
fn test_helpers_and_vigil_agree_on_the_default_directory() {
    if std::env::var_os("VIGIL_MODEL_DIR").is_none() {
        assert_eq!(model_dir(), vigil::model::default_model_dir());
    }
}

#[test]
fn truncated_bin_is_refused() {
    let dir = damaged(|_| {}, |bin| bin.truncate(bin.len() - 1000));
    let err = load_from(dir.path());
    assert!(matches!(err, ModelError::WeightsSize { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn missing_tensor_is_refused() {
    // Rename a manifest entry: the graph's Const node no longer finds its values.
    let dir = damaged(
        |json| {
            let entry = manifest(json).iter_mut().find(|w| w["dtype"] == "float32").unwrap();
            entry["name"] = "renamed/tensor".into();
        },
        |_| {},
    );
    let err = load_from(dir.path());
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err:?}");
}

#[test]
fn wrong_shape_is_refused() {
    // The graph declares a different shape than the manifest holds.
    let dir = damaged(
        |json| {
            let name = manifest(json).iter().find(|w| w["shape"].as_array().is_some_and(|s| s.len() == 4)).unwrap()
                ["name"]
                .clone();
            let node =
                json["modelTopology"]["node"].as_array_mut().unwrap().iter_mut().find(|n| n["name"] == name).unwrap();
            node["attr"]["value"]["tensor"]["tensorShape"]["dim"][0]["size"] = "7".into();
        },
        |_| {},
    );
    let err = load_from(dir.path());
    assert!(matches!(err, ModelError::BadShape { .. }), "{err:?}");
}

#[test]
fn manifest_shape_that_does_not_fit_the_bin_is_refused() {
    let dir = damaged(
        |json| {
            let entry =
                manifest(json).iter_mut().find(|w| w["shape"].as_array().is_some_and(|s| s.len() == 4)).unwrap();
            entry["shape"][0] = 5.into();
        },
        |_| {},
    );
    let err = load_from(dir.path());
    assert!(matches!(err, ModelError::WeightsSize { .. }), "{err:?}");
}

#[test]
fn extra_tensor_is_refused() {
    let dir = damaged(
        |json| manifest(json).push(serde_json::json!({"name": "stray/extra", "shape": [2], "dtype": "int32"})),
        |bin| bin.extend_from_slice(&[0; 8]),
    );
    let err = load_from(dir.path());
    assert!(matches!(err, ModelError::UnusedTensor { .. }), "{err:?}");
}

#[test]
fn filter_with_a_zero_dimension_is_refused() {
    // A convolution filter with no output channels, consistent in graph, manifest and
    // shard: the loader accepts the tensor, the network builder must refuse it.
    let mut json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(model_dir().join("nanodet.json")).expect("weights fetched (scripts/fetch-model.sh)"),
    )
    .unwrap();
    let bytes_of = |w: &serde_json::Value| -> usize {
        let count: u64 = w["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product();
        let width = if w["dtype"] == "float32" && w["quantization"]["dtype"] == "float16" { 2 } else { 4 };
        count as usize * width
    };
    let weights = manifest(&mut json);
    let index = weights.iter().position(|w| w["shape"].as_array().is_some_and(|s| s.len() == 4)).unwrap();
    let offset: usize = weights[..index].iter().map(bytes_of).sum();
    let size = bytes_of(&weights[index]);
    let dir = damaged(
        |json| {
            let entry = &mut manifest(json)[index];
            entry["shape"][3] = 0.into();
            let name = entry["name"].clone();
            let node =
                json["modelTopology"]["node"].as_array_mut().unwrap().iter_mut().find(|n| n["name"] == name).unwrap();
            node["attr"]["value"]["tensor"]["tensorShape"]["dim"][3]["size"] = "0".into();
        },
        |bin| {
            bin.drain(offset..offset + size);
        },
    );
    let err = load_from(dir.path());
    assert!(matches!(err, ModelError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("zero dimension"), "{err}");
}
