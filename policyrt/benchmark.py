"""Step-latency benchmark: this project's session against the baselines, in one run, same weights.

(a) the Session on ONNX Runtime (I/O binding, ping-pong state), (b) the original framework's eager
model with the same weights — the xlstm package's `xLSTMBlockStack.step` (with the policy's embedding
and head) for xLSTM, Hugging Face's `DecisionTransformerModel` forward over the K window for DT —
(c) the PyTorch reference backend behind the Session. Results are percentiles over many calls and ratios against (b); never thresholds.
"""

from __future__ import annotations

import gc
import time

import numpy as np


def time_calls(fn, steps: int, warmup: int) -> np.ndarray:
    """Microseconds per call; the garbage collector is frozen as it is in the control loop."""
    durations = np.empty(steps, np.float64)
    for _ in range(warmup):
        fn()
    gc.collect()
    gc.disable()
    try:
        clock = time.perf_counter_ns
        for i in range(steps):
            start = clock()
            fn()
            durations[i] = clock() - start
    finally:
        gc.enable()
    return durations / 1e3


def summarize(us: np.ndarray) -> dict:
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p90_us": float(np.percentile(us, 90)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "samples": int(us.size),
    }


def session_stepper(bundle_path, backend: str):
    from policyrt.runtime import load

    session = load(bundle_path, backend=backend)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal(session.manifest.obs_dim).astype(np.float32)
    out = np.zeros(session.manifest.act_dim, np.float32)
    session.reset()

    def step():
        session.step(obs, 1.0, out=out)

    return step, session


def eager_xlstm_stepper(bundle_path):
    """The xlstm package's own recurrent step with the bundle's reference weights."""
    import torch

    from policyrt.policies.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    policy, _ = load_checkpoint(bundle_path / "reference")
    cfg = policy.config
    obs = torch.randn(1, cfg.obs_dim)
    prev = torch.zeros(1, cfg.act_dim)
    reward = torch.ones(1)
    rtg = torch.full((1,), cfg.target_return)
    state = {"value": None}

    def step():
        with torch.inference_mode():
            x = policy.tokens(obs, prev, reward, rtg).unsqueeze(1)
            y, state["value"] = policy.backbone.step(x, state["value"])
            policy.action_from_features(y[:, 0])

    return step


def hf_dt_eager_stepper(bundle_path):
    """Hugging Face's DecisionTransformerModel forward over a full K window, with the bundle's weights:
    what the reference evaluation code runs every step."""
    import torch

    from policyrt.policies.checkpoint import load_checkpoint
    from policyrt.policies.dt_reference import hf_model_from_dt_config

    torch.set_num_threads(1)
    policy, _ = load_checkpoint(bundle_path / "reference")
    cfg = policy.config
    model = hf_model_from_dt_config(cfg, policy.state_dict())
    k = cfg.context
    inputs = {
        "states": torch.randn(1, k, cfg.obs_dim),
        "actions": torch.randn(1, k, cfg.act_dim),
        "rewards": None,
        "returns_to_go": torch.randn(1, k, 1),
        "timesteps": torch.arange(k)[None],
        "attention_mask": torch.ones(1, k, dtype=torch.long),
    }

    def step():
        with torch.inference_mode():
            model(**inputs)

    return step


# policy kind -> (baseline name, what it is, its stepper)
BASELINES = {
    "xlstm": ("xlstm_eager_step", "xlstm package eager xLSTMBlockStack.step", eager_xlstm_stepper),
    "dt": ("hf_dt_eager_forward", "Hugging Face DecisionTransformerModel eager forward (K window)", hf_dt_eager_stepper),
}
MODEL_FIELDS = ("num_blocks", "embedding_dim", "num_heads", "slstm_at", "hidden_size", "n_layer", "n_head", "context")


def run_step_benchmark(bundle_path, steps: int = 5000, warmup: int = 300, progress=print) -> dict:
    from pathlib import Path

    from policyrt.bundle import open_bundle

    bundle_path = Path(bundle_path)
    manifest = open_bundle(bundle_path).manifest
    baseline, what, stepper = BASELINES[manifest.kind]
    results: dict[str, dict] = {}
    progress(f"(a) session / onnxruntime, {steps} steps ...")
    step, session = session_stepper(bundle_path, "onnxruntime")
    results["session_onnxruntime"] = summarize(time_calls(step, steps, warmup))
    session.close()
    progress(f"(b) {what}, {steps} steps ...")
    results[baseline] = summarize(time_calls(stepper(bundle_path), steps, warmup))
    progress(f"(c) session / torch reference backend, {steps} steps ...")
    step, session = session_stepper(bundle_path, "torch")
    results["session_torch_reference"] = summarize(time_calls(step, steps, warmup))
    session.close()
    base = results[baseline]["p50_us"]
    for entry in results.values():
        entry["speedup_vs_baseline_p50"] = base / entry["p50_us"]
    cfg = manifest.raw["policy"]["config"]
    return {
        "bundle": manifest.name,
        "kind": manifest.kind,
        "baseline": baseline,
        "model": {k: cfg[k] for k in MODEL_FIELDS if k in cfg},
        "graph_nodes": manifest.raw.get("graph", {}).get("nodes"),
        "batch": 1,
        "steps": steps,
        "results": results,
    }


def format_step_benchmark(report: dict) -> str:
    lines = [
        f"step latency, batch 1, {report['steps']} steps: {report['bundle']} {report['model']}, "
        f"{report['graph_nodes']} graph nodes",
        f"{'':<26}{'p50 us':>9}{'p90 us':>9}{'p99 us':>9}{'x vs baseline':>15}",
    ]
    for name, r in report["results"].items():
        lines.append(f"{name:<26}{r['p50_us']:>9.1f}{r['p90_us']:>9.1f}{r['p99_us']:>9.1f}{r['speedup_vs_baseline_p50']:>14.2f}x")
    lines.append(f"baseline: {report['baseline']}")
    return "\n".join(lines)


def loop_overhead(server: dict, controller: dict) -> dict:
    """Round trip seen by the robot (OBS sent -> ACT decoded) minus the controller's inference time."""
    answer = server["timing"]["answer"]["p50_us"]
    infer = controller["timing"]["infer"]["p50_us"]
    return {"answer_p50_us": answer, "infer_p50_us": infer, "overhead_p50_us": answer - infer,
            "answer_p99_us": server["timing"]["answer"]["p99_us"]}
