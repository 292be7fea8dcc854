"""The xLSTM policy: sequence form == step form, and the backbone is the xlstm package's own stack."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_policy  # noqa: E402

from policyrt.policies.xlstm_step import XLSTMStep  # noqa: E402


def rollout_inputs(batch: int, steps: int, obs_dim: int, act_dim: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, steps, obs_dim, generator=g)
    prev_action = torch.randn(batch, steps, act_dim, generator=g)
    reward = torch.rand(batch, steps, generator=g)
    prev_action[:, 0] = 0.0
    reward[:, 0] = 0.0
    return obs, prev_action, reward


def step_rollout(step, obs, prev_action, reward, target: float):
    batch, steps = obs.shape[:2]
    states = step.initial_states(batch)
    actions = []
    with torch.no_grad():
        for t in range(steps):
            reset = torch.full((batch,), t == 0)
            action, *states = step(obs[:, t], prev_action[:, t], reward[:, t], torch.full((batch,), target), reset, *states)
            actions.append(action)
    return torch.stack(actions, 1), states


def test_sequence_form_equals_step_form_over_80_steps():
    policy = tiny_policy()
    obs, prev_action, reward = rollout_inputs(2, 80, 4, 2)
    target = policy.config.target_return
    # reward[:, t] is the previous tick's reward, so the return-to-go at t has already subtracted it.
    rtg = target - torch.cumsum(reward, dim=1)
    with torch.no_grad():
        sequence = policy(obs, prev_action, reward, rtg)
    stepped, _ = step_rollout(XLSTMStep(policy).eval(), obs, prev_action, reward, target)
    assert (stepped - sequence).abs().max().item() <= 1e-5


def test_checkpoint_backbone_loads_into_xlstm_block_stack_and_matches_its_step(tmp_path):
    from safetensors.torch import load_file
    from xlstm import xLSTMBlockStack

    from policyrt.policies.checkpoint import save_checkpoint

    policy = tiny_policy(seed=3)
    save_checkpoint(policy, tmp_path / "ckpt")
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    stack = xLSTMBlockStack(policy.config.stack_config()).eval()
    missing, unexpected = stack.load_state_dict(backbone, strict=True)
    assert not missing and not unexpected

    obs, prev_action, reward = rollout_inputs(2, 70, 4, 2, seed=5)
    target = policy.config.target_return
    ours, _ = step_rollout(XLSTMStep(policy).eval(), obs, prev_action, reward, target)
    state, theirs = None, []
    rtg = torch.full((2,), target)
    with torch.no_grad():
        for t in range(obs.shape[1]):
            rtg = rtg - reward[:, t]
            x = policy.tokens(obs[:, t], prev_action[:, t], reward[:, t], rtg).unsqueeze(1)
            y, state = stack.step(x, state)
            theirs.append(policy.action_from_features(y[:, 0]))
    assert (ours - torch.stack(theirs, 1)).abs().max().item() <= 1e-5


def test_reset_slot_restarts_only_that_slot():
    """Slot 1 resets at t=30: from there it must match a fresh rollout of the same inputs."""
    policy = tiny_policy(seed=4)
    step = XLSTMStep(policy).eval()
    obs, prev_action, reward = rollout_inputs(2, 60, 4, 2, seed=6)
    target = policy.config.target_return
    states = step.initial_states(2)
    outs = []
    with torch.no_grad():
        for t in range(60):
            reset = torch.tensor([t == 0, t in (0, 30)])
            action, *states = step(obs[:, t], prev_action[:, t], reward[:, t], torch.full((2,), target), reset, *states)
            outs.append(action)
    both = torch.stack(outs, 1)
    fresh, _ = step_rollout(step, obs[1:, 30:], prev_action[1:, 30:], reward[1:, 30:], target)
    undisturbed, _ = step_rollout(step, obs[:1], prev_action[:1], reward[:1], target)
    np.testing.assert_allclose(both[1, 30:].numpy(), fresh[0].numpy(), atol=1e-5)  # batch 2 vs batch 1 kernels round differently
    np.testing.assert_allclose(both[0].numpy(), undisturbed[0].numpy(), atol=1e-5)  # batch 2 vs batch 1 kernels round differently


def test_config_refuses_bounds_of_wrong_length():
    from policyrt.policies.xlstm_config import XLSTMPolicyConfig

    with pytest.raises(ValueError, match="act_dim"):
        XLSTMPolicyConfig(obs_dim=3, act_dim=2, action_low=(-1.0,), action_high=(1.0, 1.0))
