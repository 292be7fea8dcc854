"""The step inside the real-time loop against the step alone, per backend, quiet and under load (issue 17).

    .venv/bin/python benchmarks/loop_gap.py --duration 60 --json benchmarks/results/loop_gap.json

One run, in this order:
1. the hot-loop reference: `Session.step` back to back in its own process pinned to core 1, per backend;
2. the closed loop, `policyrt run --mode realtime --cpu=1` against `policyrt sim serve --mode realtime`
   pinned to core 0, for every case (bundle, backend, rate), first on a quiet machine, then with a
   CPU-bound neighbour (a Python busy loop) pinned to core 0 beside the sim;
3. the suspects, quiet, --suspect-duration each: telemetry and flight recorder on; the sim sharing the
   controller's core; no spinning before the deadline (--spin-us=0).

The xLSTM's IREE copy is compiled for this CPU and verified first (like `policyrt build-engine --backend
iree` + `policyrt verify --backend iree`). Reported: deadline misses, tick-start jitter, per-stage
p50/p99, and the infer stage's p50 over the hot loop's p50 of the same backend. Nothing is asserted; the
numbers go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from realtime import run_one  # noqa: E402

XLSTM, DT = "double-pendulum-xlstm.policy", "double-pendulum-dt.policy"
CONTROLLER_CPU, SIM_CPU = "1", "0"


def hot_loop(bundle: str, backend: str, calls: int) -> dict:
    """Session.step back to back in a child process pinned to the controller's core."""
    code = (
        "import json, sys, numpy as np\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import policyrt\n"
        "from policyrt.benchmark import time_calls\n"
        "from iree_bench import stepper\n"
        "s = policyrt.load(sys.argv[2], backend=sys.argv[3])\n"
        "us = time_calls(stepper(s), int(sys.argv[4]), 2000)\n"
        "print(json.dumps({'p50_us': float(np.percentile(us, 50)), 'p99_us': float(np.percentile(us, 99))}))\n"
    )
    out = subprocess.run(
        [
            "taskset",
            "-c",
            CONTROLLER_CPU,
            sys.executable,
            "-c",
            code,
            str(ROOT / "benchmarks"),
            bundle,
            backend,
            str(calls),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def neighbour(on: bool):
    """A CPU-bound process on the sim's core: the load the loop must hold under."""
    if not on:
        yield
        return
    hog = subprocess.Popen(["taskset", "-c", SIM_CPU, sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        hog.kill()
        hog.wait()


def closed_loop(bundle: str, backend: str, rate: float, duration: float, extra=(), sim_cpu=SIM_CPU) -> dict:
    args = [f"--cpu={CONTROLLER_CPU}", f"--backend={backend}", *extra]
    row = run_one(bundle, rate, duration, args, sim_cpu, None)
    row["backend"] = backend
    return row


def prepare_iree(bundle: Path, work: Path) -> Path:
    from iree_bench import prepare

    return prepare(bundle, work, [1])


def markdown(rows: list[dict], hot: dict) -> str:
    lines = [
        "| case | condition | misses | jitter p99 us | receive p50/p99 | infer p50/p99 | infer / hot (p50) | "
        "tick p50/p99 | sim mean return |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["stages_us"]
        h = hot[f"{r['bundle']}:{r['backend']}"]["p50_us"]
        lines.append(
            f"| {r['bundle'].split('.')[0]} {r['backend']} {r['rate_hz']:g} Hz | {r['condition']} | "
            f"{r['deadline_misses']} ({r['deadline_miss_pct']:.2f} %) | {r['jitter_us']['p99_us']:.1f} | "
            f"{s['receive']['p50']:.0f} / {s['receive']['p99']:.0f} | {s['infer']['p50']:.0f} / {s['infer']['p99']:.0f} | "
            f"{s['infer']['p50'] / h:.2f}x | {s['tick']['p50']:.0f} / {s['tick']['p99']:.0f} | {r['sim']['mean_return']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per closed-loop run (default: 60)")
    p.add_argument(
        "--suspect-duration", type=float, default=20.0, help="seconds per suspect run (default: 20)"
    )
    p.add_argument("--hot-calls", type=int, default=20000, help="hot-loop calls per backend (default: 20000)")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/loop_gap.json"))
    args = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("loop_gap: needs two CPUs (controller on core 1, sim on core 0)")
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    work = Path(tempfile.mkdtemp(prefix="loopgap"))
    print("compiling and verifying the IREE artifact ...", flush=True)
    xlstm_iree = str(prepare_iree(ROOT / "bundles" / XLSTM, work))
    xlstm_ort, dt = str(ROOT / "bundles" / XLSTM), str(ROOT / "bundles" / DT)
    # (bundle path, backend, rate): the IREE copy is the same bundle plus its verified artifact.
    cases = [
        (xlstm_ort, "onnxruntime", 1000.0),
        (xlstm_iree, "iree", 1000.0),
        (dt, "onnxruntime", 1000.0),
        (xlstm_iree, "iree", 2000.0),
    ]
    hot = {}
    for path, backend in {(c[0], c[1]) for c in cases}:
        hot[f"{Path(path).name}:{backend}"] = hot_loop(path, backend, args.hot_calls)
        print("hot", Path(path).name, backend, hot[f"{Path(path).name}:{backend}"], flush=True)
    rows = []
    for condition in ("quiet", "neighbour"):
        with neighbour(condition == "neighbour"):
            for path, backend, rate in cases:
                print(
                    f"{condition}: {Path(path).name} {backend} {rate:g} Hz for {args.duration:g} s",
                    flush=True,
                )
                rows.append(closed_loop(path, backend, rate, args.duration) | {"condition": condition})
    record = work / "flight"
    suspects = {
        "telemetry + recorder": dict(extra=("--telemetry=tcp://127.0.0.1:47311", f"--record-dir={record}")),
        "sim on core 1": dict(sim_cpu=CONTROLLER_CPU),
        "spin 0": dict(extra=("--spin-us=0",)),
    }
    for name, kw in suspects.items():
        for path, backend in ((xlstm_ort, "onnxruntime"), (xlstm_iree, "iree")):
            print(f"suspect {name}: {backend} 1000 Hz for {args.suspect_duration:g} s", flush=True)
            rows.append(closed_loop(path, backend, 1000.0, args.suspect_duration, **kw) | {"condition": name})
    table = markdown(rows, hot)
    print(table)
    out = {"started": started, "command": " ".join(sys.argv), "hot": hot, "runs": rows, "markdown": table}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
