"""Before/after benchmark of a refactor, in ONE run: the lockstep loop's overhead beyond inference and
the real-time mode's deadline misses, for an older revision of policyrt and for this working tree,
interleaved round by round so both see the same machine load.

    python benchmarks/before_after.py --before-rev 4bfa0c3 --rounds 3 --json benchmarks/results/before_after.json

The older revision is checked out with `git worktree` and installed with `pip install --target` into a
folder of its own; its processes run with that folder first on PYTHONPATH, from a neutral working
directory, so neither this tree's editable install nor its sources shadow it. Each revision runs its own
benchmark scripts (`policyrt bench --loop`, benchmarks/realtime.py), since their flags and JSON are
that revision's. Not a test: nothing is asserted; the table goes to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The older copy must win over this tree's editable install, whose finder is added by a .pth file
# when the interpreter starts; a sitecustomize in the copy's folder runs after it and removes it.
_SITECUSTOMIZE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f) and "editable" not in getattr(f, "__module__", "")]
"""


def prepare_before(rev: str, workdir: Path) -> tuple[Path, Path]:
    """(source tree, installed library folder) of revision `rev`."""
    src, lib = workdir / f"src-{rev}", workdir / f"lib-{rev}"
    if not src.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(src), rev], check=True)
    if not (lib / "policyrt").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(lib), str(src)], check=True)
        (lib / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return src, lib


def run_bench_loop(bundle: Path, env: dict, cwd: Path, episodes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "policyrt.cli", "bench", str(bundle), "--steps", "200", "--loop",
               "--loop-episodes", str(episodes), "--json", str(out)]
        subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        data = json.loads(out.read_text())
    loops = {}
    for variant, result in data.items():
        if not variant.startswith("loop_"):
            continue
        ctl = result["controller_timing"]
        loops[variant] = {
            "round_trip_p50_us": result["answer_p50_us"],
            "round_trip_p99_us": result["answer_p99_us"],
            "infer_p50_us": ctl["infer"]["p50_us"],
            "infer_p99_us": ctl["infer"]["p99_us"],
            "overhead_p50_us": result["overhead_p50_us"],
            # p99 of a difference is not the difference of p99s: the tail beyond inference is
            # shown by the robot's round trip p99 beside the controller's inference p99.
            "overhead_p99_us": result["answer_p99_us"] - ctl["infer"]["p99_us"],
        }
    return loops


def run_realtime(src: Path, bundle: Path, rates: list[float], duration: float, extra: list[str], env: dict,
                 cwd: Path) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rt.json"
        cmd = [sys.executable, str(src / "benchmarks" / "realtime.py"), "--duration", str(duration),
               "--rates", *map(str, rates), "--bundles", str(bundle), "--json", str(out), *extra]
        subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        runs = json.loads(out.read_text())["runs"]
    return [{"rate_hz": r["rate_hz"], "miss_pct": r["deadline_miss_pct"], "jitter_p99_us": r["jitter_us"]["p99_us"],
             "tick_p99_us": r["stages_us"]["tick"]["p99"]} for r in runs]


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds of each number, per version."""
    table: dict = {}
    for version in ("before", "after"):
        runs = [r[version] for r in rounds]
        loop: dict = {}
        for variant in runs[0]["loop"]:
            loop[variant] = {key: float(np.median([run["loop"][variant][key] for run in runs]))
                             for key in runs[0]["loop"][variant]}
        realtime = []
        for i, first in enumerate(runs[0]["realtime"]):
            row = {"rate_hz": first["rate_hz"]}
            for key in ("miss_pct", "jitter_p99_us", "tick_p99_us"):
                row[key] = float(np.median([run["realtime"][i][key] for run in runs]))
            realtime.append(row)
        table[version] = {"loop": loop, "realtime": realtime}
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-rev", required=True, help="git revision to compare against (e.g. the commit before a refactor)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "policyrt-before-after",
                    help="where the older revision is checked out and installed (reused across runs)")
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "inverted-pendulum-xlstm.policy")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--loop-episodes", type=int, default=3, help="lockstep episodes per `bench --loop` variant")
    ap.add_argument("--rates", type=float, nargs="+", default=[500.0, 1000.0], help="real-time rates, Hz")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per real-time run")
    ap.add_argument("--rt-arg", action="append", default=None,
                    help="argument for benchmarks/realtime.py (repeatable); default: the pinned run of "
                         "docs/BENCHMARKS.md (controller on CPU 0 at FIFO 50, sim on CPU 1 at FIFO 49, half-period spin)")
    ap.add_argument("--json", type=Path, help="write every round and the medians here")
    args = ap.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    before_src, before_lib = prepare_before(args.before_rev, args.workdir)
    neutral = args.workdir  # no policyrt/ folder here: nothing shadows the installed copies
    base_env = dict(os.environ, OMP_NUM_THREADS="1")
    base_env.pop("PYTHONPATH", None)
    versions = {
        "before": (before_src, dict(base_env, PYTHONPATH=str(before_lib))),
        "after": (ROOT, base_env),
    }
    bundle = args.bundle.resolve()
    rt_args = args.rt_arg if args.rt_arg is not None else [
        "--controller-arg=--sched-fifo=50", "--controller-arg=--cpu=0", "--sim-cpu", "1", "--sim-fifo", "49",
        "--spin-fraction", "0.5"]
    rounds = []
    for k in range(args.rounds):
        record = {}
        for version, (src, env) in versions.items():
            print(f"round {k + 1}/{args.rounds}: {version}", flush=True)
            loop = run_bench_loop(bundle, env, neutral, args.loop_episodes)
            realtime = run_realtime(src, bundle, args.rates, args.duration, rt_args, env, neutral)
            record[version] = {"loop": loop, "realtime": realtime}
        rounds.append(record)
    medians = summarize(rounds)
    for version in ("before", "after"):
        print(f"== {version}")
        for variant, numbers in medians[version]["loop"].items():
            print(f"  {variant}: " + ", ".join(f"{key} {value:.1f}" for key, value in numbers.items()))
        for row in medians[version]["realtime"]:
            print(f"  realtime {row['rate_hz']:g} Hz: misses {row['miss_pct']:.2f} %, jitter p99 "
                  f"{row['jitter_p99_us']:.0f} us, tick p99 {row['tick_p99_us']:.0f} us")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rounds": rounds, "medians": medians}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
