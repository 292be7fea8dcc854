"""Return-conditioned Decision Transformer training on demonstration sequences. Read top to bottom.

Windows of K timesteps (left-padded at episode starts, as the policy sees them when deployed) carry
(return-to-go / scale, normalized obs, applied action, timestep); the loss is the mean squared error
of the action predicted at every state token against the label, in units of the action half-range:
the action the episode applied (the original DT objective; with mixed-quality data the return token
selects the behaviour) or, with `--labels expert`, the scripted expert's clean action.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .training_loop import TrainArgs

# Model inputs, then the label.
FIELDS = ("obs", "action", "rtg", "timestep", "label")


@dataclass(frozen=True)
class TrainDTArgs(TrainArgs):
    """Return-conditioned Decision Transformer training (left-padded K windows)."""

    help = "Decision Transformer, return-conditioned, on K-step windows"

    steps: int = 2500
    """Optimizer steps (about 6 minutes on 2 cores with the default sizes)."""
    batch_size: int = 32
    lr: float = 3e-4
    """AdamW peak learning rate (linear warm-up over 100 steps, cosine decay to 10 percent)."""
    context: int = 20
    """K: timesteps per window and in the deployed attention window."""
    hidden_size: int = 128
    """Token width."""
    n_layer: int = 2
    """GPT-2 blocks."""
    n_head: int = 1
    """Attention heads."""
    max_ep_len: int = 1000
    """Timestep embedding table size."""

    def run(self, progress: bool = True, command: str | None = None) -> Path:
        return train(self, progress, command)


def train(args: TrainDTArgs, progress: bool = True, command: str | None = None) -> Path:
    import numpy as np
    import torch

    from .dt_config import DTPolicyConfig
    from .dt_policy import DTPolicy
    from .sequence_data import half_range, sample_windows
    from .training_loop import adamw_cosine, run_training, start_training

    rng, fields, meta, episodes = start_training(args, command)
    config = DTPolicyConfig(
        **fields,
        hidden_size=args.hidden_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        max_ep_len=args.max_ep_len,
        context=args.context,
    )
    policy = DTPolicy(config)
    optimizer, schedule = adamw_cosine(policy, args, warmup_steps=100)
    scale = torch.from_numpy(half_range(fields))

    def loss_fn():  # one batch of windows -> masked MSE in action half-range units
        batch, mask = sample_windows(episodes, rng, args.batch_size, args.context, FIELDS, left_pad=True)
        obs = policy.normalize_obs(torch.from_numpy(batch["obs"]))
        rtg = torch.from_numpy(batch["rtg"] / args.return_scale).unsqueeze(-1)
        timesteps = torch.from_numpy(np.minimum(batch["timestep"], args.max_ep_len - 1))
        mask_t = torch.from_numpy(mask)
        pred = policy(obs, torch.from_numpy(batch["action"]), rtg, timesteps, mask_t)
        err = ((pred - torch.from_numpy(batch["label"])) / scale) ** 2
        loss = (err * mask_t.unsqueeze(-1)).sum() / (mask_t.sum() * err.shape[-1])
        return loss

    return run_training(policy, loss_fn, args, meta=meta, optimizer=optimizer, schedule=schedule, clip_norm=0.25,
                        desc="train dt", progress=progress)
