//! The per-frame hot paths of the record codec: a Frame's Avro encoding (producer) and
//! decoding (detector) with a real JPEG inside, and a DetectionResult's encoding
//! (detector) with a typical and a crowded list of objects.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vigil::testing::codec::{decode_frame, encode_frame, encode_result};

fn dog() -> Vec<u8> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ sits in the repo").to_path_buf();
    std::fs::read(repo.join("samples/dog.jpg")).expect("samples/dog.jpg")
}

fn frame(c: &mut Criterion) {
    let image = dog();
    let bytes = encode_frame(&image);
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode/dog_jpeg", |b| b.iter(|| encode_frame(&image)));
    group.bench_function("decode/dog_jpeg", |b| b.iter(|| decode_frame(&bytes)));
    group.finish();
}

fn result(c: &mut Criterion) {
    let mut group = c.benchmark_group("result_encode");
    for objects in [3usize, 100] {
        group.bench_with_input(BenchmarkId::from_parameter(objects), &objects, |b, &n| b.iter(|| encode_result(n)));
    }
    group.finish();
}

criterion_group!(benches, frame, result);
criterion_main!(benches);
