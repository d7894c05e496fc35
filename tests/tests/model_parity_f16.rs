//! Parity of NanoDet-g computing in f16 (`model.precision = "f16"`) with the onnxruntime
//! reference, on wgpu (a GPU, or Mesa lavapipe in CI). A binary of its own: a device's
//! default float type is process-wide, and `model_parity` runs wgpu at f32.

mod model_common;

use model_common::{check_detections, check_raw_outputs, model_config, Tolerance};
use vigil::model::{Backend, ModelConfig, ModelError, NanoDet, Precision};

/// f16 keeps 11 significant bits: activations drift by about 1e-2 through 100 layers,
/// boxes by a pixel or two.
const F16: Tolerance = Tolerance { score: 0.03, iou: 0.9, raw_mean: 1e-3, raw_max: 1e-2 };

#[test]
fn detections_match_reference_on_wgpu_in_f16() {
    check_detections(Backend::Wgpu, Precision::F16, &F16);
}

#[test]
fn raw_outputs_match_reference_on_wgpu_in_f16() {
    check_raw_outputs(Backend::Wgpu, Precision::F16, &F16);
}

#[test]
fn f16_on_the_cpu_backend_is_refused_with_what_to_do() {
    let config = ModelConfig { precision: Precision::F16, ..model_config() };
    let err = NanoDet::load(&config, Backend::Cpu).err().expect("f16 on the CPU backend must be refused");
    assert!(matches!(err, ModelError::PrecisionUnavailable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("--backend wgpu") && message.contains("model.precision"), "{message}");
}

#[test]
fn an_f32_model_on_a_device_already_in_f16_is_refused_not_silently_run_in_f16() {
    let f16 = model_common::load_at(Backend::Wgpu, Precision::F16);
    assert_eq!(f16.backend().precision, Precision::F16);
    let err = NanoDet::load(&model_config(), Backend::Wgpu).err().expect("the device is already f16");
    assert!(matches!(err, ModelError::PrecisionUnavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("already runs a model"), "{err}");
}
