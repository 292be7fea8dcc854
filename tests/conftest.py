"""Shared fixtures: tiny xLSTM policies with random weights, exported into real bundles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_BUNDLE = ROOT / "bundles" / "inverted-pendulum-xlstm.policy"
SHIPPED_DT_BUNDLE = ROOT / "bundles" / "inverted-pendulum-dt.policy"


def tiny_policy(seed: int = 0, obs_dim: int = 4, act_dim: int = 2, **overrides):
    """A small xLSTM policy with perturbed gates, so recurrence really matters in the comparisons."""
    import torch

    from policyrt.policies.xlstm_config import XLSTMPolicyConfig
    from policyrt.policies.xlstm_policy import XLSTMPolicy

    torch.manual_seed(seed)
    settings = dict(
        obs_dim=obs_dim, act_dim=act_dim, action_low=(-2.0,) * act_dim, action_high=(1.0,) * act_dim,
        obs_mean=tuple(0.1 * i for i in range(obs_dim)), obs_std=tuple(1.0 + 0.5 * i for i in range(obs_dim)),
        embedding_dim=32, num_blocks=2, num_heads=2, context_length=96, target_return=50.0, return_scale=10.0,
    )
    settings.update(overrides)
    policy = XLSTMPolicy(XLSTMPolicyConfig(**settings))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "igate" in name or "fgate" in name or "learnable_skip" in name or "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
            elif "slstm_cell" in name or ("proj" in name and name.endswith(".bias")):
                # sLSTM recurrent kernels and projection biases start at zero: give them weight too.
                param.add_(0.3 * torch.randn_like(param))
    return policy.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from policyrt.policies.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "tiny-xlstm"
    return save_checkpoint(tiny_policy(), out, extra={"commands": ["(test fixture: random weights)"]})


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from policyrt.export.bundle_export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny.policy"
    return export_bundle(tiny_checkpoint, out, command="pytest", progress=lambda *_: None)


def tiny_dt_policy(seed: int = 0, obs_dim: int = 4, act_dim: int = 2, **overrides):
    import torch

    from policyrt.policies.dt_config import DTPolicyConfig
    from policyrt.policies.dt_policy import DTPolicy

    torch.manual_seed(seed)
    settings = dict(obs_dim=obs_dim, act_dim=act_dim, action_low=(-2.0,) * act_dim, action_high=(1.0,) * act_dim,
                    hidden_size=32, n_layer=2, n_head=2, context=5, max_ep_len=64, return_scale=10.0, target_return=50.0)
    settings.update(overrides)
    return DTPolicy(DTPolicyConfig(**settings)).eval()


@pytest.fixture(scope="session")
def tiny_dt_bundle(tmp_path_factory) -> Path:
    from policyrt.export.bundle_export import export_policy

    policy = tiny_dt_policy()
    doc = {"kind": "dt", "config": policy.config.to_dict(), "commands": ["(test fixture: random weights)"]}
    out = tmp_path_factory.mktemp("bundles") / "tiny-dt.policy"
    return export_policy(policy, doc, Path("random"), out, progress=lambda *_: None)
