"""Export: the step graph keeps the contract and the lean rules, parity is recorded, failures write nothing."""

from __future__ import annotations

import json
import re

import pytest

onnx = pytest.importorskip("onnx")

from policyrt.export.graph_checks import FORBIDDEN_OPS, check_step_graph  # noqa: E402


def test_step_graph_has_the_contract_io_and_no_forbidden_ops(tiny_bundle):
    from policyrt.bundle import open_bundle

    model = onnx.load(str(tiny_bundle / "policy.onnx"))
    states = open_bundle(tiny_bundle).manifest.state
    names = [s.name for s in states]
    report = check_step_graph(model, states)
    assert report.ok, report.problems
    assert not set(report.op_histogram) & set(FORBIDDEN_OPS)
    inputs = [i.name for i in model.graph.input]
    assert inputs[:5] == ["obs", "prev_action", "reward", "target_return", "reset"]
    assert inputs[5:] == [f"state.{n}" for n in names]
    assert [o.name for o in model.graph.output] == ["action", *[f"state.{n}.next" for n in names]]
    batch_dims = {i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input}
    assert batch_dims == {"batch"}  # dynamic batch everywhere


def test_graph_check_flags_scatter_and_int64_io():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ScatterND", ["obs", "idx", "upd"], ["action"])],
        "bad",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 1])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 2])],
    )
    report = check_step_graph(helper.make_model(graph), [])
    text = "\n".join(report.problems)
    assert "ScatterND" in text and "int64" in text and "missing input 'reset'" in text


def test_graph_check_holds_state_tensors_to_the_state_table():
    from onnx import TensorProto, helper

    from policyrt import contract
    from policyrt.contract import StateTensor

    states = [StateTensor("t", (4,), dtype="int32")]
    onnx_types = {"float32": TensorProto.FLOAT, "bool": TensorProto.BOOL, "int32": TensorProto.INT32}
    io = contract.step_io(states)
    values = {n: helper.make_tensor_value_info(n, onnx_types[t.dtype.name], ["batch", *t.shape(3, 2)])
              for n, t in io.items()}
    values["state.t.next"] = helper.make_tensor_value_info("state.t.next", TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node("Identity", ["prev_action"], ["action"]),
             helper.make_node("Cast", ["state.t"], ["state.t.next"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [values[n] for n in contract.input_names(states)],
                              [values[n] for n in contract.output_names(states)])
    problems = check_step_graph(helper.make_model(graph), states).problems
    assert problems == ["output 'state.t.next' is float32, contract says int32"]
    assert check_step_graph(helper.make_model(graph), [StateTensor("t", (4,))]).problems == [
        "input 'state.t' is int32, contract says float32"]


def test_parity_json_records_a_rollout_with_mid_episode_resets(tiny_bundle):
    from policyrt.arrays import decode_array

    parity = json.loads((tiny_bundle / "parity.json").read_text())
    reset = decode_array(parity["inputs"]["reset"])
    assert reset.shape[0] >= 200 and reset[0].all()
    assert reset[1:].any(axis=0).all()  # every slot resets again mid-rollout
    result = parity["results"]["onnxruntime"]
    assert result["action_max_abs"] <= 1e-5 and result["state_max_abs"] <= 1e-5


def test_failed_parity_writes_nothing(tiny_checkpoint, tmp_path):
    from policyrt.export.bundle_export import ExportError, export_bundle

    out = tmp_path / "never.policy"
    with pytest.raises(ExportError, match="nothing was written"):
        export_bundle(tiny_checkpoint, out, tolerance=-1.0, progress=lambda *_: None)  # no error is <= -1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind either


def test_manifest_records_provenance_and_state_table(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    prov = manifest["provenance"]
    assert prov["commands"][-1] == "pytest"
    assert len(prov["checkpoint_sha256"]) == 64
    assert prov["versions"]["onnxruntime"]
    by_name = {s["name"]: s for s in manifest["state"]}
    assert by_name["rtg"]["init"] == 50.0
    assert by_name["block0.C"]["shape"] == [2, 32, 32]  # heads, head_dim, head_dim (inner 64)
    assert set(manifest["files"]) >= {"policy.onnx", "parity.json", "reference/model.safetensors"}


def test_refusal_names_only_what_is_over_and_the_tolerance_flag(tiny_checkpoint, tmp_path, monkeypatch):
    """ONNX Runtime drifting in one state tensor only: the actions passed, so no 'first over at step None'."""
    import policyrt.runtime
    from policyrt.export.bundle_export import ExportError, export_bundle

    real = policyrt.runtime.make_backend

    def drifting(bundle, name, batch_size, **options):
        backend = real(bundle, name, batch_size, **options)
        state = backend.state
        backend.state = lambda: {k: v + (1.0 if k == "block0.n" else 0.0) for k, v in state().items()}
        return backend

    monkeypatch.setattr(policyrt.runtime, "make_backend", drifting)
    with pytest.raises(ExportError) as refused:
        export_bundle(tiny_checkpoint, tmp_path / "never.policy", progress=lambda *_: None)
    message = str(refused.value)
    assert "state block0.n" in message and "--tolerance" in message
    assert re.search(r"\): state block0\.n [0-9.e+-]+ \(scaled by its size\)\. ", message)  # the only one named
    assert "None" not in message


def test_the_default_gate_is_the_larger_of_1e5_and_the_fp32_steps_own_noise():
    from policyrt.export.parity import NOISE_CAP, export_bound

    assert export_bound(None, {"action": 1e-7, "state": 2e-7}) == 1e-5  # a well-conditioned model
    assert export_bound(None, {"action": 6e-6, "state": 5e-6}) == pytest.approx(2.4e-5)  # 4 x its fp32 noise
    assert export_bound(None, {"action": 1e-3, "state": 0.0}) == NOISE_CAP  # too ill-conditioned: capped
    assert export_bound(3e-6, {"action": 6e-6, "state": 0.0}) == 3e-6  # an explicit --tolerance is applied as given
