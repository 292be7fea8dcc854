"""The torch-cuda backend: its buffer and ping-pong wiring on the CPU here, its CUDA graphs on a GPU.

Tests marked `gpu` skip where `torch.cuda.is_available()` is False; `benchmarks/gpu_check.py` runs
this file on a GPU machine. Everything else runs the same buffers, copies and state sets with
device="cpu", cuda_graphs=False.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("xlstm")

from conftest import SHIPPED_BUNDLE, SHIPPED_DT_BUNDLE, tiny_dt_policy, tiny_policy  # noqa: E402

import policyrt.runtime as runtime  # noqa: E402
from policyrt.bundle import open_bundle  # noqa: E402
from policyrt.runtime.graph_capture import Phase  # noqa: E402
from policyrt.runtime.session import Session  # noqa: E402
from policyrt.runtime.torch_backend import TorchBackend  # noqa: E402
from policyrt.runtime.torch_cuda_backend import TorchCudaBackend, pack_layout  # noqa: E402
from policyrt.runtime.verify import parity_inputs, replay, state_scale, verify_backend  # noqa: E402

SHIPPED = {"xlstm": SHIPPED_BUNDLE, "dt": SHIPPED_DT_BUNDLE}
GPU_TOLERANCE = 1e-4  # fp32 on a GPU against the CPU reference (issue 6)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def cpu_backend(path, batch: int) -> TorchCudaBackend:
    return TorchCudaBackend(open_bundle(path), batch, device="cpu", cuda_graphs=False)


def rollout(session: Session, steps: int, seed: int = 0, reset_every: int = 7):
    """Random observations and rewards, a different slot reset every `reset_every` ticks."""
    rng = np.random.default_rng(seed)
    b, obs_dim = session.batch_size, session.manifest.obs_dim
    actions = []
    session.reset()
    for t in range(steps):
        if t and t % reset_every == 0:
            session.reset(np.arange(b) == (t // reset_every) % b)
        obs = (0.3 * rng.standard_normal((b, obs_dim))).astype(np.float32)
        actions.append(session.step(obs, rng.uniform(0.0, 1.0, b).astype(np.float32)))
    return np.stack(actions), session.state()


def assert_states_close(got: dict, want: dict, tolerance: float):
    assert got.keys() == want.keys()
    for name in want:  # judged as verify judges states: relative to their own size
        err = np.abs(got[name].astype(np.float64) - want[name]).max() / state_scale(want[name])
        assert err <= tolerance, f"state {name}: {err:.2e}"


# -- CPU: the wiring -------------------------------------------------------------------------------------

def test_pack_layout_aligns_and_never_overlaps():
    arrays = {"a": np.zeros((3, 5), np.float32), "r": np.zeros(3, bool), "b": np.zeros(7, np.float32)}
    offsets, size = pack_layout(arrays)
    spans = sorted((offsets[k], offsets[k] + a.nbytes) for k, a in arrays.items())
    assert all(start % 16 == 0 for start, _ in spans)
    assert all(stop <= next_start for (_, stop), (next_start, _) in zip(spans, spans[1:]))
    assert size == spans[-1][1]


@pytest.mark.parametrize("kind", ["xlstm", "dt"])
def test_cpu_wiring_reproduces_parity_like_onnxruntime(kind):
    """With device='cpu' the backend's buffers and ping-pong pass verify, and agree with ONNX Runtime."""
    pytest.importorskip("onnxruntime")
    from policyrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    bundle = open_bundle(SHIPPED[kind])
    report = verify_backend(bundle, "torch-cuda", device="cpu", cuda_graphs=False)
    assert report.ok and report.backend == "torch-cuda", report.table()
    inputs = parity_inputs(bundle.parity())
    ours = replay(cpu_backend(SHIPPED[kind], inputs["obs"].shape[1]), inputs)
    ort = replay(OnnxRuntimeBackend(bundle, inputs["obs"].shape[1]), inputs)
    np.testing.assert_allclose(ours, ort, atol=1e-5)
    # The same torch fp32 step without the packed buffers and ping-pong: the wiring must change nothing.
    # (Not parity.json's reference: that is the float64 step, and a re-export can move it ~3e-6 from fp32.)
    plain = replay(TorchBackend(bundle, inputs["obs"].shape[1]), inputs)
    np.testing.assert_allclose(ours, plain, atol=1e-6)


def test_a_tick_reads_one_state_set_and_writes_the_other():
    """The TensorRT backend's invariant: the input set is never written, the output set is the new state."""
    backend = cpu_backend(SHIPPED_BUNDLE, 2)
    backend.inputs["obs"][:] = 0.1
    for _ in range(3):  # non-trivial state in both sets
        backend.run()
        backend.inputs["reset"][:] = False
    d = backend.graphs.direction
    before = [t.clone() for t in backend._sets[d]]
    pointers = [[t.data_ptr() for t in s] for s in backend._sets]
    backend.run()
    assert backend.graphs.direction == d ^ 1
    for old, same in zip(before, backend._sets[d]):
        assert torch.equal(old, same)
    new = backend.state()
    for spec, written in zip(backend.specs, backend._sets[d ^ 1]):
        np.testing.assert_array_equal(written.numpy(), new[spec.name])
    assert not all(np.array_equal(old.numpy(), new[s.name]) for s, old in zip(backend.specs, before))
    assert [[t.data_ptr() for t in s] for s in backend._sets] == pointers  # a graph would keep reading these


def test_inputs_are_views_of_the_packed_host_buffer():
    backend = cpu_backend(SHIPPED_DT_BUNDLE, 3)
    host = backend._host_bytes.numpy()
    assert all(np.shares_memory(v, host) for v in backend.inputs.values())
    assert backend.inputs["reset"].dtype == bool and backend.inputs["reset"].all()  # Backend's initial values
    np.testing.assert_array_equal(backend.inputs["target_return"], backend.bundle.manifest.target_return)
    assert not any(np.shares_memory(backend.action, v) for v in backend.inputs.values())
    assert backend.graphs.phases == [Phase.NEW, Phase.NEW]
    backend.run()
    backend.run()
    assert backend.graphs.phases == [Phase.FALLBACK, Phase.FALLBACK] and not backend.captured


@pytest.mark.parametrize("kind", ["xlstm", "dt"])
def test_matches_the_torch_reference_backend_with_per_slot_resets(kind):
    bundle = open_bundle(SHIPPED[kind])
    want_actions, want_state = rollout(Session(bundle, TorchBackend(bundle, 3)), 30)
    got_actions, got_state = rollout(Session(bundle, cpu_backend(SHIPPED[kind], 3)), 30)
    np.testing.assert_allclose(got_actions, want_actions, atol=1e-6)
    assert_states_close(got_state, want_state, 1e-6)


def test_reset_clears_a_state_poisoned_with_nan_in_place():
    obs = np.full((2, 4), 0.05, np.float32)
    fresh, poisoned = (Session(open_bundle(SHIPPED_BUNDLE), cpu_backend(SHIPPED_BUNDLE, 2)) for _ in range(2))
    for session in (fresh, poisoned):
        session.step(obs, 1.0)
    backend = poisoned.backend
    pointers = [[t.data_ptr() for t in s] for s in backend._sets]
    backend._sets[backend.graphs.direction][1][1] = float("nan")  # block0.C, slot 1
    assert np.isnan(poisoned.step(obs, 1.0)[1]).all()
    fresh.step(obs, 1.0)
    for session in (fresh, poisoned):
        session.reset(np.array([False, True]))
    after = poisoned.step(obs, 0.0)
    assert np.isfinite(after).all()
    np.testing.assert_allclose(after, fresh.step(obs, 0.0), atol=1e-6)
    assert [[t.data_ptr() for t in s] for s in backend._sets] == pointers  # reset writes in place


def test_refusals_name_the_problem():
    bundle = open_bundle(SHIPPED_DT_BUNDLE)
    with pytest.raises(ValueError, match="cuda_graphs=True needs device='cuda'"):
        TorchCudaBackend(bundle, 1, device="cpu")
    with pytest.raises(ValueError, match="not 'meta'"):
        TorchCudaBackend(bundle, 1, device="meta", cuda_graphs=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch.cuda.is_available"):
            TorchCudaBackend(bundle, 1)


def test_make_backend_knows_torch_cuda():
    backend = runtime.make_backend(open_bundle(SHIPPED_DT_BUNDLE), "torch-cuda", 2, device="cpu", cuda_graphs=False)
    assert isinstance(backend, TorchCudaBackend) and backend.action.shape == (2, 1)


@pytest.mark.parametrize("make_policy", [
    lambda: tiny_policy(slstm_at=(1,)),  # one mLSTM and one sLSTM block
    lambda: tiny_dt_policy(),
])
def test_step_forms_are_capturable_on_any_device(make_policy):
    """A CUDA graph cannot hold a host read (.item(), nonzero, data-dependent shapes) nor a CPU tensor
    the module forgot to register. On the meta device both fail, so a clean meta forward shows neither."""
    from policyrt.policies.kinds import make_step

    step = make_step(make_policy()).to("meta")
    c = step.policy.config
    b = 3
    args = [torch.zeros(b, c.obs_dim), torch.zeros(b, c.act_dim), torch.zeros(b), torch.zeros(b),
            torch.zeros(b, dtype=torch.bool), *step.initial_states(b)]
    with torch.no_grad():
        action, *states = step(*(a.to("meta") for a in args))
    assert action.shape == (b, c.act_dim) and action.device.type == "meta"
    assert [(s.shape, s.dtype) for s in states] == [(a.shape, a.dtype) for a in args[5:]]


def test_module_imports_no_torch():
    code = ("import sys, policyrt.runtime.torch_cuda_backend; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- GPU: graphs, parity against the CPU reference -------------------------------------------------------

@gpu
@pytest.mark.parametrize("kind", ["xlstm", "dt"])
def test_gpu_verify_passes_at_fp32_tolerance(kind):
    report = verify_backend(open_bundle(SHIPPED[kind]), "torch-cuda", tolerance=GPU_TOLERANCE)
    assert report.ok, report.table()


@gpu
@pytest.mark.parametrize("kind", ["xlstm", "dt"])
def test_gpu_graphs_are_captured_and_equal_eager(kind):
    bundle = open_bundle(SHIPPED[kind])
    graphed = TorchCudaBackend(bundle, 4)
    eager = TorchCudaBackend(bundle, 4, cuda_graphs=False)
    with_graphs, state_graphs = rollout(Session(bundle, graphed), 40)
    without, state_eager = rollout(Session(bundle, eager), 40)
    assert graphed.captured, graphed.graphs.fallback_reason
    assert graphed.graphs.fallback_reason is None and not eager.captured
    assert graphed._host_bytes.is_pinned() and graphed._action_host.is_pinned()
    np.testing.assert_allclose(with_graphs, without, atol=1e-5)  # the same kernels; a wiring bug is ~0.1 off
    assert_states_close(state_graphs, state_eager, 1e-5)


@gpu
@pytest.mark.parametrize("kind", ["xlstm", "dt"])
def test_gpu_matches_the_cpu_reference_at_batch_64(kind):
    bundle = open_bundle(SHIPPED[kind])
    want_actions, want_state = rollout(Session(bundle, TorchBackend(bundle, 64)), 50)
    got_actions, got_state = rollout(Session(bundle, TorchCudaBackend(bundle, 64)), 50)
    np.testing.assert_allclose(got_actions, want_actions, atol=GPU_TOLERANCE)
    assert_states_close(got_state, want_state, GPU_TOLERANCE)


@gpu
def test_gpu_reset_clears_nan_in_the_buffers_the_graph_reads():
    obs = np.full((2, 4), 0.05, np.float32)
    bundle = open_bundle(SHIPPED_BUNDLE)
    fresh, poisoned = (Session(bundle, TorchCudaBackend(bundle, 2)) for _ in range(2))
    for _ in range(4):  # past warm-up and capture in both directions
        for session in (fresh, poisoned):
            session.step(obs, 1.0)
    backend = poisoned.backend
    assert backend.captured
    backend._sets[backend.graphs.direction][1][1] = float("nan")
    assert np.isnan(poisoned.step(obs, 1.0)[1]).all()
    fresh.step(obs, 1.0)
    for session in (fresh, poisoned):
        session.reset(np.array([False, True]))
    after = poisoned.step(obs, 0.0)
    assert np.isfinite(after).all()
    np.testing.assert_allclose(after, fresh.step(obs, 0.0), atol=1e-6)
