"""Engine build decisions without TensorRT: generation per version, flags and profiles per precision,
layer pinning for weakly typed fp16, the timing-cache location, and the manifest record."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE

from policyrt.bundle import open_bundle
from policyrt.export.trt_build import (
    BuildError,
    default_timing_cache,
    derive_build_config,
    engine_io_table,
    generation,
    layers_to_pin,
    onnx_node_of,
    parse_version,
    profile_shapes,
    record_engine,
)
from policyrt.runtime.trt_buffers import EngineTensor, expected_io


@pytest.mark.parametrize("version, gen", [
    ("10.0.1.6", "trt10.3"), ("10.3.0.30", "trt10.3"), ("10.11.0", "trt10.3"),
    ("10.12.0.36", "trt10"), ("10.15.1", "trt10"), ("11.0.0", "trt11"), ("11.5.2.1", "trt11"),
])
def test_generation_follows_the_strong_typing_boundary(version, gen):
    assert generation(version) == gen


def test_tensorrt_8_is_refused():
    with pytest.raises(BuildError, match="needs 10.x"):
        generation("8.6.1")
    with pytest.raises(ValueError):
        parse_version("latest")


@pytest.fixture(scope="module")
def xlstm():
    return open_bundle(SHIPPED_BUNDLE).manifest


def test_jetpack6_fp16_uses_the_builder_flag_and_pins_the_rest_to_fp32(xlstm):
    c = derive_build_config("10.3.0.30", "fp16", xlstm)
    assert (c.strongly_typed, c.fp16_onnx, c.pin_fp32) == (False, False, True)
    assert c.set_flags == ("FP16", "PREFER_PRECISION_CONSTRAINTS")
    assert "TF32" in c.clear_flags


@pytest.mark.parametrize("version", ["10.12.0", "11.0.0"])
def test_strongly_typed_fp16_builds_from_the_fp16_graph_without_precision_flags(xlstm, version):
    c = derive_build_config(version, "fp16", xlstm)
    assert (c.strongly_typed, c.fp16_onnx, c.pin_fp32) == (True, True, False)
    assert c.set_flags == ()  # TensorRT 11 removed BuilderFlag.FP16; strong typing forbids precision hints


@pytest.mark.parametrize("version", ["10.3.0", "10.12.0", "11.0.0"])
def test_fp32_builds_set_nothing_and_clear_tf32(xlstm, version):
    c = derive_build_config(version, "fp32", xlstm)
    assert c.set_flags == () and c.clear_flags == ("TF32",) and not c.fp16_onnx and not c.pin_fp32


def test_profile_covers_every_input_including_each_state_tensor(xlstm):
    profile = profile_shapes(xlstm, max_batch=256, opt_batch=8)
    inputs = {name for name, (is_input, _, _) in expected_io(xlstm).items() if is_input}
    assert set(profile) == inputs
    assert profile["obs"] == ((1, 4), (8, 4), (256, 4))
    assert profile["reward"] == ((1,), (8,), (256,))
    c_shape = next(tuple(s["shape"]) for s in xlstm.raw["state"] if s["name"] == "block0.C")  # [heads, d, d]
    assert profile["state.block0.C"] == ((1, *c_shape), (8, *c_shape), (256, *c_shape))
    dt = open_bundle(SHIPPED_DT_BUNDLE).manifest
    assert profile_shapes(dt, 1)["state.timestep"] == ((1, 20),) * 3


@pytest.mark.parametrize("max_batch, opt", [(0, None), (4, 5), (4, 0)])
def test_impossible_profiles_are_refused(xlstm, max_batch, opt):
    with pytest.raises(ValueError):
        profile_shapes(xlstm, max_batch, opt)


def test_config_serializes_for_the_manifest(xlstm):
    doc = derive_build_config("10.3.0.30", "fp16", xlstm, max_batch=4).to_dict()
    json.dumps(doc)
    assert doc["profile"]["obs"] == {"min": [1, 4], "opt": [4, 4], "max": [4, 4]}
    assert doc["generation"] == "trt10.3" and doc["opt_batch"] == 4


@pytest.mark.parametrize("metadata, node", [
    ("[ONNX Layer: /blocks.0/MatMul]", "/blocks.0/MatMul"),
    ("[ONNX Layer: /h.0/attn/Softmax | Local Function: f]", "/h.0/attn/Softmax"),
    ("", None), ("shape tensor", None),
])
def test_layer_metadata_names_its_onnx_node(metadata, node):
    assert onnx_node_of(metadata) == node


def test_weak_fp16_pins_float_layers_outside_the_projections():
    layers = [
        ("[ONNX Layer: /blocks.0/MatMul]", ("FLOAT",)),  # projection: stays free to run fp16
        ("[ONNX Layer: /blocks.0/MatMul_1]", ("FLOAT",)),  # suffixed name of another node: pinned
        ("[ONNX Layer: /blocks.0/Exp]", ("FLOAT",)),  # gate math: pinned
        ("[ONNX Layer: /Cast_2]", ("INT32",)),  # integer layer: precision does not apply
        ("", ("FLOAT",)),  # weights constant, no node: left alone
    ]
    assert layers_to_pin(layers, ["/blocks.0/MatMul"]) == [1, 2]


def test_timing_cache_is_per_gpu_and_tensorrt(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    path = default_timing_cache("NVIDIA Jetson AGX Orin", "10.3.0.30", home=tmp_path)
    assert path == tmp_path / ".cache/policyrt/timing/nvidia-jetson-agx-orin-trt10.3.0.30.cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_timing_cache("Orin", "10.3", home=tmp_path).parent == tmp_path / "x/policyrt/timing"


def test_recording_an_engine_keeps_the_bundle_checksums(tmp_path, xlstm):
    bundle = shutil.copytree(SHIPPED_BUNDLE, tmp_path / "b.policy")
    before = json.loads((bundle / "manifest.json").read_text())
    (bundle / "engines").mkdir()
    (bundle / "engines" / "x-trt10.3.0.30-fp32.plan").write_bytes(b"plan")
    tensors = [EngineTensor(n, i, "BOOL" if n == "reset" else "FLOAT", (-1, *shape))
               for n, (i, _, shape) in expected_io(xlstm).items()]
    profile = profile_shapes(xlstm, 2)
    entry = {"file": "x-trt10.3.0.30-fp32.plan", "precision": "fp32", "io": engine_io_table(tensors, profile),
             "log": ["WARNING: something"]}
    record_engine(bundle, entry)
    record_engine(bundle, {**entry, "file": "x-trt10.3.0.30-fp16.plan", "precision": "fp16"})
    record_engine(bundle, {**entry, "log": []})  # a rebuild replaces its entry
    after = json.loads((bundle / "manifest.json").read_text())
    assert {k: v for k, v in after.items() if k != "engines"} == before
    assert set(after["engines"]) == {"x-trt10.3.0.30-fp32.plan", "x-trt10.3.0.30-fp16.plan"}
    assert after["engines"]["x-trt10.3.0.30-fp32.plan"]["log"] == []
    io = {row["name"]: row for row in after["engines"]["x-trt10.3.0.30-fp16.plan"]["io"]}
    c_shape = next(s["shape"] for s in xlstm.raw["state"] if s["name"] == "block0.C")
    assert io["state.block0.C"]["profile"]["max"] == [2, *c_shape] and io["action"]["mode"] == "output"
    assert "profile" not in io["action"]
    open_bundle(bundle)  # checksums still hold


@pytest.mark.parametrize("layers, why", [
    ([("", ("FLOAT",)), ("", ("FLOAT",))], "none has metadata"),  # a parser that tags nothing
    ([("[ONNX Layer: /blocks.0/MatMul]", ("FLOAT",)), ("[ONNX Layer: /Cast]", ("INT32",))], "2 carry"),
])
def test_pinning_that_pins_nothing_fails_the_build(layers, why):
    with pytest.raises(BuildError, match=f"fp32 pinning matched 0 of 2 TensorRT layers.*{why}.*--precision fp32"):
        layers_to_pin(layers, ["/blocks.0/MatMul"])
