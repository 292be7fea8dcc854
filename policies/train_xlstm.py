"""Return-conditioned training of the xLSTM policy on demonstration sequences. Read top to bottom.

Each training sample is a window of one episode; the token at t carries o_t, the action applied at t-1,
the reward of t-1 and the return-to-go before t (the episode's own return, so the policy is
return-conditioned). By default the label is the action the episode applied: on data that mixes
expert, noisy and half-random episodes, the return token is then what tells the policy which
behaviour to produce, and a lower commanded return gives a worse controller. `--labels expert`
instead clones the expert's clean action everywhere (the noise only widens the states seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .training_loop import TrainArgs

# Token inputs in the policy's argument order, then the label.
FIELDS = ("obs", "prev_action", "prev_reward", "rtg", "label")


@dataclass(frozen=True)
class TrainXLSTMArgs(TrainArgs):
    """Return-conditioned training of the xLSTM policy (return-to-go in every token)."""

    help = "xLSTM policy, return-conditioned, on episode windows"

    steps: int = 2000
    """Optimizer steps (about 5 minutes on 2 cores with the default sizes)."""
    batch_size: int = 16
    lr: float = 1e-3
    window: int = 128
    """Timesteps per window (the parallel form's sequence length)."""
    embedding_dim: int = 64
    """Token and block width."""
    num_blocks: int = 2
    """mLSTM blocks in the stack."""
    num_heads: int = 2
    """Heads per mLSTM block."""

    def run(self, progress: bool = True, command: str | None = None) -> Path:
        return train(self, progress, command)


def train(args: TrainXLSTMArgs, progress: bool = True, command: str | None = None) -> Path:
    import torch

    from .sequence_data import half_range, sample_windows
    from .training_loop import adamw_cosine, run_training, start_training
    from .xlstm_config import XLSTMPolicyConfig
    from .xlstm_policy import XLSTMPolicy

    rng, fields, meta, episodes = start_training(args, command)
    config = XLSTMPolicyConfig(
        **fields,
        embedding_dim=args.embedding_dim,
        num_blocks=args.num_blocks,
        num_heads=args.num_heads,
        context_length=args.window,
    )
    policy = XLSTMPolicy(config)
    optimizer, schedule = adamw_cosine(policy, args)
    scale = torch.from_numpy(half_range(fields))

    def loss_fn():  # one batch of windows -> masked MSE in action half-range units
        batch, mask = sample_windows(episodes, rng, args.batch_size, args.window, FIELDS)
        pred = policy(*(torch.from_numpy(batch[f]) for f in FIELDS[:4]))
        err = ((pred - torch.from_numpy(batch["label"])) / scale) ** 2
        mask_t = torch.from_numpy(mask).unsqueeze(-1)
        loss = (err * mask_t).sum() / (mask_t.sum() * err.shape[-1])
        return loss

    return run_training(policy, loss_fn, args, meta=meta, optimizer=optimizer, schedule=schedule, clip_norm=1.0,
                        desc="train xlstm", progress=progress)
