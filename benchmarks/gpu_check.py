"""GPU device check (issue 6): the torch-cuda backend's tests, parity and step latency in ONE run.

On a GPU machine (H100/H200 class, PyTorch with CUDA; no TensorRT, no network), from the repo root:

    bash benchmarks/gpu_check.sh            # = python3 benchmarks/gpu_check.py; OUT=dir to choose where

It (1) runs tests/test_torch_cuda_backend.py with pytest, (2) replays each shipped bundle's parity.json
on the torch-cuda backend (fp32 tolerance 1e-4) and compares a 64-slot rollout with resets against the
CPU reference backend and graphs against no graphs, (3) times `Session.step` (host inputs -> action on
the host, the controller's view) at B=1 and B=256, with and without CUDA graphs, and (4) writes
$OUT/gpu_check.json, $OUT/gpu_check.txt (summary) and $OUT/pytest.txt; OUT defaults to ./gpu_results.
Targets are reported, never asserted. Budget: well under 5 minutes (a deadline skips what is left).

Expects, and installs none of it: Python >= 3.10 with torch (CUDA build), numpy, pytest, safetensors,
xlstm==2.0.6 and what it imports (einops, omegaconf, dacite); onnxruntime is optional (only some CPU
tests use it). If `policyrt` is not importable from this checkout it runs
`pip install -e . --no-deps --no-build-isolation` (setuptools >= 64; downloads nothing) and restarts.

Exit status: 0 tests and parity passed; 1 a test or parity failed; 2 cannot run here (no CUDA, missing
packages) — the reason goes to stderr and into the JSON. `--device cpu` runs the script's own path on
a CPU (no graphs, no pytest unless --tests) so it can be tested without a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"xlstm": ROOT / "bundles" / "inverted-pendulum-xlstm.policy",
           "dt": ROOT / "bundles" / "inverted-pendulum-dt.policy"}
TOLERANCE = 1e-4  # fp32 on a GPU against the CPU reference (issue 6)
DEADLINE_S = 270  # the whole check must stay under 5 minutes
TEST_FILE = "tests/test_torch_cuda_backend.py"


class CannotRun(Exception):
    """This machine cannot run the check (exit 2)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_results", help="results folder ($OUT)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: test this script without a GPU")
    p.add_argument("--steps", type=int, default=2000, help="timed steps per latency point")
    p.add_argument("--warmup", type=int, default=200, help="untimed steps first (includes graph capture)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    p.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=list(BUNDLES))
    p.add_argument("--parity-batch", type=int, default=64, help="slots of the rollout compared with the CPU")
    tests = p.add_mutually_exclusive_group()
    tests.add_argument("--tests", dest="tests", action="store_true", default=None, help="run pytest (default on cuda)")
    tests.add_argument("--skip-tests", dest="tests", action="store_false")
    args = p.parse_args(argv)
    if args.tests is None:
        args.tests = args.device == "cuda"
    return args


# -- preflight ------------------------------------------------------------------------------------------

def ensure_policyrt() -> None:
    """Import policyrt from THIS checkout; install it editable (no deps, no download) if it is not."""
    try:
        runtime = importlib.import_module("policyrt.runtime")
        if Path(runtime.__file__).resolve().parent == ROOT / "runtime":
            return
        where = runtime.__file__
    except ImportError:
        where = None
    if os.environ.get("GPU_CHECK_INSTALLED"):
        raise CannotRun(f"policyrt still does not import from {ROOT} after installing it (found: {where})")
    print(f"gpu_check: policyrt not importable from this checkout (found: {where}); installing it editable", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "-e", str(ROOT), "--no-deps", "--no-build-isolation", "-q"]
    if subprocess.run(cmd).returncode != 0:
        raise CannotRun(f"`{' '.join(cmd)}` failed (needs pip and setuptools >= 64 in this Python)")
    os.environ["GPU_CHECK_INSTALLED"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.argv])  # a fresh interpreter picks up the editable install


def preflight(args) -> None:
    needed = ["torch", "safetensors", "xlstm"] + (["pytest"] if args.tests else [])
    missing = []
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError as err:  # names the module really missing (e.g. omegaconf under xlstm)
            missing.append(f"{name} ({err})")
    if missing:
        raise CannotRun("missing Python packages: " + "; ".join(missing))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CannotRun(f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) reports "
                        "torch.cuda.is_available() == False; run this on a GPU machine")
    ensure_policyrt()


def environment(device: str) -> dict:
    import torch

    env = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "platform": platform.platform(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "device": device, "cpu_threads": torch.get_num_threads()}
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip() or None
    except OSError:
        env["git_commit"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}",
                   float32_matmul_precision=torch.get_float32_matmul_precision())
    return env


# -- the three parts ------------------------------------------------------------------------------------

def run_tests(out: Path, timeout: float) -> dict:
    xml = out / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}", TEST_FILE]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        (out / "pytest.txt").write_text(str(err.stdout or ""))
        return {"ok": False, "rc": None, "error": f"pytest timed out after {timeout:.0f} s", "log": "pytest.txt"}
    (out / "pytest.txt").write_text(done.stdout + done.stderr)
    result = {"ok": done.returncode == 0, "rc": done.returncode, "log": "pytest.txt",
              "summary": (done.stdout.strip().splitlines() or [""])[-1]}
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    return result


def make_backend(bundle, batch: int, device: str, graphs: bool):
    from policyrt.runtime.torch_cuda_backend import TorchCudaBackend

    return TorchCudaBackend(bundle, batch, device=device, cuda_graphs=graphs)


def rollout(backend, steps: int, seed: int = 0):
    """Random inputs with a different slot resetting every 7 ticks; actions [T, B, A] and final state."""
    from policyrt.runtime import Session

    session = Session(backend.bundle, backend)
    rng = np.random.default_rng(seed)
    b, dim = session.batch_size, session.manifest.obs_dim
    actions = []
    session.reset()
    for t in range(steps):
        if t and t % 7 == 0:
            session.reset(np.arange(b) == (t // 7) % b)
        obs = (0.3 * rng.standard_normal((b, dim))).astype(np.float32)
        actions.append(session.step(obs, rng.uniform(0.0, 1.0, b).astype(np.float32)))
    return np.stack(actions), session.state()


def differences(actions, state, ref_actions, ref_state) -> dict:
    from policyrt.runtime.verify import state_scale

    scaled = {k: float(np.abs(state[k].astype(np.float64) - ref_state[k]).max() / state_scale(ref_state[k]))
              for k in ref_state}
    return {"action_max_abs": float(np.abs(actions - ref_actions).max()),
            "state_max_scaled": max(scaled.values()), "state_scaled": scaled}


def check_parity(name: str, args) -> dict:
    """parity.json on the backend (the CPU recording), then a wider rollout against the CPU backend."""
    from policyrt.bundle import open_bundle
    from policyrt.runtime.torch_backend import TorchBackend
    from policyrt.runtime.verify import parity_inputs, parity_report

    bundle = open_bundle(BUNDLES[name])
    graphs = args.device == "cuda"
    parity = bundle.parity()
    inputs = parity_inputs(parity)
    backend = make_backend(bundle, inputs["obs"].shape[1], args.device, graphs)
    report = parity_report(backend, parity, inputs, TOLERANCE)
    result = {"parity_json": {**report.to_dict(), "captured": backend.captured}}
    backend.close()

    steps = 100
    ref = rollout(TorchBackend(bundle, args.parity_batch), steps)
    backend = make_backend(bundle, args.parity_batch, args.device, graphs)
    ours = rollout(backend, steps)
    result["vs_cpu"] = {"batch": args.parity_batch, "steps": steps, "captured": backend.captured,
                        **differences(*ours, *ref)}
    backend.close()
    ok = report.ok and max(result["vs_cpu"]["action_max_abs"], result["vs_cpu"]["state_max_scaled"]) <= TOLERANCE
    if graphs:
        eager = make_backend(bundle, args.parity_batch, args.device, False)
        result["graphs_vs_eager"] = differences(*ours, *rollout(eager, steps))
        eager.close()
        ok = ok and result["graphs_vs_eager"]["action_max_abs"] <= 1e-5  # same kernels: wiring bugs are ~0.1
    result["ok"] = bool(ok)
    return result


def bench_point(name: str, batch: int, graphs: bool, args) -> dict:
    from policyrt.benchmark import summarize, time_calls
    from policyrt.bundle import open_bundle
    from policyrt.runtime import Session

    bundle = open_bundle(BUNDLES[name])
    backend = make_backend(bundle, batch, args.device, graphs)
    session = Session(bundle, backend)
    rng = np.random.default_rng(0)
    obs = (0.1 * rng.standard_normal((batch, session.manifest.obs_dim))).astype(np.float32)
    out = np.zeros((batch, session.manifest.act_dim), np.float32)
    session.reset()
    us = time_calls(lambda: session.step(obs, 1.0, out=out), args.steps, args.warmup)
    point = {"bundle": name, "batch": batch, "cuda_graphs": graphs, **summarize(us),
             "captured": backend.captured, "fallback_reason": backend.graphs.fallback_reason}
    session.close()
    return point


def targets(latency: list[dict]) -> dict:
    """Issue 6's numbers for the xLSTM bundle (reported, not asserted); ratios within this run only."""
    p50 = {(p["bundle"], p["batch"], p["cuda_graphs"]): p["p50_us"] for p in latency}
    found = {}
    for name in sorted({p["bundle"] for p in latency}):
        one, wide, eager = p50.get((name, 1, True)), p50.get((name, 256, True)), p50.get((name, 1, False))
        found[name] = {
            "p50_b1_graphs_us": one,
            "b256_over_b1": None if not (one and wide) else wide / one,
            "graphs_speedup_b1": None if not (one and eager) else eager / one,
        }
    x = found.get("xlstm", {})
    met = {"xlstm_p50_b1_le_150us": None if x.get("p50_b1_graphs_us") is None else x["p50_b1_graphs_us"] <= 150,
           "xlstm_b256_le_3x_b1": None if x.get("b256_over_b1") is None else x["b256_over_b1"] <= 3,
           "xlstm_graphs_ge_3x": None if x.get("graphs_speedup_b1") is None else x["graphs_speedup_b1"] >= 3}
    return {"by_bundle": found, "met": met}


def summary(doc: dict) -> str:
    env = doc.get("environment", {})
    lines = [f"gpu_check {doc['status']}" + (f": {doc['reason']}" if doc.get("reason") else "")]
    if env:
        lines.append(f"{env['date_utc']} {env.get('gpu', env['device'])} torch {env['torch']} "
                     f"CUDA {env['torch_cuda']} commit {str(env['git_commit'])[:10]}")
    if "tests" in doc:
        t = doc["tests"]
        lines.append(f"tests: {'ok' if t['ok'] else 'FAILED'} {t.get('summary', t.get('error', ''))}")
    for name, p in doc.get("parity", {}).items():
        pj, vc = p["parity_json"], p["vs_cpu"]
        worst = max(o["max_judged"] for o in pj["outputs"].values())
        line = (f"parity {name}: {'ok' if p['ok'] else 'FAIL'} parity.json judged {worst:.1e} (captured "
                f"{pj['captured']}); vs CPU B={vc['batch']} action {vc['action_max_abs']:.1e} state "
                f"{vc['state_max_scaled']:.1e}")
        if "graphs_vs_eager" in p:
            line += f"; graphs vs eager {p['graphs_vs_eager']['action_max_abs']:.1e}"
        lines.append(line)
    if doc.get("latency"):
        lines.append(f"{'bundle':<7}{'B':>5} {'graphs':<7}{'p50 us':>10}{'p99 us':>10}  captured")
        for p in doc["latency"]:
            lines.append(f"{p['bundle']:<7}{p['batch']:>5} {str(p['cuda_graphs']):<7}{p['p50_us']:>10.1f}"
                         f"{p['p99_us']:>10.1f}  {p['captured']}")
    if doc.get("targets"):
        lines.append(f"targets (xLSTM): {json.dumps(doc['targets']['met'])}")
        lines.append(f"ratios: {json.dumps(doc['targets']['by_bundle'])}")
    lines += [f"skipped: {s}" for s in doc.get("skipped", [])]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    doc: dict = {"status": "running", "args": vars(args), "skipped": []}

    def finish(status: str, code: int, reason: str | None = None) -> int:
        doc.update(status=status, reason=reason, elapsed_s=round(time.monotonic() - start, 1))
        (out / "gpu_check.json").write_text(json.dumps(doc, indent=2) + "\n")
        text = summary(doc)
        (out / "gpu_check.txt").write_text(text + "\n")
        print(text, file=sys.stderr if code == 2 else sys.stdout)
        return code

    try:
        preflight(args)
    except CannotRun as err:
        return finish("cannot-run", 2, str(err))
    doc["environment"] = environment(args.device)
    if args.tests:
        doc["tests"] = run_tests(out, timeout=max(30.0, 150.0 - (time.monotonic() - start)))
    doc["parity"] = {name: check_parity(name, args) for name in args.bundles}
    doc["latency"] = []
    for name in args.bundles:
        for batch in args.batches:
            for graphs in ([True, False] if args.device == "cuda" else [False]):
                if time.monotonic() - start > DEADLINE_S:
                    doc["skipped"].append(f"{name} B={batch} graphs={graphs}: past the {DEADLINE_S} s deadline")
                    continue
                doc["latency"].append(bench_point(name, batch, graphs, args))
    if args.device != "cuda":
        doc["skipped"].append("CUDA graph variants: device is cpu")
    doc["targets"] = targets(doc["latency"])
    failed = [k for k, p in doc["parity"].items() if not p["ok"]]
    if args.tests and not doc["tests"]["ok"]:
        failed.append("tests")
    return finish("failed" if failed else "ok", 1 if failed else 0, f"failed: {', '.join(failed)}" if failed else None)


if __name__ == "__main__":
    sys.exit(main())
