//! Criterion benchmarks for Vigil live in `benches/`; run them with
//! `cargo bench -p vigil-benches` (results are summarised in docs/benchmarks.md).
