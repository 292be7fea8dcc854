"""Step latency of a bundle on the TensorRT backend, with and without CUDA graphs, in ONE run.

    python3 benchmarks/trt_latency.py bundles/inverted-pendulum-xlstm.policy --precision fp16 --batch 1 256

Times `Session.step` (host inputs -> action on the host: what a controller sees) after a warm-up that
covers graph capture in both directions, and writes one JSON record per (batch, graphs) combination.
The engine must have passed `policyrt verify --backend tensorrt` on this board and must serve the
batches asked for (`policyrt build-engine --max-batch`). `--backend onnxruntime` runs the same timing
on the CPU backend (no graphs), which is how this script is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def time_steps(bundle: str, backend: str, batch: int, steps: int, warmup: int, **options) -> dict:
    import policyrt

    session = policyrt.load(bundle, backend=backend, batch_size=batch, **options)
    try:
        rng = np.random.default_rng(0)
        obs = rng.standard_normal((64, batch, session.manifest.obs_dim)).astype(np.float32)
        out = np.zeros((batch, session.manifest.act_dim), np.float32)
        for t in range(warmup):
            session.step(obs[t % 64], 0.0, out=out)
        times = np.empty(steps, np.int64)
        for t in range(steps):
            start = time.perf_counter_ns()
            session.step(obs[t % 64], 0.0, out=out)
            times[t] = time.perf_counter_ns() - start
        graphs = getattr(session.backend, "graphs", None)
        captured = bool(graphs is not None and graphs.captured)
    finally:
        session.close()
    us = times / 1e3
    return {"backend": backend, "batch": batch, "steps": steps, "cuda_graphs": captured,
            "p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean()), **{k: v for k, v in options.items() if k != "cuda_graphs"}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--backend", default="tensorrt", choices=["tensorrt", "onnxruntime"])
    p.add_argument("--precision", choices=["fp32", "fp16"], help="tensorrt engine (default: fp32 if built)")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--json", help="write the records to this file")
    args = p.parse_args(argv)
    records = []
    for batch in args.batch:
        for graphs in ((True, False) if args.backend == "tensorrt" else (None,)):
            options = {}
            if args.backend == "tensorrt":
                options = {"cuda_graphs": graphs, **({"precision": args.precision} if args.precision else {})}
            record = time_steps(args.bundle, args.backend, batch, args.steps, args.warmup, **options)
            records.append(record)
            print(f"{args.backend:<11} B={batch:<4} graphs={str(record['cuda_graphs']):<5} "
                  f"p50 {record['p50_us']:8.1f} us  p99 {record['p99_us']:8.1f} us", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
