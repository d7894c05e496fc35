//! Parity of the burn NanoDet-g with the onnxruntime reference outputs
//! (tests/fixtures/nanodet_reference.json) on the darknet sample images, on the CPU
//! backend and on wgpu (a GPU, or Mesa lavapipe in CI).

mod model_common;

use model_common::{check_detections, check_raw_outputs, F32};
use vigil::model::{Backend, Precision};

#[test]
fn detections_match_reference_on_cpu() {
    check_detections(Backend::Cpu, Precision::F32, &F32);
}

#[test]
fn raw_outputs_match_reference_on_cpu() {
    check_raw_outputs(Backend::Cpu, Precision::F32, &F32);
}

#[test]
fn detections_match_reference_on_wgpu() {
    check_detections(Backend::Wgpu, Precision::F32, &F32);
}

#[test]
fn raw_outputs_match_reference_on_wgpu() {
    check_raw_outputs(Backend::Wgpu, Precision::F32, &F32);
}

#[test]
fn pretune_runs_the_worker_batch_sizes_on_wgpu_and_nothing_on_cpu() {
    assert_eq!(model_common::load(Backend::Cpu).pretune(8).expect("cpu"), Vec::<usize>::new());
    assert_eq!(model_common::load(Backend::Wgpu).pretune(2).expect("wgpu autotune"), [1, 2]);
}
