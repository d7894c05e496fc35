//! Parity of the burn NanoDet-g with the onnxruntime reference outputs
//! (tests/fixtures/nanodet_reference.json) on the darknet sample images, on the CPU
//! backend and on wgpu (a GPU, or Mesa lavapipe in CI).

mod model_common;

use model_common::{load, reference, sample};
use vigil::model::{decode_image, iou, Backend, DecodeLimits, DecodedFrame, Detector};

fn check_detections(backend: Backend) {
    let reference = reference();
    let results = reference["results"].as_object().expect("results");
    let names: Vec<&String> = results.keys().collect();
    let frames: Vec<DecodedFrame> =
        names.iter().map(|n| decode_image(&sample(n), &DecodeLimits::default()).expect("sample decodes")).collect();
    let mut model = load(backend);
    // All seven in one batch: also checks that batching keeps frames apart.
    let detections = model.detect(&frames).expect("inference");
    assert_eq!(detections.len(), names.len());
    let mut failures = Vec::new();
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
            let found =
                ours.iter().any(|d| d.label == label && iou(&d.bbox, &rb) >= 0.9 && (d.score - score).abs() <= 0.03);
            if !found {
                failures.push(format!("{name}: missing {label} {score:.3} {rb:?}; ours: {ours:?}"));
            }
        }
        for d in ours.iter().filter(|d| d.score > 0.4) {
            if !refs.iter().any(|r| r["label"] == d.label.as_str() && iou(&d.bbox, &ref_box(r)) >= 0.9) {
                failures.push(format!("{name}: extra {} {:.3} {:?}", d.label, d.score, d.bbox));
            }
        }
    }
    assert!(failures.is_empty(), "{backend}: parity failures:\n{}", failures.join("\n"));
}

fn check_raw_outputs(backend: Backend) {
    let reference = reference();
    let raw = &reference["dog_jpg_raw_outputs"];
    let frame = decode_image(&sample("dog.jpg"), &DecodeLimits::default()).unwrap();
    let input_mean = frame.chw.iter().map(|&v| f64::from(v)).sum::<f64>() / frame.chw.len() as f64;
    assert!((input_mean - raw["input_stats"]["mean"].as_f64().unwrap()).abs() < 1e-3, "input mean {input_mean}");
    let model = load(backend);
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
        assert!((mean - want_mean).abs() <= 1e-3, "{backend} {} {shape:?}: mean {mean} vs {want_mean}", want["kind"]);
        assert!(
            (f64::from(max) - want_max).abs() <= 1e-3,
            "{backend} {} {shape:?}: max {max} vs {want_max}",
            want["kind"]
        );
    }
}

#[test]
fn detections_match_reference_on_cpu() {
    check_detections(Backend::Cpu);
}

#[test]
fn raw_outputs_match_reference_on_cpu() {
    check_raw_outputs(Backend::Cpu);
}

#[test]
fn detections_match_reference_on_wgpu() {
    check_detections(Backend::Wgpu);
}

#[test]
fn raw_outputs_match_reference_on_wgpu() {
    check_raw_outputs(Backend::Wgpu);
}
