#!/usr/bin/env bash
# GPU checks and numbers in one run: parity with the reference on the GPU (f32 and f16),
# then model frames/s on wgpu at batch 1, 8 and 32 in f32 and f16 (and the CPU backend on
# the same machine).
#
# Usage: scripts/gpu-bench.sh [SECONDS]            (default 8 s per measurement)
#
# Meant for a GPU machine with no Rust toolchain and no network, run from the repository
# root. Everything it needs is built or fetched beforehand on a development machine:
#   .gpu/vigil          a release build of the binary (cargo build --release -p vigil)
#   .gpu/model_parity, .gpu/model_parity_f16
#                       the parity test binaries (cargo test --workspace --test model_parity
#                       --test model_parity_f16 --no-run prints their paths); optional,
#                       each skipped when absent
#                       Both may come as .gpu/*.tar.xz (stripped binaries are large; the
#                       device's upload limit is 64 MiB), unpacked into .gpu/ first.
#   models/             the weights (scripts/fetch-model.sh models); that machine has no
#                       network, so the binary is told to use them and never fetch
#   .gl/*.deb           Vulkan/GL loader packages, unpacked when the machine has no
#                       libvulkan (apt-get download libvulkan1 libegl1 libglvnd0 ...)
# Results (JSON lines and logs) go to $OUT, or target/gpu-bench when OUT is unset.
# VIGIL_GPU_BATCHES overrides the batch sizes (default "1 8 32").
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
out=${OUT:-target/gpu-bench}
mkdir -p "$out"
vigil=${VIGIL_BIN:-.gpu/vigil}
export VIGIL__MODEL__DIR=$PWD/models VIGIL__MODEL__FETCH=never VIGIL_MODEL_DIR=$PWD/models
results=$out/gpu-bench.jsonl
: >"$results"
log() { printf 'gpu-bench: %s\n' "$*" | tee -a "$out/gpu-bench.log" >&2; }

for archive in .gpu/*.tar.xz; do
  [[ -f $archive ]] && tar -xJf "$archive" -C .gpu
done
[[ -x $vigil ]] || { log "no vigil binary at $vigil"; exit 1; }
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  log "no Vulkan loader on this machine: unpacking .gl/*.deb"
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [[ -f $nvidia_icd && -z ${VK_DRIVER_FILES:-} ]]; then
  export VK_DRIVER_FILES=$nvidia_icd
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$out/gpu-bench.log"
nproc | sed 's/^/cpus: /' | tee -a "$out/gpu-bench.log"

# `auto` must pick the GPU here; its choice is logged on stderr.
"$vigil" detect-image --backend auto --json samples/*.jpg >"$out/detections-auto.jsonl" 2>"$out/detect-auto.log"
log "detect-image --backend auto: exit $?, $(grep -o 'backend[^,]*' "$out/detect-auto.log" | head -1)"

for parity in model_parity model_parity_f16; do
  [[ -x .gpu/$parity ]] || continue
  VIGIL_REPO_ROOT=$PWD .gpu/$parity --test-threads 1 --nocapture wgpu >"$out/$parity-wgpu.log" 2>&1
  log "$parity on wgpu: exit $? ($(grep -E '^test result' "$out/$parity-wgpu.log"))"
done

for precision in f32 f16; do
  for batch in ${VIGIL_GPU_BATCHES:-1 8 32}; do
    "$vigil" bench model --backend wgpu --precision "$precision" --batch "$batch" --seconds "$seconds" --json \
      >>"$results" 2>>"$out/bench.log" || log "wgpu $precision batch $batch failed (see bench.log)"
  done
done
"$vigil" bench model --backend cpu --batch 1 --seconds "$seconds" --json >>"$results" 2>>"$out/bench.log" ||
  log "cpu batch 1 failed (see bench.log)"
cat "$results"
