"""Continuous-control xLSTM policy: one token per timestep through an `xlstm.xLSTMBlockStack`.

token_t = embed(normalized obs_t, normalized prev_action, reward_{t-1}, return-to-go_t / scale); the
action head is tanh scaled to the action bounds (or, for imported linear heads, `action_squash="none"`,
the head's output as it is). This module is the parallel (training) form; the step
form that is exported lives in `xlstm_step.py` and reads the same parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from .policy_buffers import register_config_buffers
from .xlstm_config import XLSTMPolicyConfig


class XLSTMPolicy(nn.Module):
    def __init__(self, config: XLSTMPolicyConfig):
        super().__init__()
        from xlstm import xLSTMBlockStack

        self.config = config
        self.embed = nn.Linear(config.token_dim, config.embedding_dim)
        # Keeps the xlstm package's own parameter names under `backbone.` so a checkpoint loads back
        # into a plain xLSTMBlockStack.
        self.backbone = xLSTMBlockStack(config.stack_config())
        self.head = nn.Linear(config.embedding_dim, config.act_dim)
        register_config_buffers(self, config)

    def tokens(self, obs, prev_action, reward, return_to_go) -> torch.Tensor:
        """Embed [..., *] inputs into [..., E]; shared verbatim with the step form."""
        parts = [
            (obs - self.obs_mean) / self.obs_std,
            (prev_action - self.act_center) / self.act_half_range,
            reward.unsqueeze(-1),
            (return_to_go / self.config.return_scale).unsqueeze(-1),
        ]
        return self.embed(torch.cat(parts, dim=-1))

    def action_from_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.config.action_squash == "none":
            return self.head(features)
        return self.act_center + self.act_half_range * torch.tanh(self.head(features))

    def forward(self, obs, prev_action, reward, return_to_go) -> torch.Tensor:
        """obs [B,T,obs_dim], prev_action [B,T,act_dim], reward/return_to_go [B,T] -> action [B,T,act_dim]."""
        return self.action_from_features(self.backbone(self.tokens(obs, prev_action, reward, return_to_go)))
