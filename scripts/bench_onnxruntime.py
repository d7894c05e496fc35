#!/usr/bin/env python3
"""Baseline for `vigil bench model`: onnxruntime on the same NanoDet-g network.

Forward pass only, float32, batch N, intra-op threads T; prints one JSON line like
`vigil bench model --json` so scripts/bench-model.sh can put both side by side.
Needs PyPI onnxruntime + numpy, and the ONNX conversion of the TF.js graph
(for example a tf2onnx conversion of nanodet.json; scripts/bench-model.sh says how).
"""
import argparse, json, statistics, time

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("onnx", help="path to the NanoDet-g ONNX file")
p.add_argument("--batch", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seconds", type=float, default=10.0)
a = p.parse_args()

opts = ort.SessionOptions()
opts.intra_op_num_threads = a.threads
opts.inter_op_num_threads = 1
s = ort.InferenceSession(a.onnx, opts, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
x = np.random.default_rng(0).random((a.batch, 3, 416, 416), dtype=np.float32)
for _ in range(3):
    s.run(None, {name: x})
times, start = [], time.perf_counter()
while time.perf_counter() - start < a.seconds:
    t = time.perf_counter()
    s.run(None, {name: x})
    times.append((time.perf_counter() - t) * 1e3)
med = statistics.median(times)
print(json.dumps({"backend": "onnxruntime", "version": ort.__version__, "batch": a.batch, "threads": a.threads,
                  "batches": len(times), "forward_frames_per_s": a.batch / (med / 1e3), "forward_ms": med}))
