#!/usr/bin/env python3
"""The pipeline sweeps of docs/benchmarks.md: `vigil bench pipeline` runs, side by side in one go.

    scripts/bench-pipeline.py --vigil target/release/vigil --out bench-out [--bootstrap HOST:PORT]
    scripts/bench-pipeline.py --plot bench-out/results.jsonl --images docs/img

Sweeps (embedded broker, CPU backend, 1 worker unless said):
  batch      saturation at detector.max_batch 1, 2, 4, 8 (max_wait_ms 50), and 8 at max_wait_ms 5 and 200
  load       open loop at 10, 30, 50, 80, 100 and 120 % of the batch-8 capacity just measured
  plan       `vigil plan` for the 50 % and 80 % points, from the measured service time
  cluster    with --bootstrap: at-least-once and exactly-once at saturation on that cluster
Each run appends one JSON object (the bench's, plus "sweep" and "label") to OUT/results.jsonl
as it finishes. --plot renders PNGs from such a file (matplotlib, from
~/.cache/vigil/plot-tools or any Python that has it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run_bench(vigil: str, out: Path, label: str, sweep: str, args: list[str], env_bootstrap: str | None) -> dict:
    cmd = [vigil]
    if env_bootstrap:
        cmd += ["--bootstrap", env_bootstrap]
    cmd += ["bench", "pipeline", "--json", "--backend", "cpu", "--work-dir", str(out / label)] + args
    started = time.monotonic()
    print(f"bench-pipeline: {label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"bench-pipeline: {label} failed (exit {done.returncode})")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report.update(sweep=sweep, label=label, wall_s=round(time.monotonic() - started, 1))
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(report) + "\n")
    print(f"bench-pipeline: {label}: {report['frames_per_s']:.2f} frames/s, efficiency {report['efficiency']:.2f}, "
          f"p50 {report['latency_ms']['p50']:.0f} ms, p99 {report['latency_ms']['p99']:.0f} ms", file=sys.stderr)
    return report


def run_plan(vigil: str, rate: float, service_ms: float) -> dict:
    done = subprocess.run([vigil, "plan", "--rate", f"{rate}", "--service-ms", f"{service_ms}", "--json"],
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def sweeps(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = str(args.frames)
    chosen = set(args.sweeps.split(","))
    if "batch" in chosen:
        for batch in (1, 2, 4, 8):
            run_bench(args.vigil, out, f"batch-{batch}", "batch", ["--frames", frames, "--batch", str(batch)], None)
        for wait in (5, 200):
            run_bench(args.vigil, out, f"batch-8-wait-{wait}", "batch",
                      ["--frames", frames, "--batch", "8", "--max-wait-ms", str(wait)], None)
    if "load" in chosen:
        load_sweep(args, out)
    if args.bootstrap and "cluster" in chosen:
        for delivery in ("at-least-once", "exactly-once"):
            run_bench(args.vigil, out, f"cluster-{delivery}", "cluster",
                      ["--frames", frames, "--batch", "8", "--delivery", delivery], args.bootstrap)


def load_sweep(args, out: Path) -> None:
    """Open loop at shares of the batch-8 capacity in OUT/results.jsonl (the batch sweep)."""
    capacity = max(json.loads(l)["frames_per_s"] for l in open(out / "results.jsonl")
                   if json.loads(l)["label"] == "batch-8")
    for share in (0.1, 0.3, 0.5, 0.8, 1.0, 1.2):
        rate = round(share * capacity, 2)
        n = max(40, int(rate * args.load_seconds))
        report = run_bench(args.vigil, out, f"load-{int(share * 100)}", "load",
                           ["--frames", str(n), "--batch", "8", "--rate", str(rate)], None)
        if share in (0.5, 0.8):
            plan = run_plan(args.vigil, rate, 1000.0 / capacity)
            plan.update(sweep="plan", label=f"plan-{int(share * 100)}", measured=report["latency_ms"],
                        capacity=capacity)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(plan) + "\n")


def plot(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in open(args.plot)]
    images = Path(args.images)
    images.mkdir(parents=True, exist_ok=True)

    batch = [r for r in rows if r.get("sweep") == "batch" and "wait" not in r["label"]]
    batch.sort(key=lambda r: int(r["label"].split("-")[1]))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [int(r["label"].split("-")[1]) for r in batch]
    ax.plot(xs, [r["frames_per_s"] for r in batch], "o-", label="pipeline")
    ax.plot(xs, [r["model_frames_per_s"] for r in batch], "s--", label="model alone")
    ax.set_xlabel("detector.max_batch")
    ax.set_ylabel("frames/s")
    ax.set_xticks(xs)
    ax.set_title("Throughput at saturation vs batch size (CPU, embedded broker)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(images / "pipeline-batch.png", dpi=120)

    load = [r for r in rows if r.get("sweep") == "load"]
    load.sort(key=lambda r: r["rate"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [int(r["label"].split("-")[1]) for r in load]
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot(xs, [r["latency_ms"][key] for r in load], style, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("offered load, % of measured capacity")
    ax.set_ylabel("capture → stored latency, ms")
    ax.set_title("Latency vs offered load (batch 8, open loop)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(images / "pipeline-latency.png", dpi=120)
    print(f"bench-pipeline: wrote {images / 'pipeline-batch.png'} and {images / 'pipeline-latency.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vigil", default="target/release/vigil", help="the vigil binary (a release build)")
    ap.add_argument("--out", default="bench-out", help="directory for logs and results.jsonl")
    ap.add_argument("--frames", type=int, default=240, help="frames per saturation run")
    ap.add_argument("--load-seconds", type=float, default=30.0, help="about how long each open-loop run sends")
    ap.add_argument("--bootstrap", help="a Kafka cluster for the at-least-once vs exactly-once runs")
    ap.add_argument("--sweeps", default="batch,load,cluster",
                    help="which sweeps, comma-separated (load needs the batch sweep's results in --out)")
    ap.add_argument("--plot", metavar="RESULTS", help="render PNGs from RESULTS (a results.jsonl) instead")
    ap.add_argument("--images", default="docs/img", help="where --plot writes the PNGs")
    args = ap.parse_args()
    if args.plot:
        plot(args)
    else:
        sweeps(args)


if __name__ == "__main__":
    main()
