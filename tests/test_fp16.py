"""The fp16 pass for strongly typed TensorRT builds: what it converts, what it keeps fp32, and the action
bound it reaches on the shipped bundles, measured on ONNX Runtime CPU (fp16 MatMul/Gemm kernels)."""

from __future__ import annotations

import json
import shutil

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE  # noqa: E402

from policyrt.bundle import open_bundle, write_manifest  # noqa: E402
from policyrt.export.fp16 import convert_to_fp16, fp16_nodes  # noqa: E402
from policyrt.runtime.verify import TENSORRT_FP16_TOLERANCE, verify_backend  # noqa: E402

FLOAT, FLOAT16 = 1, 10


@pytest.fixture(scope="module", params=[SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE], ids=["xlstm", "dt"])
def converted(request):
    bundle = open_bundle(request.param)
    model = onnx.load(str(bundle.onnx_path))
    return bundle, model, convert_to_fp16(model)


def io_types(model):
    return {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}


def test_io_and_state_types_are_unchanged(converted):
    _, model, half = converted
    assert io_types(half) == io_types(model)
    assert all(t != FLOAT16 for t in io_types(half).values())


def test_only_weight_projections_compute_in_fp16(converted):
    _, model, half = converted
    chosen = set(fp16_nodes(model))
    assert chosen, "nothing converted"
    initializers = {i.name: i for i in half.graph.initializer}
    for node in half.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            weights = [i for i in node.input if i in initializers]
            if node.name in chosen:
                assert weights and all(initializers[w].data_type == FLOAT16 for w in weights), node.name
            else:  # activation x activation (attention scores, C @ q) and gate projections stay fp32
                assert all(initializers[w].data_type == FLOAT for w in weights), node.name
    # Every fp16 node is wrapped: its result is cast back to fp32 before anything else reads it.
    casts_back = {n.input[0] for n in half.graph.node if n.op_type == "Cast" and n.attribute[0].i == FLOAT}
    assert {f"{name}/out_fp16" for name in chosen} <= casts_back


def test_xlstm_gate_projections_and_state_products_stay_fp32():
    model = onnx.load(str(open_bundle(SHIPPED_BUNDLE).onnx_path))
    chosen = set(fp16_nodes(model))
    for block in range(open_bundle(SHIPPED_BUNDLE).manifest.raw["policy"]["config"]["num_blocks"]):
        assert f"/blocks.{block}/MatMul_3" not in chosen  # gate pre-activations -> exp / softplus
        assert f"/blocks.{block}/MatMul_5" not in chosen  # reads the state C
        assert f"/blocks.{block}/MatMul" in chosen  # proj_up


def test_no_layer_norm_or_gate_op_changes_type(converted):
    _, model, half = converted
    ops = lambda m, kind: [n for n in m.graph.node if n.op_type == kind]  # noqa: E731
    for kind in ("LayerNormalization", "Exp", "Softplus", "Max", "Sigmoid", "Softmax"):
        assert [n.input for n in ops(half, kind)] == [n.input for n in ops(model, kind)], kind


def test_fp16_graph_stays_within_the_documented_bound(converted, tmp_path):
    """The bound verify applies to fp16 engines; also proves fp16 really ran (fails the fp32 tolerance)."""
    bundle, _, half = converted
    copy = shutil.copytree(bundle.path, tmp_path / "half.policy")
    onnx.save(half, str(copy / "policy.onnx"))
    doc = json.loads((copy / "manifest.json").read_text())
    write_manifest(copy, {k: v for k, v in doc.items() if k != "files"})
    report = verify_backend(open_bundle(copy), "onnxruntime", tolerance=TENSORRT_FP16_TOLERANCE)
    assert report.ok, report.table()
    action = report.outputs[0]
    assert 1e-5 < action.max_abs < TENSORRT_FP16_TOLERANCE / 3, action
