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

import numpy as np

# Model inputs, then the label.
FIELDS = ("obs", "action", "rtg", "timestep", "label")


@dataclass(frozen=True)
class TrainDTArgs:
    data: Path
    """Dataset directory written by `policyrt sim collect`."""
    out: Path
    """Checkpoint directory to write (config.json + model.safetensors)."""
    steps: int = 2500
    """Optimizer steps (about 6 minutes on 2 cores with the default sizes)."""
    batch_size: int = 32
    """Windows per step."""
    context: int = 20
    """K: timesteps per window and in the deployed attention window."""
    lr: float = 3e-4
    """AdamW peak learning rate (linear warm-up over 100 steps, cosine decay to 10 percent)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    seed: int = 0
    """Seeds torch and numpy: the same seed and data give the same weights."""
    hidden_size: int = 128
    """Token width."""
    n_layer: int = 2
    """GPT-2 blocks."""
    n_head: int = 1
    """Attention heads."""
    max_ep_len: int = 1000
    """Timestep embedding table size."""
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
    """Torch intra-op threads (one is steady on a shared 2-core machine)."""
    save_every: int = 250
    """Write the checkpoint every this many steps, so an interrupted run leaves a usable one."""


def train(args: TrainDTArgs, progress: bool = True, command: str | None = None) -> Path:
    import torch

    from .dt_config import DTPolicyConfig
    from .dt_policy import DTPolicy
    from .sequence_data import dataset_for_training, episode_arrays, half_range, sample_windows
    from .training_loop import run_training

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    dataset, fields, meta = dataset_for_training(args, command)
    config = DTPolicyConfig(
        **fields,
        hidden_size=args.hidden_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        max_ep_len=args.max_ep_len,
        context=args.context,
    )
    policy = DTPolicy(config)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps))),
    )
    episodes = episode_arrays(dataset, args.labels)
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

    return run_training(policy, loss_fn, steps=args.steps, out=args.out, meta=meta, save_every=args.save_every,
                        optimizer=optimizer, schedule=schedule, clip_norm=0.25, desc="train dt", progress=progress)
