"""Per-step latency against history length: DT at K in {10, 20, 50, 100} vs xLSTM at episode step
{1, 100, 1000, 10000}, all on the ONNX Runtime session, batch 1, in one run. Writes JSON and a PNG.

The DT recomputes its K-step window every tick, so its cost grows with K; the xLSTM carries a
fixed-size state, so step 10,000 costs what step 1 costs. DT models here have random weights (latency
does not depend on the values): 3 layers, hidden 128, 1 head, like the DT benchmark config.

    .venv/bin/python benchmarks/context_scaling.py [OUT_DIR]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DT_CONTEXTS = (10, 20, 50, 100)
XLSTM_STEPS = (1, 100, 1000, 10_000)
WINDOW = 300  # timed steps per point


def dt_point(context: int, work: Path) -> dict:
    import torch

    from policyrt.export.bundle_export import export_policy
    from policyrt.policies.dt_config import DTPolicyConfig
    from policyrt.policies.dt_policy import DTPolicy
    from policyrt.runtime import load

    torch.manual_seed(0)
    config = DTPolicyConfig(obs_dim=4, act_dim=1, action_low=(-3.0,), action_high=(3.0,), hidden_size=128,
                            n_layer=3, n_head=1, context=context, max_ep_len=1000)
    policy = DTPolicy(config).eval()
    out = export_policy(policy, {"kind": "dt", "config": config.to_dict(), "commands": []}, Path("random weights"),
                        work / f"dt-k{context}.policy", progress=lambda *_: None)
    session = load(out)
    obs, o = np.zeros(4, np.float32), np.zeros(1, np.float32)
    for _ in range(context + 50):  # fill the window: the full-window cost is the steady state
        session.step(obs, 1.0, out=o)
    us = timed(lambda: session.step(obs, 1.0, out=o), WINDOW * 3)
    return {"context": context, "p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99))}


def xlstm_points() -> list[dict]:
    from policyrt.runtime import load

    session = load(ROOT / "bundles" / "inverted-pendulum-xlstm.policy")
    obs, o = np.zeros(4, np.float32), np.zeros(1, np.float32)
    total = XLSTM_STEPS[-1] + WINDOW
    us = timed(lambda: session.step(obs, 1.0, out=o), total)  # one episode, never reset
    points = []
    for start in XLSTM_STEPS:
        chunk = us[start - 1 : start - 1 + WINDOW]
        points.append({"episode_step": start, "p50_us": float(np.percentile(chunk, 50)), "p99_us": float(np.percentile(chunk, 99))})
    return points


def timed(fn, n: int) -> np.ndarray:
    import gc

    out = np.empty(n)
    gc.disable()
    try:
        for i in range(n):
            t = time.perf_counter_ns()
            fn()
            out[i] = time.perf_counter_ns() - t
    finally:
        gc.enable()
    return out / 1e3


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    dt = report["dt"]
    left.plot([p["context"] for p in dt], [p["p50_us"] for p in dt], "o-", label="p50")
    left.plot([p["context"] for p in dt], [p["p99_us"] for p in dt], "o--", alpha=0.6, label="p99")
    left.set_xlabel("DT context K (timesteps recomputed per step)")
    left.set_ylabel("us per step (batch 1, ORT)")
    left.set_title("Decision Transformer")
    left.legend()
    xl = report["xlstm"]
    right.semilogx([p["episode_step"] for p in xl], [p["p50_us"] for p in xl], "o-", label="p50")
    right.semilogx([p["episode_step"] for p in xl], [p["p99_us"] for p in xl], "o--", alpha=0.6, label="p99")
    right.set_xlabel("xLSTM episode step")
    right.set_title("xLSTM (4 blocks, 128)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(out_dir: str = "benchmarks/results") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        dt = []
        for k in DT_CONTEXTS:
            print(f"DT K={k} ...", flush=True)
            dt.append(dt_point(k, Path(tmp)))
    print("xLSTM, one 10,300-step episode ...", flush=True)
    xl = xlstm_points()
    spread = max(p["p50_us"] for p in xl) / min(p["p50_us"] for p in xl) - 1
    report = {"dt": dt, "xlstm": xl, "xlstm_p50_spread": spread, "date": time.strftime("%Y-%m-%d")}
    (out / "context_scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "context_scaling.png")
    print(f"{'DT K':>8} {'p50 us':>9} {'p99 us':>9}")
    for p in dt:
        print(f"{p['context']:>8} {p['p50_us']:>9.1f} {p['p99_us']:>9.1f}")
    print(f"{'xLSTM t':>8} {'p50 us':>9} {'p99 us':>9}")
    for p in xl:
        print(f"{p['episode_step']:>8} {p['p50_us']:>9.1f} {p['p99_us']:>9.1f}")
    print(f"xLSTM p50 spread across episode steps: {100 * spread:.1f}%")
    print(f"wrote {out / 'context_scaling.json'} and {out / 'context_scaling.png'}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
