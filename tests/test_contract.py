"""The step-graph contract (policyrt/contract.py) and the backend registry (policyrt.runtime.BACKENDS):
names, order, dtypes, shapes and defaults as every party reads them; every registered backend resolves."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE

import policyrt.runtime as runtime
from policyrt import contract
from policyrt.bundle import open_bundle
from policyrt.contract import StateTensor
from policyrt.runtime.backend import Backend

STATES = (StateTensor("rtg", (1,), init=7.0), StateTensor("t", (4,), dtype="int32"))


def test_state_names_follow_the_manifest_name():
    state = STATES[0]
    assert (state.input_name, state.output_name) == ("state.rtg", "state.rtg.next")
    assert (contract.state_name("block0.C"), contract.next_name("block0.C")) == ("state.block0.C", "state.block0.C.next")
    assert contract.is_state("state.block0.C.next") and contract.is_state("state.rtg")
    assert not contract.is_state("obs") and not contract.is_state("action")


def test_graph_io_is_in_graph_order_with_batch_free_shapes():
    io = contract.step_io(STATES)
    assert list(io) == ["obs", "prev_action", "reward", "target_return", "reset", "state.rtg", "state.t",
                        "action", "state.rtg.next", "state.t.next"]
    assert [n for n, t in io.items() if t.is_input] == contract.input_names(STATES)
    assert [n for n, t in io.items() if not t.is_input] == contract.output_names(STATES)
    assert {n: t.shape(obs_dim=3, act_dim=2) for n, t in io.items()} == {
        "obs": (3,), "prev_action": (2,), "reward": (), "target_return": (), "reset": (), "action": (2,),
        "state.rtg": (1,), "state.rtg.next": (1,), "state.t": (4,), "state.t.next": (4,)}
    assert {n: t.dtype.name for n, t in io.items()} == {
        "obs": "float32", "prev_action": "float32", "reward": "float32", "target_return": "float32", "reset": "bool",
        "action": "float32", "state.rtg": "float32", "state.rtg.next": "float32", "state.t": "int32",
        "state.t.next": "int32"}
    assert all(t.meaning for t in io.values())


def test_fresh_host_inputs_start_an_episode_in_every_slot_with_the_commanded_return():
    inputs = contract.host_input_buffers(obs_dim=3, act_dim=2, batch=4, target_return=5.5)
    assert tuple(inputs) == contract.INPUTS
    assert inputs["obs"].shape == (4, 3) and inputs["prev_action"].shape == (4, 2)
    assert inputs["reset"].dtype == np.bool_ and inputs["reset"].all()
    np.testing.assert_array_equal(inputs["target_return"], np.full(4, 5.5, np.float32))
    assert not inputs["obs"].any() and not inputs["reward"].any()


def test_initial_state_fills_each_tensor_with_its_init():
    state = contract.initial_state(STATES, batch=2)
    assert state["rtg"].shape == (2, 1) and (state["rtg"] == 7.0).all()
    assert state["t"].dtype == np.int32 and state["t"].shape == (2, 4) and not state["t"].any()


def test_a_state_row_round_trips_through_the_manifest_and_defaults_like_it():
    assert StateTensor.from_dict(STATES[1].to_dict()) == STATES[1]
    assert StateTensor.from_dict({"name": "m", "shape": [2]}) == StateTensor("m", (2,), "float32", 0.0)
    with pytest.raises(KeyError):
        StateTensor.from_dict({"name": "m"})


@pytest.mark.parametrize("bundle", [SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE], ids=["xlstm", "dt"])
def test_a_backend_binds_the_contract_of_its_bundle(bundle):
    pytest.importorskip("onnxruntime")
    b = open_bundle(bundle)
    backend = runtime.make_backend(b, "ort", 3)
    try:
        m = b.manifest
        io = contract.step_io(m.state)
        assert tuple(backend.inputs) == contract.INPUTS
        for name, array in backend.inputs.items():
            assert array.dtype == io[name].dtype and array.shape == (3, *io[name].shape(m.obs_dim, m.act_dim))
        assert backend.action.shape == (3, m.act_dim) and backend.action.dtype == np.float32
        assert set(backend.state()) == {s.name for s in m.state}
    finally:
        backend.close()


def test_every_registered_backend_resolves_to_its_class_without_loading_its_library():
    for name in runtime.BACKENDS:
        cls = runtime.backend_class(name)
        assert issubclass(cls, Backend) and cls.name == name
    for alias, name in runtime.ALIASES.items():
        assert runtime.resolve_backend(alias) == name and runtime.backend_class(alias) is runtime.backend_class(name)
    code = ("import sys, policyrt.runtime as r; [r.backend_class(n) for n in r.BACKENDS]; "
            "bad = [m for m in ('onnxruntime', 'torch', 'tensorrt', 'cuda', 'iree') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_registry_is_readable_without_numpy():
    """The CLI builds its --backend choices from the registry while it builds its parsers."""
    code = ("import sys, policyrt.runtime as r; r.backend_names(aliases=True); r.resolve_backend('trt'); "
            "sys.exit(1 if 'numpy' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_backend_names_are_what_backend_accepts():
    assert runtime.backend_names() == ("auto", "onnxruntime", "torch", "tensorrt", "torch-cuda", "iree")
    with_aliases = runtime.backend_names(aliases=True)
    assert with_aliases[:6] == runtime.backend_names() and {"trt", "ort", "torch_cuda"} <= set(with_aliases)
    assert runtime.resolve_backend("auto") == "onnxruntime"
    for name in with_aliases:
        assert runtime.resolve_backend(name) in runtime.BACKENDS
    with pytest.raises(ValueError, match="unknown backend 'onnx'; available: auto, onnxruntime, torch, tensorrt, torch-cuda, iree"):
        runtime.resolve_backend("onnx")
