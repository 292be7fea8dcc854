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

import numpy as np

# Token inputs in the policy's argument order, then the label.
FIELDS = ("obs", "prev_action", "prev_reward", "rtg", "label")


@dataclass(frozen=True)
class TrainXLSTMArgs:
    data: Path
    """Dataset directory written by `policyrt sim collect`."""
    out: Path
    """Checkpoint directory to write (config.json + model.safetensors)."""
    steps: int = 2000
    """Optimizer steps (about 5 minutes on 2 cores with the default sizes)."""
    batch_size: int = 16
    """Windows per step."""
    window: int = 128
    """Timesteps per window (the parallel form's sequence length)."""
    lr: float = 1e-3
    """AdamW peak learning rate (cosine decay to 10%)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    seed: int = 0
    """Seeds torch and numpy: the same seed and data give the same weights."""
    embedding_dim: int = 64
    """Token and block width."""
    num_blocks: int = 2
    """mLSTM blocks in the stack."""
    num_heads: int = 2
    """Heads per mLSTM block."""
    return_scale: float = 1000.0
    """Return-to-go is divided by this in the token."""
    target_return: float | None = None
    """Return the bundle commands by default at each reset (default: the best return in the dataset).
    Where returns depend on the start state (Reacher: the target's distance), the best one is out of
    reach from most starts, and a typical expert return serves better."""
    labels: str = "auto"
    """Action label: `applied` (the action each episode took; with mixed-quality data the return token
    then selects the behaviour), `behaviour` (the mean action of the scripted policy that collected the
    episode: the same conditioning without the noise) or `expert` (the expert's clean action); `auto`:
    behaviour when the dataset records how it was collected (`policyrt sim collect`), else applied."""
    threads: int = 1
    """Torch intra-op threads. One is steady on a shared 2-core machine: more threads spin-wait and
    slow down badly as soon as another process competes for the cores."""
    save_every: int = 250
    """Write the checkpoint every this many steps, so an interrupted run leaves a usable one."""


def train(args: TrainXLSTMArgs, progress: bool = True, command: str | None = None) -> Path:
    import torch

    from .sequence_data import dataset_for_training, episode_arrays, half_range, sample_windows
    from .training_loop import run_training
    from .xlstm_config import XLSTMPolicyConfig
    from .xlstm_policy import XLSTMPolicy

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    dataset, fields, meta = dataset_for_training(args, command)
    config = XLSTMPolicyConfig(
        **fields,
        embedding_dim=args.embedding_dim,
        num_blocks=args.num_blocks,
        num_heads=args.num_heads,
        context_length=args.window,
    )
    policy = XLSTMPolicy(config)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps))
    )
    episodes = episode_arrays(dataset, args.labels)
    scale = torch.from_numpy(half_range(fields))

    def loss_fn():  # one batch of windows -> masked MSE in action half-range units
        batch, mask = sample_windows(episodes, rng, args.batch_size, args.window, FIELDS)
        pred = policy(*(torch.from_numpy(batch[f]) for f in FIELDS[:4]))
        err = ((pred - torch.from_numpy(batch["label"])) / scale) ** 2
        mask_t = torch.from_numpy(mask).unsqueeze(-1)
        loss = (err * mask_t).sum() / (mask_t.sum() * err.shape[-1])
        return loss

    return run_training(policy, loss_fn, steps=args.steps, out=args.out, meta=meta, save_every=args.save_every,
                        optimizer=optimizer, schedule=schedule, clip_norm=1.0, desc="train xlstm", progress=progress)
