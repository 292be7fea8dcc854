"""The reference Decision Transformer evaluation loop, written the way the original code does it.

It keeps the whole episode history, takes the last K timesteps, left-pads them with zeros, masks the
padding, calls the model's own forward and reads the last action; return-to-go starts at
target/scale and drops by reward/scale each step; timesteps are clamped to max_ep_len - 1 (the
original would raise past it). `policyrt compare` and the tests check bundles against it.
"""

from __future__ import annotations

import numpy as np
import torch


class ReferenceDT:
    def __init__(self, forward, obs_dim, act_dim, context, return_scale, max_ep_len, obs_mean=None, obs_std=None,
                 action_low=None, action_high=None):
        self.forward, self.k = forward, context
        # The model's tanh output mapped to the deployed action bounds, as the bundle's head does.
        low = -np.ones(act_dim, np.float32) if action_low is None else np.asarray(action_low, np.float32)
        high = np.ones(act_dim, np.float32) if action_high is None else np.asarray(action_high, np.float32)
        self.center, self.half = (high + low) / 2, (high - low) / 2
        self.obs_dim, self.act_dim, self.scale, self.max_t = obs_dim, act_dim, return_scale, max_ep_len - 1
        self.mean = np.zeros(obs_dim, np.float32) if obs_mean is None else obs_mean
        self.std = np.ones(obs_dim, np.float32) if obs_std is None else obs_std

    def reset(self, target_return: float):
        self.states, self.actions, self.rtg, self.timesteps = [], [], [np.float32(target_return / self.scale)], []

    def act(self, obs, reward, prev_action) -> np.ndarray:
        if self.states:  # not the first step: book the previous tick
            self.actions[-1] = prev_action
            self.rtg.append(np.float32(self.rtg[-1] - np.float32(reward / self.scale)))
        self.states.append(((obs - self.mean) / self.std).astype(np.float32))
        self.actions.append(np.zeros(self.act_dim, np.float32))
        self.timesteps.append(min(len(self.timesteps), self.max_t))
        n = min(len(self.states), self.k)
        pad = self.k - n

        def window(items, shape, dtype):
            recent = np.asarray(items[-n:], dtype).reshape(n, *shape)
            return np.concatenate([np.zeros((pad, *shape), dtype), recent])[None]

        with torch.no_grad():
            out = self.forward(
                states=torch.from_numpy(window(self.states, (self.obs_dim,), np.float32)),
                actions=torch.from_numpy(window(self.actions, (self.act_dim,), np.float32)),
                rewards=None,
                returns_to_go=torch.from_numpy(window(self.rtg, (1,), np.float32)),
                timesteps=torch.from_numpy(window(self.timesteps, (), np.int64)),
                attention_mask=torch.from_numpy(np.concatenate([np.zeros(pad), np.ones(n)]).astype(np.int64)[None]),
            )
        raw = out[1][0, -1].numpy() if isinstance(out, tuple) else out.action_preds[0, -1].numpy()
        return self.center + self.half * raw
