//! NanoDet-g stages on the CPU backend: decode+resize, forward (batch 1, 4, 8), post-process.
//!
//! Needs the repo's `samples/` and the weights: `VIGIL_MODEL_DIR`, else vigil's default
//! `model.dir` (`~/.cache/vigil/models`), fetched there on first use like any `vigil` command does.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vigil::model::{decode_image, Backend, DecodeLimits, DecodedFrame, ModelConfig, NanoDet};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn dog() -> Vec<u8> {
    std::fs::read(repo().join("samples/dog.jpg")).expect("samples/dog.jpg")
}

fn model() -> NanoDet {
    let backend = match std::env::var("VIGIL_BENCH_BACKEND").as_deref() {
        Ok("wgpu") => Backend::Wgpu,
        _ => Backend::Cpu,
    };
    let dir = std::env::var_os("VIGIL_MODEL_DIR").map(PathBuf::from).unwrap_or_else(vigil::model::default_model_dir);
    NanoDet::load(&ModelConfig { dir, ..ModelConfig::default() }, backend)
        .unwrap_or_else(|e| panic!("cannot load NanoDet-g: {e}"))
}

fn decode_resize(c: &mut Criterion) {
    let bytes = dog();
    let limits = DecodeLimits::default();
    c.bench_function("decode_resize/dog_768x576", |b| b.iter(|| decode_image(&bytes, &limits).unwrap()));
}

fn forward(c: &mut Criterion) {
    let detector = model();
    let frame = decode_image(&dog(), &DecodeLimits::default()).unwrap();
    let mut group = c.benchmark_group("forward");
    group.sample_size(10);
    for batch in [1usize, 4, 8] {
        let frames: Vec<DecodedFrame> = vec![frame.clone(); batch];
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &frames, |b, frames| {
            b.iter(|| {
                let out = detector.forward_raw(detector.input(frames)).unwrap();
                detector.sync().unwrap();
                out
            })
        });
    }
    group.finish();
}

fn postprocess(c: &mut Criterion) {
    let detector = model();
    let frames = vec![decode_image(&dog(), &DecodeLimits::default()).unwrap()];
    let outputs = detector.forward_raw(detector.input(&frames)).unwrap();
    c.bench_function("postprocess/batch1", |b| b.iter(|| detector.postprocess(outputs.clone(), &frames).unwrap()));
}

criterion_group!(benches, decode_resize, forward, postprocess);
criterion_main!(benches);
