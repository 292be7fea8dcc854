"""benchmarks/gpu_check.py without a GPU: its refusal, its CPU path end to end, and its target arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")
pytest.importorskip("xlstm")
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run_script(*args, out):
    env = {**os.environ, "OUT": str(out)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_without_cuda_it_exits_2_and_says_why(tmp_path):
    done = run_script(out=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA device" in done.stderr and "torch.cuda.is_available() == False" in done.stderr
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["status"] == "cannot-run" and "no CUDA device" in doc["reason"]
    assert "latency" not in doc  # nothing was measured


def test_cpu_path_writes_parity_latency_and_summary(tmp_path):
    done = run_script("--device", "cpu", "--bundles", "dt", "--batches", "1", "3", "--steps", "20",
                      "--warmup", "2", "--parity-batch", "3", out=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["status"] == "ok" and doc["environment"]["device"] == "cpu" and "tests" not in doc
    parity = doc["parity"]["dt"]
    assert parity["ok"] and parity["parity_json"]["ok"] and parity["parity_json"]["tolerance"] == 1e-4
    assert parity["vs_cpu"]["batch"] == 3 and parity["vs_cpu"]["action_max_abs"] <= 1e-6
    assert [(p["batch"], p["cuda_graphs"], p["samples"]) for p in doc["latency"]] == [(1, False, 20), (3, False, 20)]
    assert all(p["p99_us"] >= p["p50_us"] > 0 for p in doc["latency"])
    assert "CUDA graph variants: device is cpu" in doc["skipped"]
    assert "parity dt: ok" in (tmp_path / "gpu_check.txt").read_text()


def test_targets_are_computed_within_the_run():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    latency = [{"bundle": "xlstm", "batch": 1, "cuda_graphs": True, "p50_us": 100.0},
               {"bundle": "xlstm", "batch": 1, "cuda_graphs": False, "p50_us": 250.0},
               {"bundle": "xlstm", "batch": 256, "cuda_graphs": True, "p50_us": 350.0}]
    found = gpu_check.targets(latency)
    assert found["by_bundle"]["xlstm"] == {"p50_b1_graphs_us": 100.0, "b256_over_b1": 3.5, "graphs_speedup_b1": 2.5}
    assert found["met"] == {"xlstm_p50_b1_le_150us": True, "xlstm_b256_le_3x_b1": False, "xlstm_graphs_ge_3x": False}
    assert gpu_check.targets([])["met"]["xlstm_p50_b1_le_150us"] is None
