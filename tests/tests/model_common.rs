//! Shared helpers for the model tests: where the weights, samples and fixtures are.

#![allow(dead_code)]

use vigil::model::{decode_image, iou, Backend, DecodeLimits, DecodedFrame, Detector, ModelConfig, NanoDet, Precision};

/// `VIGIL_MODEL_DIR`, else vigil's default `model.dir` (`~/.cache/vigil/models`).
pub(crate) use vigil_tests::{model_dir, repo_root};

pub(crate) fn model_config() -> ModelConfig {
    ModelConfig { dir: model_dir(), ..ModelConfig::default() }
}

pub(crate) fn load(backend: Backend) -> NanoDet {
    load_at(backend, Precision::F32)
}

pub(crate) fn load_at(backend: Backend, precision: Precision) -> NanoDet {
    NanoDet::load(&ModelConfig { precision, ..model_config() }, backend).unwrap_or_else(|e| {
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

/// How close to the reference a precision must come.
pub(crate) struct Tolerance {
    /// Largest |score - reference score| of a matched detection.
    pub(crate) score: f32,
    /// Smallest IoU of a matched box with its reference box.
    pub(crate) iou: f32,
    /// Largest |mean - reference mean| of a raw output tensor.
    pub(crate) raw_mean: f64,
    /// Largest |max - reference max| of a raw output tensor, relative to max(1, |reference max|).
    pub(crate) raw_max: f64,
}

/// f32 on every backend: the onnxruntime reference to within float rounding.
pub(crate) const F32: Tolerance = Tolerance { score: 0.03, iou: 0.9, raw_mean: 1e-3, raw_max: 2e-4 };

/// Every reference detection scoring ≥ 0.35 is found (same label, IoU and score within
/// `tol`), and nothing scoring > 0.4 is found that the reference lacks.
pub(crate) fn check_detections(backend: Backend, precision: Precision, tol: &Tolerance) {
    let reference = reference();
    let results = reference["results"].as_object().expect("results");
    let names: Vec<&String> = results.keys().collect();
    let frames: Vec<DecodedFrame> =
        names.iter().map(|n| decode_image(&sample(n), &DecodeLimits::default()).expect("sample decodes")).collect();
    let mut model = load_at(backend, precision);
    // All seven in one batch: also checks that batching keeps frames apart.
    let detections = model.detect(&frames).expect("inference");
    assert_eq!(detections.len(), names.len());
    let (mut failures, mut worst_score, mut worst_iou) = (Vec::new(), 0f32, 1f32);
    for ((name, ours), frame) in names.iter().zip(&detections).zip(&frames) {
        let expected = &results[name.as_str()];
        assert_eq!(u64::from(frame.width), expected["width"].as_u64().unwrap());
        assert_eq!(u64::from(frame.height), expected["height"].as_u64().unwrap());
        let refs = expected["detections"].as_array().unwrap();
        let ref_box = |r: &serde_json::Value| -> [f32; 4] {
            let b = r["box"].as_array().unwrap();
            std::array::from_fn(|i| b[i].as_f64().unwrap() as f32)
        };
        for r in refs.iter().filter(|r| r["score"].as_f64().unwrap() >= 0.35) {
            let (label, score, rb) = (r["label"].as_str().unwrap(), r["score"].as_f64().unwrap() as f32, ref_box(r));
            let found = ours
                .iter()
                .any(|d| d.label == label && iou(&d.bbox, &rb) >= tol.iou && (d.score - score).abs() <= tol.score);
            let closest =
                ours.iter().filter(|d| d.label == label).max_by(|a, b| iou(&a.bbox, &rb).total_cmp(&iou(&b.bbox, &rb)));
            if let Some(d) = closest {
                worst_score = worst_score.max((d.score - score).abs());
                worst_iou = worst_iou.min(iou(&d.bbox, &rb));
            }
            if !found {
                failures.push(format!("{name}: missing {label} {score:.3} {rb:?}; ours: {ours:?}"));
            }
        }
        for d in ours.iter().filter(|d| d.score > 0.4) {
            if !refs.iter().any(|r| r["label"] == d.label.as_str() && iou(&d.bbox, &ref_box(r)) >= tol.iou) {
                failures.push(format!("{name}: extra {} {:.3} {:?}", d.label, d.score, d.bbox));
            }
        }
    }
    eprintln!("{backend} {precision}: largest score difference {worst_score:.4}, smallest IoU {worst_iou:.4}");
    assert!(failures.is_empty(), "{backend} {precision}: parity failures:\n{}", failures.join("\n"));
}

/// dog.jpg's raw output tensors have the reference's shapes, means and maxima (within `tol`).
pub(crate) fn check_raw_outputs(backend: Backend, precision: Precision, tol: &Tolerance) {
    let reference = reference();
    let raw = &reference["dog_jpg_raw_outputs"];
    let frame = decode_image(&sample("dog.jpg"), &DecodeLimits::default()).unwrap();
    let input_mean = frame.chw.iter().map(|&v| f64::from(v)).sum::<f64>() / frame.chw.len() as f64;
    assert!((input_mean - raw["input_stats"]["mean"].as_f64().unwrap()).abs() < 1e-3, "input mean {input_mean}");
    let model = load_at(backend, precision);
    let outputs = model.forward_raw(model.input(&[frame])).expect("forward");
    let expected = raw["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), expected.len());
    for (tensor, want) in outputs.into_iter().zip(expected) {
        let shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(tensor.dims().to_vec(), shape, "{} output shape", want["kind"]);
        let values: Vec<f32> = tensor.into_data().convert::<f32>().try_into_vec().unwrap();
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
        let max = values.iter().copied().fold(f32::MIN, f32::max);
        let (want_mean, want_max) = (want["mean"].as_f64().unwrap(), want["max"].as_f64().unwrap());
        let kind = &want["kind"];
        eprintln!(
            "{backend} {precision} {kind} {shape:?}: mean {:+.2e}, max {:+.2e} from the reference",
            mean - want_mean,
            f64::from(max) - want_max
        );
        assert!(
            (mean - want_mean).abs() <= tol.raw_mean,
            "{backend} {precision} {kind} {shape:?}: mean {mean} vs {want_mean}"
        );
        assert!(
            (f64::from(max) - want_max).abs() <= tol.raw_max * want_max.abs().max(1.0),
            "{backend} {precision} {kind} {shape:?}: max {max} vs {want_max}"
        );
    }
}
