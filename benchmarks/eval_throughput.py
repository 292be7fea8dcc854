"""Evaluation throughput (issue 4): environment steps per second of `policyrt eval` with
--parallel 1 and --parallel 16, same bundle, same seeds, in one run.

Each measurement is a real closed loop (sim server process + controller process over ipc) through
the same code as `policyrt eval` (sim/evaluate.py's run_candidate); steps/s is the server's env
steps over its session time (first OBS to the end: process start-up excluded). The per-tick
inference and env-step times explain the ratio: at P=1 a step costs one inference, one env step and
one round trip; at P=16 one batch-16 inference, 16 env steps and one round trip are shared by 16.

    .venv/bin/python benchmarks/eval_throughput.py [--repeats 2] [--json benchmarks/results/eval_throughput.json]

--light also exports a small random-weight xLSTM (needs torch): a policy whose inference is cheap at
any batch shows what the evaluation path itself scales to. The target (>= 5x at P=16) is reported,
not asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = [ROOT / "bundles" / "inverted-pendulum-xlstm.policy", ROOT / "bundles" / "inverted-pendulum-dt.policy"]
ENV = "InvertedPendulum-v5"  # the shipped pendulum bundles; --bundle for others must fit it
TARGET = 5.0


def light_bundle(out_dir: Path) -> Path:
    """One mLSTM block, width 32, random weights, actions within +-0.05 (the pole falls on its own
    after ~20 steps, so this also exercises per-slot resets)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_policy

    from policyrt.export.bundle_export import export_policy

    policy = tiny_policy(obs_dim=4, act_dim=1, action_low=(-0.05,), action_high=(0.05,), num_blocks=1)
    doc = {"kind": "xlstm", "config": policy.config.to_dict(), "commands": ["benchmarks/eval_throughput.py --light"]}
    return export_policy(policy, doc, Path("random"), out_dir / "light-xlstm.policy", progress=lambda *_: None)


def measure(bundle: Path, parallel: int, episodes: int, max_steps: int, seed: int, env_threads: int | None = None,
            controller_threads: int = 1) -> dict:
    from policyrt.sim.evaluate import Candidate, EvalConfig, check_inputs, run_candidate

    cfg = EvalConfig(ENV, episodes, parallel=parallel, seed=seed, max_episode_steps=max_steps,
                     env_threads=env_threads, controller_threads=controller_threads if parallel > 1 else 1)
    cand = Candidate(str(bundle), "onnxruntime")
    check_inputs(cfg, [cand])
    run = run_candidate(cfg, cand)
    lat = run["latency_us"]
    return {
        "parallel": parallel,
        "episodes": episodes,
        "env_steps": run["env_steps"],
        "ticks": run["ticks"],
        "session_s": run["session_s"],
        "steps_per_s": run["steps_per_s"],
        "mean_return": run["return"]["mean"],
        "infer_p50_us_per_tick": lat["controller"]["infer"]["p50"],
        "env_step_p50_us_per_tick": lat["robot"]["env_step"]["p50"],
        "answer_p50_us_per_tick": lat["robot"]["answer"]["p50"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", type=Path, help="bundle(s) to measure (default: the shipped xLSTM and DT)")
    p.add_argument("--light", action="store_true", help="also measure a small random-weight xLSTM (needs torch)")
    p.add_argument("--parallel", type=int, default=16, help="the batched side of the comparison (default 16)")
    p.add_argument("--episodes", type=int, default=16, help="episodes per measurement (default 16; light: x16)")
    p.add_argument("--max-episode-steps", type=int, default=500, help="time limit per episode (default 500)")
    p.add_argument("--repeats", type=int, default=1, help="alternate P=1 / P=16 this many times (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-threads", type=int, choices=[1, 2],
                   help="the sim server's stepping threads (default: its own, 2 from 4 environments up)")
    p.add_argument("--controller-threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads of the batched controller (default 1)")
    p.add_argument("--json", type=Path, help="write the results there")
    args = p.parse_args()

    bundles = [(b, args.episodes) for b in (args.bundle or BUNDLES)]
    with tempfile.TemporaryDirectory(prefix="eval-throughput-") as tmp:
        if args.light:
            bundles.append((light_bundle(Path(tmp)), args.episodes * 16))
        rows = []
        for bundle, episodes in bundles:
            runs = {1: [], args.parallel: []}
            for _ in range(args.repeats):
                for parallel in runs:  # alternated, so slow phases of the shared machine hit both
                    result = measure(bundle, parallel, episodes, args.max_episode_steps, args.seed,
                                     args.env_threads, args.controller_threads)
                    runs[parallel].append(result)
                    print(f"{bundle.name}: P={parallel}: {result['steps_per_s']:.0f} env steps/s "
                          f"({result['env_steps']} steps in {result['session_s']:.2f} s)", flush=True)
            one = statistics.median(r["steps_per_s"] for r in runs[1])
            many = statistics.median(r["steps_per_s"] for r in runs[args.parallel])
            rows.append({"bundle": bundle.name, "steps_per_s": {"1": one, str(args.parallel): many},
                         "speedup": many / one, "runs": {str(k): v for k, v in runs.items()}})

    print(f"\n{'bundle':<34} {'P=1 steps/s':>12} {f'P={args.parallel} steps/s':>13} {'speed-up':>9} "
          f"{'infer/tick P=1':>15} {f'P={args.parallel}':>8}")
    for row in rows:
        r1, rp = row["runs"]["1"][-1], row["runs"][str(args.parallel)][-1]
        print(f"{row['bundle']:<34} {row['steps_per_s']['1']:>12.0f} {row['steps_per_s'][str(args.parallel)]:>13.0f} "
              f"{row['speedup']:>8.2f}x {r1['infer_p50_us_per_tick']:>13.0f}us {rp['infer_p50_us_per_tick']:>6.0f}us")
    print(f"target: >= {TARGET:g}x at P={args.parallel} (reported, not asserted)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.python_version()}",
               "command": " ".join(["benchmarks/eval_throughput.py", *sys.argv[1:]]), "env": ENV,
               "max_episode_steps": args.max_episode_steps, "target_speedup": TARGET, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
