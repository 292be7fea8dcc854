"""The reference Decision Transformer evaluation loop, written the way the original code does it.

It keeps the whole episode history, takes the last K timesteps, left-pads them with zeros, masks the
padding, calls the model's own forward and reads the last action; return-to-go starts at
target/scale and drops by reward/scale each step; timesteps are clamped to max_ep_len - 1 (the
original would raise past it). `policyrt compare` and the tests check bundles against it; the two
functions at the end are its `--from hf-dt` / `--from dt-original` references (kinds.REFERENCES).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .kinds import manifest_config


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


def hf_model_from_dt_config(config, weights: dict):
    """A transformers DecisionTransformerModel with `config`'s architecture and the given HF-layout weights."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    model = DecisionTransformerModel(
        DecisionTransformerConfig(
            state_dim=config.obs_dim, act_dim=config.act_dim, hidden_size=config.hidden_size,
            n_layer=config.n_layer, n_head=config.n_head, n_inner=config.n_inner,
            activation_function=config.activation_function, max_ep_len=config.max_ep_len,
            n_positions=config.n_positions, layer_norm_epsilon=config.layer_norm_epsilon,
            scale_attn_weights=config.scale_attn_weights,
            scale_attn_by_inverse_layer_idx=config.scale_attn_by_inverse_layer_idx, action_tanh=config.action_tanh,
        )
    ).eval()
    model.load_state_dict(weights, strict=False)
    return model


def hf_dt_reference(source: Path, manifest) -> ReferenceDT:
    """A `DecisionTransformerModel.save_pretrained` directory, run by transformers itself."""
    from transformers import DecisionTransformerModel

    return _evaluation_loop(DecisionTransformerModel.from_pretrained(str(source)).eval(), manifest_config(manifest))


def dt_original_reference(source: Path, manifest) -> ReferenceDT:
    """An original-repository state dict, in transformers' model (whose position table it lacks: zeros)."""
    from .dt_import import load_weights

    weights = {k.replace("transformer.", "encoder.", 1): v for k, v in load_weights(source).items()}
    cfg = manifest_config(manifest)
    model = hf_model_from_dt_config(cfg, weights)
    model.encoder.wpe.weight.data.zero_()  # the original architecture has no position embedding
    return _evaluation_loop(model, cfg)


def _evaluation_loop(model, cfg) -> ReferenceDT:
    """`model` in the reference loop, with the normalization, bounds and scales the bundle records
    (`cfg`: its manifest's DT policy config)."""
    mean = np.asarray(cfg.obs_mean, np.float32) if cfg.obs_mean else None
    std = np.asarray(cfg.obs_std, np.float32) if cfg.obs_std else None
    bounds = (cfg.action_low, cfg.action_high) if cfg.action_tanh else (None, None)
    return ReferenceDT(model, cfg.obs_dim, cfg.act_dim, cfg.context, cfg.return_scale, cfg.max_ep_len, mean, std, *bounds)
