#!/usr/bin/env bash
# Model throughput, side by side in one run: onnxruntime (baseline, forward only) and
# `vigil bench model` on the CPU backend (batch 1/4/8) and on wgpu, then the baseline
# again so machine noise shows. Prints JSON lines; docs/benchmarks.md quotes them.
#
#   scripts/bench-model.sh [SECONDS]        (default 10 s per measurement)
#
# Needs a release build (cargo build --release -p vigil), the weights (scripts/fetch-model.sh),
# PyPI onnxruntime + numpy, and an ONNX conversion of the same TF.js graph in VIGIL_ONNX
# (e.g. `pip install tf2onnx tensorflowjs` and tf2onnx's --tfjs option on nanodet.json).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
target=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}
vigil=${VIGIL_BIN:-$target/release/vigil}
onnx=${VIGIL_ONNX:-}
[[ -x $vigil ]] || { echo "no binary at $vigil: run cargo build --release -p vigil (or set VIGIL_BIN)" >&2; exit 1; }
[[ -f $onnx ]] || { echo "no ONNX model${onnx:+ at $onnx}: set VIGIL_ONNX to an ONNX conversion of NanoDet-g (see the header of this script)" >&2; exit 1; }
ort() { python3 scripts/bench_onnxruntime.py "$onnx" --batch 1 --threads 2 --seconds "$seconds"; }
ort
for batch in 1 4 8; do
    "$vigil" bench model --backend cpu --batch "$batch" --seconds "$seconds" --json 2>/dev/null
done
"$vigil" bench model --backend wgpu --batch 1 --seconds "$seconds" --json 2>/dev/null || echo '{"backend":"wgpu","error":"unavailable"}'
ort
