"""The Decision Transformer in step form: the K-timestep context window lives in the state.

Each tick the graph writes `prev_action` into the previous timestep's slot, subtracts the scaled
reward from the return-to-go, shifts the window left (Slice + Concat), appends the new step with a
zero action placeholder, masks the unfilled left part and recomputes the whole window. A sliding KV
cache would be cheaper but is not the same function once the window is full (the oldest timestep
drops out of every later token's attention), so exact parity needs the recompute. Only the last
layer is narrowed: it computes just the query of the newest state token, the one the action is read at.
"""

from __future__ import annotations

import torch
from torch import nn

from policyrt.contract import StateTensor

from .dt_policy import MASK_VALUE, DTPolicy
from .step_contract import initial_states


class DTStep(nn.Module):
    """forward(obs, prev_action, reward, target_return, reset, *states) -> (action, *next_states)."""

    def __init__(self, policy: DTPolicy):
        super().__init__()
        self.policy = policy
        c = policy.config
        k = c.context
        self.context = k
        self.specs = [
            StateTensor("rtg", (k,)),  # scaled return-to-go per timestep
            StateTensor("obs", (k, c.obs_dim)),  # normalized observations
            StateTensor("action", (k, c.act_dim)),
            StateTensor("timestep", (k,), dtype="int32"),
            StateTensor("fill", (1,), dtype="int32"),  # how many window slots hold real timesteps
        ]
        self.register_buffer("positions", torch.arange(k, dtype=torch.int32), persistent=False)
        n = 3 * k
        self.register_buffer("causal", torch.ones(n, n, dtype=torch.bool).tril(), persistent=False)

    def initial_states(self, batch: int):
        return initial_states(self.specs, batch)

    def forward(self, obs, prev_action, reward, target_return, reset, rtg, obs_window, action, timestep, fill):
        c = self.policy.config
        k = self.context
        keep = torch.logical_not(reset)
        keep_f = keep.to(obs.dtype)
        keep_i = keep.to(torch.int32)
        scale = 1.0 / c.return_scale
        # Same arithmetic as the reference evaluation: rtg_t = rtg_{t-1} - r_{t-1} / scale.
        new_rtg = torch.where(reset, target_return * scale, rtg[:, -1] - reward * scale)
        new_t = torch.where(reset, torch.zeros_like(timestep[:, -1]), torch.clamp(timestep[:, -1] + 1, max=c.max_ep_len - 1))
        rtg = torch.cat([rtg[:, 1:] * keep_f.unsqueeze(-1), new_rtg.unsqueeze(-1)], dim=1)
        obs_window = torch.cat(
            [obs_window[:, 1:] * keep_f[:, None, None], self.policy.normalize_obs(obs).unsqueeze(1)], dim=1
        )
        timestep = torch.cat([timestep[:, 1:] * keep_i.unsqueeze(-1), new_t.unsqueeze(-1)], dim=1)
        placeholder = torch.zeros_like(prev_action).unsqueeze(1)
        if k == 1:  # the window is the new step alone. expand_as reads state.action's shape, which keeps that
            action = placeholder.expand_as(action)  # input in the graph: the exporter drops unused inputs
        else:  # the applied previous action lands in the slot before the new one
            previous = (prev_action * keep_f.unsqueeze(-1)).unsqueeze(1)
            action = torch.cat([action[:, 1:-1] * keep_f[:, None, None], previous, placeholder], dim=1)
        fill = torch.where(reset.unsqueeze(-1), torch.ones_like(fill), torch.clamp(fill + 1, max=k))
        valid = self.positions >= (k - fill)  # [B, K], left-padded
        x = self.policy.stacked_tokens(obs_window, action, rtg.unsqueeze(-1), timestep)
        token_valid = valid.repeat_interleave(3, dim=1)
        mask = torch.where(self.causal & token_valid[:, None, None, :], 0.0, MASK_VALUE)
        blocks = self.policy.encoder.h
        for block in blocks[:-1]:
            x = block(x, mask)
        newest_state = slice(3 * k - 2, 3 * k - 1)
        x = blocks[-1](x, mask[:, :, newest_state], queries=newest_state)
        x = self.policy.encoder.ln_f(x[:, 0])
        return (self.policy.action_from_hidden(x), rtg, obs_window, action, timestep, fill)
