"""Closed-loop returns of the shipped bundles (issue 4): each bundle over 20 seeded episodes through
a sim server process and a controller process (ONNX Runtime, ipc), at its own target return and at a
low one on the same seeds, beside the scripted expert on those seeds.

    .venv/bin/python benchmarks/shipped_returns.py [--episodes 20] [--json benchmarks/results/shipped_returns.json]

Prints a markdown table for docs/BENCHMARKS.md. The bar (sim/experts.py close_to_expert): at least 95%
of the expert's mean return; for Reacher, whose returns are negative costs, within 10% of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bundle stem -> (environment, low commanded return: about what the data's weak episodes reached)
SHIPPED = {
    "inverted-pendulum": ("InvertedPendulum-v5", 20.0),
    "double-pendulum": ("InvertedDoublePendulum-v5", 1000.0),
    "reacher": ("Reacher-v5", -30.0),
}


def evaluate_bundle(name: str, env_id: str, low: float, episodes: int, parallel: int) -> dict:
    from policyrt.sim.evaluate import Candidate, EvalConfig, evaluate
    from policyrt.sim.experts import close_to_expert

    bundle = str(ROOT / "bundles" / f"{name}.policy")
    report = evaluate(EvalConfig(env_id=env_id, episodes=episodes, parallel=parallel, seed=0),
                      Candidate(bundle), Candidate(bundle, target_return=low))
    best, worse = (run["return"] for run in report["runs"])
    expert = report["expert"]["return"]
    return {"bundle": name, "env": env_id, "episodes": episodes, "low_target": low,
            "return": best, "return_low_target": worse, "expert": expert,
            "meets_bar": close_to_expert(best["mean"], expert["mean"]),
            "size_mb": sum(f.stat().st_size for f in Path(bundle).rglob("*") if f.is_file()) / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--parallel", type=int, default=10)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = [evaluate_bundle(f"{stem}-{kind}", env, low, args.episodes, args.parallel)
            for stem, (env, low) in SHIPPED.items() for kind in ("xlstm", "dt")]
    print("| bundle | size | return (mean +/- std) | expert | ratio | bar met | at a low target | return there |")
    print("|---|---:|---:|---:|---:|:-:|---:|---:|")
    for r in rows:
        b, e, w = r["return"], r["expert"], r["return_low_target"]
        print(f"| `{r['bundle']}` | {r['size_mb']:.1f} MB | {b['mean']:.2f} +/- {b['std']:.2f} | {e['mean']:.2f} | "
              f"{b['mean'] / e['mean']:.1%} | {'yes' if r['meets_bar'] else '**no**'} | {r['low_target']:g} | "
              f"{w['mean']:.2f} +/- {w['std']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
    return 0 if all(r["meets_bar"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
