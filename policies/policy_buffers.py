"""What every policy kind bakes from its config into the graph: the action bounds and the observation
normalization, as buffers `act_center`, `act_half_range`, `obs_mean` and `obs_std`."""

from __future__ import annotations

import torch


def register_config_buffers(module: torch.nn.Module, config) -> None:
    """Registers the four buffers of `config` (a PolicyConfig) on `module`. Not persistent: they are part
    of the config, so a checkpoint holds only learned weights (for the DT: exactly the Hugging Face keys)."""
    low = torch.tensor(config.action_low, dtype=torch.float32)
    high = torch.tensor(config.action_high, dtype=torch.float32)
    module.register_buffer("act_center", (high + low) / 2, persistent=False)
    module.register_buffer("act_half_range", (high - low) / 2, persistent=False)
    mean, std = config.obs_normalization
    module.register_buffer("obs_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
    module.register_buffer("obs_std", torch.tensor(std, dtype=torch.float32), persistent=False)
