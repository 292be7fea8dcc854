"""The TensorRT backend's gate and wiring, on a machine without TensorRT: imports stay lazy, the missing
library is named, and `verify --backend tensorrt` stamps an engine only when it passes.

The engine itself cannot run here; `verify` is exercised with a stand-in backend that has the TensorRT
backend's identity (engine file, GPU, TensorRT version, precision) and ONNX Runtime's arithmetic. That
tests policyrt's stamp logic, not TensorRT. benchmarks/gpu_check.py covers the real thing on a GPU."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHIPPED_BUNDLE

import policyrt
import policyrt.runtime
from policyrt.arrays import decode_array, encode_array
from policyrt.bundle import open_bundle, write_manifest
from policyrt.runtime.stamps import stamp_path
from policyrt.runtime.trt_engines import EngineNotVerified, check_stamp, engine_filename
from policyrt.runtime.verify import TENSORRT_FP16_TOLERANCE, TENSORRT_FP32_TOLERANCE, verify_backend

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
GPU, TRT = "NVIDIA Jetson AGX Orin", "10.3.0.30"


def test_board_side_modules_import_no_gpu_library():
    code = (
        "import sys, policyrt.cli, policyrt.runtime, policyrt.runtime.tensorrt_backend, policyrt.runtime.trt_buffers, "
        "policyrt.runtime.trt_engines, policyrt.commands.lint, policyrt.commands.build_engine; "
        "bad = [m for m in ('torch', 'tensorrt', 'cuda', 'onnx', 'mujoco') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_backends_are_registered_by_name():
    assert {"tensorrt", "torch-cuda"} <= set(policyrt.runtime.BACKENDS)
    assert policyrt.runtime.ALIASES["trt"] == "tensorrt"


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_missing_tensorrt_names_jetpack():
    with pytest.raises(ImportError, match="JetPack"):
        policyrt.load(SHIPPED_BUNDLE, backend="tensorrt")


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
@pytest.mark.parametrize("words", [["build-engine"], ["verify", "--backend", "tensorrt"]])
def test_gpu_commands_fail_cleanly_without_tensorrt(words, capsys):
    from policyrt.cli import main

    assert main([words[0], str(SHIPPED_BUNDLE), *words[1:]]) == 1
    assert "JetPack" in capsys.readouterr().err


def test_precision_is_refused_for_cpu_backends(capsys):
    from policyrt.cli import main

    assert main(["verify", str(SHIPPED_BUNDLE), "--precision", "fp16"]) == 1
    assert "--backend tensorrt only" in capsys.readouterr().err


@pytest.fixture
def bundle_with_engine(tmp_path):
    bundle = shutil.copytree(SHIPPED_BUNDLE, tmp_path / "b.policy")
    (bundle / "engines").mkdir()
    for precision in ("fp32", "fp16"):
        (bundle / "engines" / engine_filename(GPU, TRT, precision)).write_bytes(f"{precision} plan".encode())
    return bundle


@pytest.fixture
def stand_in(monkeypatch):
    """make_backend('tensorrt') -> ONNX Runtime arithmetic under the TensorRT backend's identity."""
    pytest.importorskip("onnxruntime")
    from policyrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    seen = {}

    class EngineStandIn(OnnxRuntimeBackend):
        name = "tensorrt"

        def __init__(self, bundle, batch_size, precision=None, require_verified=True):
            super().__init__(bundle, batch_size)
            seen["require_verified"] = require_verified
            self.precision = precision or "fp32"
            self.gpu_name, self.tensorrt_version = GPU, TRT
            self.engine_path = bundle.path / "engines" / engine_filename(GPU, TRT, self.precision)

    real = policyrt.runtime.make_backend

    def make_backend(bundle, name, batch_size, **options):
        if name == "tensorrt":
            return EngineStandIn(bundle, batch_size, **options)
        return real(bundle, name, batch_size, **options)

    monkeypatch.setattr(policyrt.runtime, "make_backend", make_backend)
    return seen


@pytest.mark.parametrize("precision, tolerance", [("fp32", TENSORRT_FP32_TOLERANCE), ("fp16", TENSORRT_FP16_TOLERANCE)])
def test_a_pass_writes_a_stamp_the_backend_then_accepts(bundle_with_engine, stand_in, precision, tolerance):
    engine = bundle_with_engine / "engines" / engine_filename(GPU, TRT, precision)
    with pytest.raises(EngineNotVerified):
        check_stamp(engine, GPU, TRT)
    report = verify_backend(open_bundle(bundle_with_engine), "trt", precision=precision)
    assert stand_in["require_verified"] is False  # verify is what makes an engine usable
    assert report.ok and report.tolerance == tolerance
    assert report.stamp == str(stamp_path(engine)) and "stamp written" in report.table()
    stamp = check_stamp(engine, GPU, TRT)
    assert stamp.precision == precision and stamp.tolerance == tolerance
    assert stamp.errors["action"] == report.outputs[0].max_judged
    other = "fp16" if precision == "fp32" else "fp32"
    assert not stamp_path(engine.with_name(engine_filename(GPU, TRT, other))).exists()
    engine.write_bytes(b"rebuilt")  # a new engine must pass verify again
    with pytest.raises(EngineNotVerified, match="changed since it passed verify"):
        check_stamp(engine, GPU, TRT)


def test_a_failing_engine_gets_no_stamp(bundle_with_engine, stand_in):
    parity = json.loads((bundle_with_engine / "parity.json").read_text())
    actions = decode_array(parity["reference"]["action"]).copy()
    actions[40, 0, 0] += 1e-2
    parity["reference"]["action"] = encode_array(actions)
    (bundle_with_engine / "parity.json").write_text(json.dumps(parity))
    doc = json.loads((bundle_with_engine / "manifest.json").read_text())
    write_manifest(bundle_with_engine, {k: v for k, v in doc.items() if k != "files"})
    report = verify_backend(open_bundle(bundle_with_engine), "tensorrt")
    assert not report.ok and report.stamp is None and report.outputs[0].first_step_over == 40
    assert not any(p.name.endswith(".verified.json") for p in (bundle_with_engine / "engines").iterdir())


def test_cli_verify_tensorrt_exit_code_and_json(bundle_with_engine, stand_in, capsys):
    from policyrt.cli import main

    assert main(["verify", str(bundle_with_engine), "--backend", "tensorrt", "--precision", "fp16", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["tolerance"] == TENSORRT_FP16_TOLERANCE and doc["stamp"].endswith("fp16.plan.verified.json")
    assert np.isfinite(doc["outputs"]["action"]["max_abs"])


def test_latency_script_runs_its_timing_path_on_the_cpu_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    import importlib.util as util

    from conftest import ROOT

    spec = util.spec_from_file_location("trt_latency", ROOT / "benchmarks" / "trt_latency.py")
    script = util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "latency.json"
    assert script.main([str(SHIPPED_BUNDLE), "--backend", "onnxruntime", "--batch", "1", "2", "--steps", "5",
                        "--warmup", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["batch"], r["cuda_graphs"]) for r in records] == [(1, False), (2, False)]
    assert all(0 < r["p50_us"] <= r["p99_us"] for r in records)
