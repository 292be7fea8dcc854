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


@pytest.mark.parametrize("stack, seeds, steps, reset_at", [("mlstm", (4, 6), 60, 30), ("mlstm+slstm(ffn)", (11, 12), 50, 20)])
def test_reset_slot_restarts_only_that_slot(stack, seeds, steps, reset_at):
    """Slot 1 resets at `reset_at`: from there it must match a fresh rollout of the same inputs."""
    policy = tiny_policy(seed=seeds[0], **({} if stack == "mlstm" else _mixed()))
    step = XLSTMStep(policy).eval()
    obs, prev_action, reward = rollout_inputs(2, steps, 4, 2, seed=seeds[1])
    target = policy.config.target_return
    states = step.initial_states(2)
    outs = []
    with torch.no_grad():
        for t in range(steps):
            reset = torch.tensor([t == 0, t in (0, reset_at)])
            action, *states = step(obs[:, t], prev_action[:, t], reward[:, t], torch.full((2,), target), reset, *states)
            outs.append(action)
    both = torch.stack(outs, 1)
    fresh, _ = step_rollout(step, obs[1:, reset_at:], prev_action[1:, reset_at:], reward[1:, reset_at:], target)
    undisturbed, _ = step_rollout(step, obs[:1], prev_action[:1], reward[:1], target)
    np.testing.assert_allclose(both[1, reset_at:].numpy(), fresh[0].numpy(), atol=1e-5)  # batch 2 vs batch 1 kernels round differently
    np.testing.assert_allclose(both[0].numpy(), undisturbed[0].numpy(), atol=1e-5)


def test_config_refuses_bounds_of_wrong_length():
    from policyrt.policies.xlstm_config import XLSTMPolicyConfig

    with pytest.raises(ValueError, match="act_dim"):
        XLSTMPolicyConfig(obs_dim=3, act_dim=2, action_low=(-1.0,), action_high=(1.0, 1.0))


# --- sLSTM blocks (and any mix of block configs) -----------------------------------------------------

def _mixed(**overrides):
    from policyrt.policies.xlstm_config import FeedForwardSpec, SLSTMBlockSpec

    settings = dict(
        num_blocks=3, slstm_at=(1,), num_heads=2, conv1d_kernel_size=3, proj_factor=1.5,
        slstm_block=SLSTMBlockSpec(num_heads=4, conv1d_kernel_size=2, feedforward=FeedForwardSpec(proj_factor=1.3)),
    )
    settings.update(overrides)
    return settings


MIXED_STACKS = {
    "mlstm+slstm(ffn)": _mixed(),
    "slstm-only, no conv, no group-norm weight": dict(
        num_blocks=2, slstm_at=(0, 1), slstm_block=None, num_heads=1, conv1d_kernel_size=0,
    ),
    "slstm first, biased mlstm, no post norm, linear head": _mixed(
        slstm_at=(0,), proj_bias=True, add_post_blocks_norm=False, action_squash="none",
    ),
}


@pytest.mark.parametrize("name", MIXED_STACKS)
def test_sequence_form_equals_step_form_with_slstm_blocks(name):
    policy = tiny_policy(seed=7, **MIXED_STACKS[name])
    obs, prev_action, reward = rollout_inputs(2, 80, 4, 2, seed=8)
    target = policy.config.target_return
    rtg = target - torch.cumsum(reward, dim=1)
    with torch.no_grad():
        sequence = policy(obs, prev_action, reward, rtg)
    stepped, _ = step_rollout(XLSTMStep(policy).eval(), obs, prev_action, reward, target)
    assert (stepped - sequence).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", MIXED_STACKS)
def test_step_form_matches_the_packages_step_with_slstm_blocks(name):
    """Our step against `xLSTMBlockStack.step` on the same weights, states included (h, c, n, m, conv)."""
    policy = tiny_policy(seed=9, **MIXED_STACKS[name])
    stack = policy.backbone
    step = XLSTMStep(policy).eval()
    obs, prev_action, reward = rollout_inputs(1, 60, 4, 2, seed=10)
    ours, states = step_rollout(step, obs, prev_action, reward, policy.config.target_return)
    state, theirs = None, []
    rtg = torch.full((1,), policy.config.target_return)
    with torch.no_grad():
        for t in range(obs.shape[1]):
            rtg = rtg - reward[:, t]
            x = policy.tokens(obs[:, t], prev_action[:, t], reward[:, t], rtg).unsqueeze(1)
            y, state = stack.step(x, state)
            theirs.append(policy.action_from_features(y[:, 0]))
    assert (ours - torch.stack(theirs, 1)).abs().max().item() <= 1e-5
    named = dict(zip((s.name for s in step.specs), states))

    def close(ours, theirs):  # c and n accumulate (n ~ 1/(1-f)): fp32 rounding grows with them
        return ((ours - theirs).abs() / theirs.abs().clamp(min=1.0)).max().item() <= 1e-5

    for i in policy.config.slstm_at:
        hcnm = state[f"block_{i}"]["slstm_state"]  # [4, B, E]
        for k, key in enumerate("hcnm"):
            assert close(named[f"block{i}.{key}"], hcnm[k]), key
        if f"block{i}.conv" in named:
            assert close(named[f"block{i}.conv"], state[f"block_{i}"]["conv_state"][0])


def test_mlstm_block_with_a_feedforward_part_matches_the_packages_block_step():
    """The package's stack never gives mLSTM blocks an ffn, but its xLSTMBlock allows one: the step covers it."""
    from xlstm import FeedForwardConfig, mLSTMLayerConfig
    from xlstm.blocks.xlstm_block import xLSTMBlock, xLSTMBlockConfig

    from policyrt.policies.xlstm_step import MLSTMBlockStep

    torch.manual_seed(13)
    layer = mLSTMLayerConfig(embedding_dim=32, num_heads=2, context_length=16)
    layer.__post_init__()
    block = xLSTMBlock(xLSTMBlockConfig(mlstm=layer, feedforward=FeedForwardConfig(act_fn="relu^2"), _num_blocks=1, _block_idx=0)).eval()
    with torch.no_grad():
        for name, param in block.named_parameters():
            if "norm" in name or "gate" in name or "skip" in name:  # as tiny_policy: make the gates matter
                param.add_(0.3 * torch.randn_like(param))
    ours = MLSTMBlockStep(block, 0).eval()
    states = [torch.zeros(1, *s.shape) for s in ours.state_specs()]
    kwargs = {}
    keep = torch.ones(1)
    with torch.no_grad():
        for _ in range(20):
            x = torch.randn(1, 32)
            y_ours, states = ours(x, states, keep)
            y_theirs, kwargs = block.step(x.unsqueeze(1), **kwargs)
            assert (y_ours - y_theirs[:, 0]).abs().max().item() <= 1e-5


def test_policy_config_round_trips_block_specs():
    from policyrt.policies.xlstm_config import XLSTMPolicyConfig

    config = tiny_policy(**_mixed()).config
    again = XLSTMPolicyConfig.from_dict(config.to_dict())
    assert again == config
    with pytest.raises(ValueError, match="slstm_block.feedforward.*gate_kind"):
        data = config.to_dict()
        data["slstm_block"]["feedforward"]["gate_kind"] = 1
        XLSTMPolicyConfig.from_dict(data)
