"""The original model behind a bundle, stepped one timestep at a time, for `policyrt compare`.

Every reference has `reset(target_return)` and `act(obs, reward, prev_action) -> action` (batch 1,
numpy in and out), so the comparison loop does not care what the original is:
- checkpoint: a policyrt checkpoint through its PyTorch step form;
- hf-dt / dt-original: the Hugging Face `DecisionTransformerModel`'s own forward over the left-padded
  window, exactly as the reference evaluation code calls it;
- xlstm-stack: the xlstm package's own `xLSTMBlockStack.step` (see xlstm_import).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REFERENCE_KINDS = ("checkpoint", "hf-dt", "dt-original", "xlstm-stack")


class StepModuleReference:
    """A policyrt step module (the PyTorch form the bundle was exported from)."""

    def __init__(self, step):
        import torch

        self.torch, self.step = torch, step
        self.state = step.initial_states(1)
        self.reset_next, self.target = True, 0.0

    def reset(self, target_return: float) -> None:
        self.reset_next, self.target = True, target_return

    def act(self, obs, reward, prev_action) -> np.ndarray:
        t = self.torch
        with t.no_grad():
            action, *self.state = self.step(
                t.from_numpy(np.asarray(obs, np.float32)[None]),
                t.from_numpy(np.asarray(prev_action, np.float32)[None]),
                t.tensor([reward], dtype=t.float32),
                t.tensor([self.target], dtype=t.float32),
                t.tensor([self.reset_next]),
                *self.state,
            )
        self.reset_next = False
        return action[0].numpy()


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


def make_reference(kind: str, source: Path, manifest):
    """The original model of `manifest`'s policy, loaded from `source` as `kind` says."""
    from .checkpoint import load_checkpoint
    from .kinds import make_step

    source = Path(source)
    if kind == "checkpoint":
        policy, _ = load_checkpoint(source)
        return StepModuleReference(make_step(policy))
    config = manifest.raw["policy"]["config"]
    if kind in ("hf-dt", "dt-original"):
        from .dt_config import DTPolicyConfig
        from .dt_reference import ReferenceDT

        cfg = DTPolicyConfig.from_dict(config)
        if kind == "hf-dt":
            from transformers import DecisionTransformerModel

            model = DecisionTransformerModel.from_pretrained(str(source)).eval()
        else:
            from .dt_import import _load_weights

            weights = {k.replace("transformer.", "encoder.", 1): v for k, v in _load_weights(source).items()}
            model = hf_model_from_dt_config(cfg, weights)
            model.encoder.wpe.weight.data.zero_()  # the original architecture has no position embedding
        mean = np.asarray(cfg.obs_mean, np.float32) if cfg.obs_mean else None
        std = np.asarray(cfg.obs_std, np.float32) if cfg.obs_std else None
        bounds = (cfg.action_low, cfg.action_high) if cfg.action_tanh else (None, None)
        return ReferenceDT(model, cfg.obs_dim, cfg.act_dim, cfg.context, cfg.return_scale, cfg.max_ep_len, mean, std, *bounds)
    if kind == "xlstm-stack":
        from . import xlstm_import

        if not hasattr(xlstm_import, "package_reference"):
            raise ValueError("compare --from xlstm-stack is not available in this version")
        return xlstm_import.package_reference(source, manifest)
    raise ValueError(f"unknown reference kind {kind!r}; available: {', '.join(REFERENCE_KINDS)}")
