"""Real-time mode benchmark: `policyrt run --mode realtime` against `policyrt sim serve --mode
realtime` for a fixed wall-clock duration, per bundle and rate.

Both sides run as their own processes, exactly as a user would start them; the controller's
--results JSON (counters, stage latencies, tick-start jitter) and the sim server's --results JSON
(ACTs received, steps held or safe, ACT lag) are merged into one record per run. The sim server
runs at the controller's rate (--rate rescales its physics timestep), so every controller tick
has one fresh observation to act on.

    python benchmarks/realtime.py --duration 60 --rates 500 1000 \\
        --bundles bundles/inverted-pendulum-xlstm.policy bundles/inverted-pendulum-dt.policy \\
        --json benchmarks/results/realtime.json

Reports, per run: deadline misses (% of ticks), skipped ticks, tick-start jitter p50/p99,
per-stage latency p50/p99, fallbacks by reason, and the sim side's view. Not a test: nothing is
asserted; the numbers go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(
    bundle: str,
    rate: float,
    duration: float,
    extra: list[str],
    sim_cpu: str | None,
    sim_fifo: int | None,
    spin_fraction: float | None = None,
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="rtbench"))
    ep = f"ipc://{tmp}/robot.sock"
    sim_json, run_json = tmp / "sim.json", tmp / "run.json"
    py = [sys.executable, "-m", "policyrt.cli"]
    env_id = json.loads((Path(bundle) / "manifest.json").read_text()).get("env_id") or "InvertedPendulum-v5"
    sim_cmd = [*py, "sim", "serve", "--env", env_id, "--bind", ep, "--mode", "realtime"]
    sim_cmd += ["--rate", str(rate), "--connect-timeout", "120", "--controller-timeout", "30"]
    sim_cmd += ["--results", str(sim_json)]
    if sim_cpu is not None:
        sim_cmd = ["taskset", "-c", sim_cpu, *sim_cmd]
    if sim_fifo is not None:  # the stand-in robot gets real-time priority too, as a robot's loop would
        sim_cmd = ["chrt", "-f", str(sim_fifo), *sim_cmd]
    run_cmd = [*py, "run", bundle, "--connect", ep, "--mode", "realtime", "--rate", str(rate)]
    run_cmd += ["--duration", str(duration), "--results", str(run_json), *extra]
    if spin_fraction is not None:
        # Spinning the whole period under SCHED_FIFO trips the kernel's real-time throttling
        # (sched_rt_runtime_us: 95 % of each second), which freezes the loop for ~50 ms a second.
        run_cmd += [f"--spin-us={int(spin_fraction * 1e6 / rate)}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    load_before = os.getloadavg()
    sim = subprocess.Popen(sim_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        ctl = subprocess.run(run_cmd, capture_output=True, text=True, env=env, timeout=duration + 120)
        sim.wait(timeout=60)
    finally:
        if sim.poll() is None:
            sim.kill()
    if ctl.returncode != 0 or not run_json.exists():
        raise RuntimeError(f"controller failed ({ctl.returncode}):\n{ctl.stderr[-3000:]}")
    controller = json.loads(run_json.read_text())
    robot = json.loads(sim_json.read_text()) if sim_json.exists() else {}
    c = controller["counters"]
    ticks = max(1, controller["ticks"])
    return {
        "bundle": Path(bundle).name,
        "rate_hz": rate,
        "duration_s": duration,
        "controller_args": extra,
        "sim_cpu": sim_cpu,
        "sim_fifo": sim_fifo,
        "spin_fraction": spin_fraction,
        "ticks": controller["ticks"],
        "deadline_misses": c["deadline_misses"],
        "deadline_miss_pct": round(100.0 * c["deadline_misses"] / ticks, 3),
        "skipped_ticks": c["skipped_ticks"],
        "jitter_us": controller["jitter"],
        "stages_us": {
            k: {"p50": v["p50_us"], "p99": v["p99_us"], "max": v["max_us"]}
            for k, v in controller["timing"].items()
        },
        "fallbacks": c["fallbacks"],
        "fallback_ticks": c["fallback_ticks"],
        "repeated_obs": c["repeated_obs"],
        "dropped_obs": c["dropped_obs"],
        "rejected": c["rejected"],
        "sim": {
            key: robot.get(key)
            for key in (
                "steps",
                "acts",
                "held_steps",
                "safe_steps",
                "safe_events",
                "act_lag",
                "jitter",
                "stop_reason",
            )
        }
        | {"episodes": len(robot.get("episodes", [])), "mean_return": _mean(robot.get("episodes", []))},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _mean(episodes) -> float | None:
    if not episodes:
        return None
    return round(sum(e["episode_return"] for e in episodes) / len(episodes), 2)


def table(rows: list[dict]) -> str:
    head = (
        "| bundle | rate | misses | skipped | jitter p50 / p99 us | receive p50/p99 | infer p50/p99 | "
        "filter p50/p99 | send p50/p99 | tick p50/p99 | fallbacks (stale/deadline/nonfinite/estop) | "
        "sim: safe steps, held steps, mean return |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        s = r["stages_us"]
        fb = r["fallbacks"]

        def pp(name, s=s):
            return f"{s[name]['p50']:.0f} / {s[name]['p99']:.0f}"

        lines.append(
            f"| {r['bundle'].split('.')[0].replace('inverted-pendulum-', '')} | {r['rate_hz']:g} Hz | "
            f"{r['deadline_misses']} ({r['deadline_miss_pct']:.2f} %) | {r['skipped_ticks']} | "
            f"{r['jitter_us']['p50_us']:.0f} / {r['jitter_us']['p99_us']:.0f} | {pp('receive')} | {pp('infer')} | "
            f"{pp('filter')} | {pp('send')} | {pp('tick')} | "
            f"{fb['stale']}/{fb['deadline']}/{fb['nonfinite']}/{fb['estop']} | "
            f"{r['sim']['safe_steps']}, {r['sim']['held_steps']}, {r['sim']['mean_return']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per run (default: 60)")
    p.add_argument("--rates", type=float, nargs="+", default=[500.0, 1000.0])
    p.add_argument(
        "--bundles",
        nargs="+",
        default=[
            str(ROOT / "bundles/inverted-pendulum-xlstm.policy"),
            str(ROOT / "bundles/inverted-pendulum-dt.policy"),
        ],
    )
    p.add_argument(
        "--controller-arg", action="append", default=[], help="extra `policyrt run` argument (repeat)"
    )
    p.add_argument("--sim-cpu", default=None, help="pin the sim server with taskset -c CPUS")
    p.add_argument(
        "--spin-fraction",
        type=float,
        default=None,
        help="controller busy-waits this fraction of each period before the deadline (sets --spin-us per rate)",
    )
    p.add_argument("--sim-fifo", type=int, default=None, help="run the sim server with chrt -f PRIO")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/realtime.json"))
    args = p.parse_args()
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for bundle in args.bundles:
        for rate in args.rates:
            print(f"{Path(bundle).name} at {rate:g} Hz for {args.duration:g} s ...", flush=True)
            rows.append(
                run_one(
                    bundle,
                    rate,
                    args.duration,
                    args.controller_arg,
                    args.sim_cpu,
                    args.sim_fifo,
                    args.spin_fraction,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    training = subprocess.run(
        ["pgrep", "-f", "policyrt train"], capture_output=True, text=True
    ).stdout.split()
    out = {
        "started": started,
        "command": " ".join(sys.argv),
        "cpus": os.cpu_count(),
        "training_processes_at_end": len(training),
        "runs": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
