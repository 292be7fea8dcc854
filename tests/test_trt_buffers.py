"""TensorRT buffer planning without TensorRT: alignment, name/dtype checks, ping-pong bindings, slot resets."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE

from policyrt import contract
from policyrt.bundle import Manifest, open_bundle
from policyrt.runtime.trt_buffers import (
    ALIGNMENT,
    EngineTensor,
    PlanError,
    check_engine_io,
    expected_io,
    host_views,
    init_rows,
    plan_buffers,
    reset_copies,
)

NP_TO_TRT = {"float32": "FLOAT", "bool": "BOOL", "int32": "INT32", "float16": "HALF", "int64": "INT64"}


def small_manifest() -> Manifest:
    return Manifest.from_dict({
        "schema_version": 1, "name": "t", "policy": {"kind": "xlstm"}, "obs_dim": 3, "act_dim": 2,
        "action_low": [-1, -1], "action_high": [1, 1], "inputs": list(contract.INPUTS), "target_return": 5.0,
        "state": [{"name": "rtg", "shape": [1], "dtype": "float32", "init": 7.0},
                  {"name": "C", "shape": [2, 3], "dtype": "float32", "init": 0.0},
                  {"name": "t", "shape": [4], "dtype": "int32", "init": 0.0}],
    })


def engine_io(manifest: Manifest, batch: int = -1) -> list[EngineTensor]:
    """What an engine built from the bundle's graph reports: the contract's tensors with a dynamic batch."""
    return [EngineTensor(name, is_input, NP_TO_TRT[dtype.name], (batch, *shape))
            for name, (is_input, dtype, shape) in expected_io(manifest).items()]


@pytest.mark.parametrize("bundle", [SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE], ids=["xlstm", "dt"])
@pytest.mark.parametrize("batch", [1, 3, 256])
def test_every_buffer_is_aligned_and_disjoint(bundle, batch):
    manifest = open_bundle(bundle).manifest
    plan = plan_buffers(manifest, batch, engine_io(manifest))
    slots = [*plan.inputs, plan.action, *(s for p in plan.states for s in p.sets)]
    assert all(s.offset % ALIGNMENT == 0 for s in slots)
    ordered = sorted(slots, key=lambda s: s.offset)
    for a, b in zip(ordered, ordered[1:]):
        assert a.offset + a.nbytes <= b.offset, f"{a.name} overlaps {b.name}"
    assert ordered[-1].offset + ordered[-1].nbytes <= plan.device_nbytes
    # Host block = inputs region + action, same offsets as on the device (one copy each way per tick).
    assert plan.inputs_nbytes <= plan.action.offset
    assert plan.host_nbytes == plan.action.offset + ((plan.action.nbytes + 255) // 256) * 256
    assert all(s.offset + s.nbytes <= plan.inputs_nbytes for s in plan.inputs)


def test_sizes_follow_the_manifest():
    plan = plan_buffers(small_manifest(), 5)
    sizes = {s.name: (s.shape, s.dtype.name, s.nbytes) for s in plan.inputs}
    assert sizes["obs"] == ((5, 3), "float32", 60)
    assert sizes["reset"] == ((5,), "bool", 5)
    c = next(p for p in plan.states if p.name == "C").sets[0]
    assert (c.shape, c.nbytes, c.row_nbytes) == ((5, 2, 3), 120, 24)
    t = next(p for p in plan.states if p.name == "t").sets[1]
    assert t.dtype == np.int32 and t.nbytes == 80


def test_directions_swap_state_sets_and_never_alias_an_input_with_an_output():
    plan = plan_buffers(small_manifest(), 2)
    d0, d1 = plan.bindings(0), plan.bindings(1)
    for pair in plan.states:
        assert d0[pair.input_name] == d1[pair.output_name] == pair.sets[0].offset
        assert d0[pair.output_name] == d1[pair.input_name] == pair.sets[1].offset
        for table in (d0, d1):
            assert table[pair.input_name] != table[pair.output_name]
    for name in ("obs", "prev_action", "reward", "target_return", "reset", "action"):
        assert d0[name] == d1[name]
    outputs = {n for n in d0 if n == "action" or n.endswith(".next")}
    for table in (d0, d1):
        assert not {table[n] for n in outputs} & {table[n] for n in table if n not in outputs}
    with pytest.raises(ValueError):
        plan.bindings(2)


def test_engine_io_mismatches_are_all_named():
    manifest = small_manifest()
    tensors = [t for t in engine_io(manifest) if t.name != "state.C.next"]
    tensors = [EngineTensor(t.name, t.is_input, "INT64", t.shape) if t.name == "state.t" else t for t in tensors]
    tensors = [EngineTensor(t.name, t.is_input, t.dtype, (-1, 4)) if t.name == "obs" else t for t in tensors]
    tensors.append(EngineTensor("extra", False, "FLOAT", (-1,)))
    with pytest.raises(PlanError) as err:
        check_engine_io(manifest, tensors, 1)
    message = str(err.value)
    assert "missing output 'state.C.next'" in message
    assert "'state.t' is int64, the contract says int32" in message
    assert "'obs' has shape [-1, 4], expected [B, 3]" in message
    assert "unexpected tensor 'extra'" in message


def test_engine_with_a_fixed_batch_other_than_the_sessions_is_refused():
    manifest = small_manifest()
    check_engine_io(manifest, engine_io(manifest, batch=4), 4)
    with pytest.raises(PlanError, match="fixed batch of 4, this session wants 2"):
        check_engine_io(manifest, engine_io(manifest, batch=4), 2)


def test_unmappable_dtype_is_refused():
    manifest = small_manifest()
    tensors = [EngineTensor(t.name, t.is_input, "BF16", t.shape) if t.name == "obs" else t for t in engine_io(manifest)]
    with pytest.raises(PlanError, match="'obs' has dtype BF16, which no host buffer can hold"):
        check_engine_io(manifest, tensors, 1)


def apply(copies, device: np.ndarray, init_block: np.ndarray) -> None:
    """Execute reset copies on byte arrays in order, as the stream would."""
    for c in copies:
        if c.kind == "zero":
            device[c.dst:c.dst + c.nbytes] = 0
        elif c.kind == "h2d":
            device[c.dst:c.dst + c.nbytes] = init_block[c.src:c.src + c.nbytes]
        else:
            assert c.src + c.nbytes <= c.dst or c.dst + c.nbytes <= c.src, "d2d copy overlaps itself"
            device[c.dst:c.dst + c.nbytes] = device[c.src:c.src + c.nbytes]


@pytest.mark.parametrize("mask", [[1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1], [0] * 7])
@pytest.mark.parametrize("current_set", [0, 1])
def test_reset_copies_write_init_values_into_masked_slots_only(mask, current_set):
    manifest = small_manifest()
    plan = plan_buffers(manifest, 7)
    mask = np.array(mask, bool)
    device = np.frombuffer(np.random.default_rng(0).bytes(plan.device_nbytes), np.uint8).copy()
    before = device.copy()
    offsets, size, fills = init_rows(plan)
    init_block = np.zeros(size, np.uint8)
    for offset, dtype, count, value in fills:
        init_block[offset:offset + count * dtype.itemsize] = np.full(count, value, dtype).view(np.uint8)
    apply(reset_copies(plan, mask, current_set), device, init_block)
    for pair in plan.states:
        for set_index, slot in enumerate(pair.sets):
            got = device[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).reshape(slot.shape)
            old = before[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).reshape(slot.shape)
            touched = mask if set_index == current_set else np.zeros_like(mask)
            assert (got[touched] == pair.init).all(), pair.name
            np.testing.assert_array_equal(got[~touched], old[~touched])
    outside = np.ones(plan.device_nbytes, bool)
    for s in [*plan.inputs, plan.action, *(s for p in plan.states for s in p.sets)]:
        outside[s.offset:s.offset + s.nbytes] = False
    np.testing.assert_array_equal(device[outside], before[outside])


def test_a_long_run_of_slots_costs_logarithmically_many_copies():
    plan = plan_buffers(small_manifest(), 256)
    copies = reset_copies(plan, np.ones(256, bool), 0)
    rtg = [c for c in copies if c.kind in ("h2d", "d2d")]
    assert len(rtg) == 1 + 8  # one row from the host, then 1 -> 2 -> ... -> 256 on the device
    assert sum(c.kind == "zero" for c in copies) == 2  # C and t: one memset each


def test_host_views_write_the_bytes_the_device_copy_reads():
    manifest = small_manifest()
    plan = plan_buffers(manifest, 2)
    block = np.zeros(plan.host_nbytes, np.uint8)
    inputs, action = host_views(block, plan)
    assert set(inputs) == {"obs", "prev_action", "reward", "target_return", "reset"}
    inputs["obs"][1, 2] = 3.5
    inputs["reset"][0] = True
    obs, reset = plan.inputs[0], plan.inputs[4]
    assert block[obs.offset:obs.offset + obs.nbytes].view(np.float32)[5] == 3.5
    assert block[reset.offset] == 1
    device = np.zeros(plan.device_nbytes, np.uint8)
    device[:plan.inputs_nbytes] = block[:plan.inputs_nbytes]  # the tick's one host->device copy
    assert device[obs.offset:obs.offset + obs.nbytes].view(np.float32)[5] == 3.5
    device[plan.action.offset:plan.action.offset + plan.action.nbytes] = np.arange(4, dtype=np.float32).view(np.uint8)
    a = plan.action  # ... and the one device->host copy of the action
    block[a.offset:a.offset + a.nbytes] = device[a.offset:a.offset + a.nbytes]
    np.testing.assert_array_equal(action, [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="host block must be uint8"):
        host_views(np.zeros(3, np.uint8), plan)
