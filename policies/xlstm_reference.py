"""The original model of an `--from xlstm-stack` bundle, for `policyrt compare --from xlstm-stack` and
the tests: the source directory (docs/BUNDLE.md, "xlstm-stack") run by the xlstm package itself,
one `xLSTMBlockStack.step` per tick, beside the bundle's own step graph."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from .kinds import manifest_config
from .xlstm_source import cuda_layout_cell, read_source, slstm_cuda_to_vanilla, stack_config_from_dict


class PackageStackReference:
    """The source model itself: input projection -> the package's `xLSTMBlockStack.step` -> output
    projection (-> tanh into the bounds). Batch 1, numpy in and out; `reset` starts a fresh package
    state, as `reset(target_return)` / `act(obs, reward, prev_action)` of references.py."""

    def __init__(self, stack, input_proj, output_proj, inputs, obs_mean=None, obs_std=None,
                 action_low=None, action_high=None, action_squash="tanh", return_scale=1.0):
        import torch

        self.stack, self.input_proj, self.output_proj = stack.eval(), input_proj.eval(), output_proj.eval()
        self.inputs = list(inputs)
        self.obs_mean = None if obs_mean is None else np.asarray(obs_mean, np.float32)
        self.obs_std = None if obs_std is None else np.asarray(obs_std, np.float32)
        self.low = None if action_low is None else torch.tensor(action_low, dtype=torch.float32)
        self.high = None if action_high is None else torch.tensor(action_high, dtype=torch.float32)
        self.squash, self.return_scale = action_squash, float(return_scale)
        self.state, self.rtg = None, 0.0

    def reset(self, target_return: float) -> None:
        self.state, self.rtg = None, float(target_return)

    def act(self, obs, reward, prev_action) -> np.ndarray:
        import torch as t

        first = self.state is None
        reward = 0.0 if first else float(reward)
        self.rtg -= reward
        obs = np.asarray(obs, np.float32)
        if self.obs_mean is not None:
            obs = (obs - self.obs_mean) / self.obs_std
        features = {
            "obs": obs,
            "prev_action": np.zeros_like(prev_action, np.float32) if first else np.asarray(prev_action, np.float32),
            "reward": np.array([reward], np.float32),
            "return_to_go": np.array([self.rtg / self.return_scale], np.float32),
        }
        x = t.from_numpy(np.concatenate([features[f] for f in self.inputs]).astype(np.float32))[None, None]
        with t.no_grad():
            y, self.state = self.stack.step(self.input_proj(x), self.state)
            out = self.output_proj(y[0, 0])
            if self.squash == "tanh":
                out = (self.high + self.low) / 2 + (self.high - self.low) / 2 * t.tanh(out)
        return out.numpy()


def package_reference(source: Path, manifest) -> PackageStackReference:
    """The xlstm-stack source at `source` as the package runs it, with the normalization, bounds and
    return scale the bundle's manifest records (they may have come from the command line)."""
    import torch
    from safetensors.torch import load_file
    from torch import nn
    from xlstm import xLSTMBlockStack

    source_doc, _ = read_source(Path(source))
    config = manifest_config(manifest)
    stack_cfg = stack_config_from_dict(source_doc["stack"])
    backend = None
    if stack_cfg.slstm_block is not None and stack_cfg.slstm_at:
        backend = stack_cfg.slstm_block.slstm.backend
        stack_cfg = copy.deepcopy(stack_cfg)
        stack_cfg.slstm_block.slstm.backend = "vanilla"  # the only backend that runs here
    stack = xLSTMBlockStack(stack_cfg)
    weights = {k: v.to(torch.float32) for k, v in load_file(str(Path(source) / "model.safetensors")).items()}
    state = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    if backend == "cuda":
        for i, block in enumerate(stack.blocks):
            if block.config.slstm is not None:
                p = f"blocks.{i}.xlstm.slstm_cell."
                cell = block.xlstm.slstm_cell
                state[p + "_recurrent_kernel_"], state[p + "_bias_"] = slstm_cuda_to_vanilla(
                    cell, cuda_layout_cell(cell), state[p + "_recurrent_kernel_"], state[p + "_bias_"]
                )
    stack.load_state_dict(state, strict=True)

    def linear(prefix):
        w = weights[f"{prefix}.weight"]
        layer = nn.Linear(w.shape[1], w.shape[0], bias=f"{prefix}.bias" in weights)
        layer.load_state_dict({k.removeprefix(prefix + "."): v for k, v in weights.items() if k.startswith(prefix + ".")})
        return layer

    return PackageStackReference(
        stack, linear("input_proj"), linear("output_proj"), source_doc["inputs"],
        obs_mean=config.obs_mean or None, obs_std=config.obs_std or None,
        action_low=config.action_low, action_high=config.action_high,
        action_squash=config.action_squash, return_scale=config.return_scale,
    )
