"""Session on ONNX Runtime: shapes, bad input, independent slots, and no torch on import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import policyrt  # noqa: E402


def test_single_and_batched_obs(tiny_bundle):
    with policyrt.load(tiny_bundle) as session:
        action = session.step(np.zeros(4, np.float32))
        assert action.shape == (2,) and action.dtype == np.float32
        assert session.step(np.zeros((1, 4), np.float32)).shape == (1, 2)


@pytest.mark.parametrize(
    "obs, message",
    [
        (np.zeros(5, np.float32), r"obs has shape \(5,\), expected \(4,\) or \(1, 4\)"),
        (np.zeros((2, 4), np.float32), r"obs has shape \(2, 4\), expected \(4,\) or \(1, 4\)"),
        (np.zeros(4, np.int64), "obs must be a float array, got dtype int64"),
    ],
)
def test_wrong_obs_is_a_value_error_naming_expected_and_got(tiny_bundle, obs, message):
    with policyrt.load(tiny_bundle) as session:
        with pytest.raises(ValueError, match=message):
            session.step(obs)


def test_slots_reset_independently_and_match_single_slot_sessions(tiny_bundle):
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((40, 2, 4)).astype(np.float32)
    reward = rng.uniform(size=(40, 2)).astype(np.float32)
    batched = policyrt.load(tiny_bundle, batch_size=2)
    singles = [policyrt.load(tiny_bundle) for _ in range(2)]
    for t in range(40):
        if t == 25:
            batched.reset(mask=np.array([False, True]))
            singles[1].reset()
        both = batched.step(obs[t], reward[t])
        for slot, single in enumerate(singles):
            alone = single.step(obs[t, slot], float(reward[t, slot]))
            np.testing.assert_allclose(both[slot], alone, atol=1e-5)


def test_prev_action_defaults_to_the_last_returned_action(tiny_bundle):
    obs = np.linspace(-1, 1, 4).astype(np.float32)
    implicit, explicit = policyrt.load(tiny_bundle), policyrt.load(tiny_bundle)
    last = np.zeros(2, np.float32)
    for _ in range(10):
        a = implicit.step(obs, 0.5)
        b = explicit.step(obs, 0.5, prev_action=last)
        np.testing.assert_array_equal(a, b)
        last = b


def test_torch_and_onnxruntime_backends_agree(tiny_bundle):
    rng = np.random.default_rng(1)
    ort_session = policyrt.load(tiny_bundle, backend="onnxruntime")
    torch_session = policyrt.load(tiny_bundle, backend="torch")
    for _ in range(50):
        obs = rng.standard_normal(4).astype(np.float32)
        np.testing.assert_allclose(ort_session.step(obs, 1.0), torch_session.step(obs, 1.0), atol=1e-5)


def test_unknown_backend_is_named(tiny_bundle):
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        policyrt.load(tiny_bundle, backend="tpu")


def test_board_side_imports_pull_no_torch_mujoco_or_gymnasium():
    code = (
        "import sys, policyrt, policyrt.runtime, policyrt.runtime.onnxruntime_backend, policyrt.controllers.lockstep, "
        "policyrt.protocol, policyrt.cli; "
        "bad = [m for m in ('torch', 'mujoco', 'gymnasium') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_reset_clears_a_state_poisoned_with_nan(tiny_bundle, backend):
    """A NaN inside the state survives the graph's multiply-by-zero reset; Session.reset must clear it."""
    obs = np.linspace(-1, 1, 4).astype(np.float32)
    fresh = policyrt.load(tiny_bundle, backend=backend, batch_size=2)
    poisoned = policyrt.load(tiny_bundle, backend=backend, batch_size=2)
    for session in (fresh, poisoned):
        session.step(np.stack([obs, obs]), 1.0)
    if backend == "onnxruntime":
        current = poisoned.backend._states[poisoned.backend._current]
        current["block0.C"][1] = np.nan
    else:
        import torch

        with torch.inference_mode():
            poisoned.backend._state[1][1] = float("nan")  # block0.C, slot 1
    assert np.isnan(poisoned.step(np.stack([obs, obs]), 1.0)[1]).all()
    fresh.step(np.stack([obs, obs]), 1.0)
    for session in (fresh, poisoned):
        session.reset(mask=np.array([False, True]))
    after_fresh = fresh.step(np.stack([obs, obs]), 0.0)
    after_poisoned = poisoned.step(np.stack([obs, obs]), 0.0)
    assert np.isfinite(after_poisoned).all()
    np.testing.assert_allclose(after_poisoned[1], after_fresh[1], atol=1e-6)


def test_a_resetting_row_ignores_the_prev_action_and_reward_it_is_given(tiny_bundle):
    """The controller feeds the action each robot got last (the safety chain's `applied`) as
    prev_action, also to a row that resets: the step graph must treat that row as a fresh start."""
    obs = np.linspace(-1, 1, 4).astype(np.float32)
    fresh, used = policyrt.load(tiny_bundle, batch_size=2), policyrt.load(tiny_bundle, batch_size=2)
    for _ in range(5):
        used.step(np.stack([obs, -obs]), [1.0, 2.0], prev_action=np.full((2, 2), 0.7, np.float32))
    used.reset(mask=np.array([True, False]))
    fresh.reset(mask=np.array([True, False]))
    given = used.step(np.stack([obs, obs]), [3.0, 0.0], prev_action=np.full((2, 2), 0.9, np.float32))
    zeros = fresh.step(np.stack([obs, obs]), [0.0, 0.0], prev_action=np.zeros((2, 2), np.float32))
    np.testing.assert_allclose(given[0], zeros[0], atol=1e-6)


def test_step_into_out_returns_that_buffer(tiny_bundle):
    into, plain = policyrt.load(tiny_bundle, batch_size=2), policyrt.load(tiny_bundle, batch_size=2)
    out = np.zeros((2, 2), np.float32)
    assert into.step(np.ones((2, 4), np.float32), 0.5, out=out) is out
    np.testing.assert_array_equal(out, plain.step(np.ones((2, 4), np.float32), 0.5))
