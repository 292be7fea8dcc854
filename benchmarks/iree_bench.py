"""IREE against ONNX Runtime: the Session's step from Python, both backends interleaved in one run (issue 17).

    taskset -c 1 .venv/bin/python benchmarks/iree_bench.py --batch 1 --batch 16 --xlstm-4x128 --breakdown \
        --json benchmarks/results/iree.json

Each bundle is copied into a temporary directory, compiled for this CPU at every --batch (policyrt
build-engine --backend iree) and verified (policyrt verify --backend iree) before it is timed. Then, for
--rounds rounds, every (bundle, batch, backend) is timed for --samples calls of `Session.step(obs,
reward, out=)` after a warm-up, the backends' order alternating per round; p50/p99 are over all samples
of a row, and the ratio is ONNX Runtime's p50 over IREE's, so only ratios from one run are compared.

--breakdown splits IREE's batch-1 call: the Session's own work, building the argument list, `invoke`
with a prebuilt list (the compiled step plus the runtime's per-call work), reading the returned carry.
(`iree-benchmark-module` is not used: on these artifacts its own harness reported 1.5-7x the time of the
same invoke from Python.) --xlstm-4x128 adds an untrained 4-block, width-128, 4-head xLSTM exported on the fly
(needs torch; the weights do not change the timing). Results are percentiles, never thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES = ("reacher-xlstm.policy", "reacher-dt.policy")
BACKENDS = ("onnxruntime", "iree")


def export_4x128(work: Path) -> Path:
    """An untrained xLSTM of the spine benchmark's size: 4 mLSTM blocks, embedding 128, 4 heads."""
    import torch

    from policyrt.export.bundle_export import export_policy
    from policyrt.policies.xlstm_config import XLSTMPolicyConfig
    from policyrt.policies.xlstm_policy import XLSTMPolicy

    torch.manual_seed(0)
    config = XLSTMPolicyConfig(obs_dim=4, act_dim=1, action_low=(-3.0,), action_high=(3.0,), obs_mean=(0.0,) * 4,
                               obs_std=(1.0,) * 4, embedding_dim=128, num_blocks=4, num_heads=4, context_length=96,
                               target_return=50.0, return_scale=10.0)
    policy = XLSTMPolicy(config).eval()
    doc = {"kind": "xlstm", "config": config.to_dict(), "commands": ["(benchmark: untrained 4x128)"]}
    return export_policy(policy, doc, Path("random weights"), work / "xlstm-4x128.policy", progress=lambda *_: None)


def prepare(bundle: Path, work: Path, batches: list[int]) -> Path:
    """A copy of `bundle` with a verified IREE artifact per batch size."""
    from policyrt.bundle import open_bundle
    from policyrt.runtime.iree_build import build_artifact
    from policyrt.runtime.verify import verify_backend

    path = work / bundle.name
    if bundle.resolve() != path.resolve():
        shutil.copytree(bundle, path)
    for batch in batches:
        build_artifact(open_bundle(path), batch, echo=lambda *_: None)
        report = verify_backend(open_bundle(path), "iree", batch_size=batch)
        if not report.ok:
            raise SystemExit(f"{path}: verify --backend iree --batch {batch} failed:\n{report.table()}")
    return path


def stepper(session):
    rng = np.random.default_rng(0)
    shape = (session.manifest.obs_dim,) if session.batch_size == 1 else (session.batch_size, session.manifest.obs_dim)
    obs = rng.standard_normal(shape).astype(np.float32)
    out = np.zeros(shape[:-1] + (session.manifest.act_dim,), np.float32)
    session.reset()

    def step():
        session.step(obs, 1.0, out=out)

    return step


def interleaved(rows: dict, samples: int, rounds: int, warmup: int, row_seconds: float) -> dict:
    """rows: {key: {backend: step}} -> {key: {backend: {"all": us, "round_p50": [...]}}}. A row's calls per
    round are `samples`, fewer for slow rows (at least 200) so that one round of a row takes ~row_seconds."""
    from policyrt.benchmark import time_calls

    timings = {key: {b: {"all": [], "round_p50": []} for b in steps} for key, steps in rows.items()}
    calls = {}
    for key, steps in rows.items():
        slowest = max(float(np.median(time_calls(step, 50, 10))) for step in steps.values())
        calls[key] = int(min(samples, max(200, row_seconds * 1e6 / slowest)))
    for r in range(rounds):
        for key, steps in rows.items():
            order = list(steps) if r % 2 == 0 else list(reversed(steps))
            for backend in order:
                us = time_calls(steps[backend], calls[key], warmup)
                timings[key][backend]["all"].append(us)
                timings[key][backend]["round_p50"].append(float(np.percentile(us, 50)))
    return timings


def summarize(timings: dict) -> list[dict]:
    table = []
    for (name, batch), per_backend in timings.items():
        row = {"bundle": name, "batch": batch}
        for backend, t in per_backend.items():
            us = np.concatenate(t["all"])
            row[backend] = {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
                            "median_of_round_p50_us": float(np.median(t["round_p50"])), "samples": int(us.size)}
        row["ratio_p50"] = row["onnxruntime"]["p50_us"] / row["iree"]["p50_us"]
        table.append(row)
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| bundle | B | ONNX Runtime p50 / p99 us | IREE p50 / p99 us | ORT / IREE (p50) | IREE us per slot |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in table:
        ort, iree = row["onnxruntime"], row["iree"]
        lines.append(f"| {row['bundle']} | {row['batch']} | {ort['p50_us']:.1f} / {ort['p99_us']:.1f} | "
                     f"{iree['p50_us']:.1f} / {iree['p99_us']:.1f} | **{row['ratio_p50']:.2f}x** | "
                     f"{iree['p50_us'] / row['batch']:.2f} |")
    return "\n".join(lines)


def breakdown(session, samples: int, rounds: int) -> dict:
    """Where IREE's batch-1 call goes (medians of interleaved rounds, microseconds)."""
    from policyrt.benchmark import time_calls

    backend, rt = session.backend, session.backend._rt
    host, reset, action = backend._host_views

    def arguments():
        args = rt.VmVariantList(3 + len(backend._state))
        args.push_ref(host)
        args.push_ref(reset)
        for view in backend._state:
            args.push_ref(view)
        args.push_ref(action)
        return args

    prebuilt = arguments()

    def invoke_prebuilt():
        backend._context.invoke(backend._function, prebuilt, rt.VmVariantList(len(backend._state)))

    results = rt.VmVariantList(len(backend._state))
    backend._context.invoke(backend._function, prebuilt, results)
    parts = {"Session.step": stepper(session), "backend.run": backend.run, "argument list (build)": arguments,
             "invoke (prebuilt list)": invoke_prebuilt,
             "read the carry (get_as_object)": lambda: results.get_as_object(0, rt.HalBufferView)}
    medians = {name: [] for name in parts}
    for _ in range(rounds):
        for name, fn in parts.items():
            medians[name].append(float(np.percentile(time_calls(fn, samples, 100), 50)))
    return {name: float(np.median(v)) for name, v in medians.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", help=f"bundle directory (default: bundles/{{{','.join(DEFAULT_BUNDLES)}}})")
    parser.add_argument("--xlstm-4x128", action="store_true", help="add an untrained 4x128 xLSTM (needs torch)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 16)")
    parser.add_argument("--samples", type=int, default=2000, help="timed calls per row per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--row-seconds", type=float, default=1.0,
                        help="fewer calls for slow rows: ~this long per row and round (default 1 s)")
    parser.add_argument("--breakdown", action="store_true", help="split IREE's batch-1 call")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from importlib import metadata

    from policyrt.runtime import load

    batches = args.batch or [1, 16]
    bundles = [Path(b) for b in args.bundle] if args.bundle else [ROOT / "bundles" / b for b in DEFAULT_BUNDLES]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="iree-bench-") as tmp:
        work = Path(tmp)
        if args.xlstm_4x128:
            bundles.append(export_4x128(work))
        prepared = [prepare(b, work, batches) for b in bundles]
        sessions = {(p.name.removesuffix(".policy"), batch): {b: load(p, backend=b, batch_size=batch) for b in BACKENDS}
                    for p in prepared for batch in batches}
        rows = {key: {b: stepper(s) for b, s in per.items()} for key, per in sessions.items()}
        table = summarize(interleaved(rows, args.samples, args.rounds, args.warmup, args.row_seconds))
        parts = {name: breakdown(per["iree"], args.samples, args.rounds)
                 for (name, batch), per in sessions.items() if batch == 1} if args.breakdown else {}
    result = {
        "date": started, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, affinity {sorted(os.sched_getaffinity(0))}",
        "cpu": __import__("policyrt.runtime.iree_artifacts", fromlist=["this_cpu"]).this_cpu(),
        "python": platform.python_version(), "onnxruntime": metadata.version("onnxruntime"),
        "iree": metadata.version("iree-base-runtime"), "samples_per_round": args.samples, "rounds": args.rounds,
        "command": "python benchmarks/iree_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": table, "breakdown_us": parts,
    }
    print(f"{result['date']}, {result['cpu']} ({result['machine']}), Python {result['python']}, onnxruntime "
          f"{result['onnxruntime']}, iree {result['iree']}; {args.rounds} interleaved rounds x {args.samples} calls")
    print(markdown(table))
    for name, split in parts.items():
        print(f"\n{name}, batch 1, IREE call split (median of round medians, us):")
        for part, us in split.items():
            print(f"  {part:<36} {'n/a' if us is None else f'{us:.2f}'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
