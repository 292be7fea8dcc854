"""Engine names, engine lookup and the verify stamps that gate loading an engine — no TensorRT needed."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import SHIPPED_BUNDLE

from policyrt.bundle import open_bundle
from policyrt.runtime.stamps import stamp_path
from policyrt.runtime.trt_engines import (
    EngineNotVerified,
    check_stamp,
    engine_filename,
    find_engine,
    sanitize,
    write_stamp,
)

GPU, TRT = "NVIDIA Jetson AGX Orin", "10.3.0.30"


@pytest.mark.parametrize("gpu, expected", [
    ("NVIDIA Jetson AGX Orin", "nvidia-jetson-agx-orin"),
    ("Orin (nvgpu)", "orin-nvgpu"),
    ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
    ("../../etc/passwd", "etc-passwd"),
    ("", "unknown"),
])
def test_gpu_names_become_safe_file_name_parts(gpu, expected):
    assert sanitize(gpu) == expected


def test_engine_file_name_carries_gpu_full_trt_version_and_precision():
    assert engine_filename(GPU, TRT, "fp16") == "nvidia-jetson-agx-orin-trt10.3.0.30-fp16.plan"
    assert engine_filename("NVIDIA H200", "11.0.0", "fp32") == "nvidia-h200-trt11.0.0-fp32.plan"
    with pytest.raises(ValueError, match="precision"):
        engine_filename(GPU, TRT, "int8")


@pytest.fixture
def bundle_copy(tmp_path):
    return shutil.copytree(SHIPPED_BUNDLE, tmp_path / "b.policy")


def make_engine(bundle, precision="fp32", payload=b"plan bytes"):
    path = bundle / "engines" / engine_filename(GPU, TRT, precision)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(payload)
    return path


def test_find_engine_prefers_fp32_and_names_what_is_missing(bundle_copy):
    with pytest.raises(FileNotFoundError) as err:
        find_engine(bundle_copy, GPU, TRT)
    assert "policyrt build-engine" in str(err.value) and "present: none" in str(err.value)
    fp16 = make_engine(bundle_copy, "fp16")
    assert find_engine(bundle_copy, GPU, TRT) == fp16
    fp32 = make_engine(bundle_copy, "fp32")
    assert find_engine(bundle_copy, GPU, TRT) == fp32
    assert find_engine(bundle_copy, GPU, TRT, "fp16") == fp16
    with pytest.raises(FileNotFoundError, match="nvidia-jetson-agx-orin-trt10.3.0.30-fp16.plan"):
        find_engine(bundle_copy, "Orin", TRT)


def test_engines_and_stamps_do_not_break_the_bundle_checksums(bundle_copy):
    engine = make_engine(bundle_copy)
    write_stamp(engine, GPU, TRT, "fp32", 1e-4, {"action": 3e-6})
    open_bundle(bundle_copy)  # would raise if engines/ were covered by `files`


def test_stamp_round_trip(bundle_copy):
    engine = make_engine(bundle_copy)
    path = write_stamp(engine, GPU, TRT, "fp32", 1e-4, {"action": 3e-6}, now=0)
    assert path == stamp_path(engine) and path.name.endswith(".plan.verified.json")
    stamp = check_stamp(engine, GPU, TRT)
    assert stamp.errors == {"action": 3e-6} and stamp.verified_at == "1970-01-01T00:00:00Z"
    assert json.loads(path.read_text())["engine"] == engine.name


def test_missing_stamp_is_refused_with_the_command_to_run(bundle_copy):
    engine = make_engine(bundle_copy)
    with pytest.raises(EngineNotVerified, match=r"has not passed verify.*policyrt verify .* --backend tensorrt"):
        check_stamp(engine, GPU, TRT)


def test_rebuilt_engine_invalidates_its_stamp(bundle_copy):
    engine = make_engine(bundle_copy, payload=b"first build")
    write_stamp(engine, GPU, TRT, "fp32", 1e-4, {})
    engine.write_bytes(b"second build")
    with pytest.raises(EngineNotVerified, match="changed since it passed verify"):
        check_stamp(engine, GPU, TRT)


@pytest.mark.parametrize("gpu, trt, what", [("Orin", TRT, "gpu"), (GPU, "10.3.0.26", "tensorrt")])
def test_stamp_from_another_board_or_tensorrt_is_refused(bundle_copy, gpu, trt, what):
    engine = make_engine(bundle_copy)
    write_stamp(engine, GPU, TRT, "fp32", 1e-4, {})
    with pytest.raises(EngineNotVerified, match=f"verified with {what}"):
        check_stamp(engine, gpu, trt)


def test_garbled_stamp_is_refused(bundle_copy):
    engine = make_engine(bundle_copy)
    stamp_path(engine).write_text('{"engine": 1}')
    with pytest.raises(EngineNotVerified, match="unreadable verify stamp"):
        check_stamp(engine, GPU, TRT)
