"""The part every trainer shares: its arguments (`TrainArgs`, which each kind's trainer extends), the
start (seeds, threads, what the dataset fixes), AdamW with a cosine schedule, and the loop: optimizer
steps with a progress bar, periodic and final checkpoints, and a stop (Ctrl-C, SIGTERM: the process's
StopRequest, policyrt/stopping.py) that keeps the weights reached so far. Module level needs numpy at
most: `policyrt train --help` imports it to list the flags."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from policyrt.stopping import STOP

from .sequence_data import LABELS


@dataclass(frozen=True, kw_only=True)
class TrainArgs:
    """The arguments every trainer takes. A kind's trainer derives its own frozen dataclass from it, adds
    its fields, gives `steps`, `batch_size` and `lr` its defaults (a redeclared field keeps its place
    and may bring its own docstring) and implements `run`. `policyrt train KIND` makes one flag per
    field, in field order, with the field's docstring as its help."""

    help: ClassVar[str]
    """One line for `policyrt train --help`; the class docstring is the kind's description."""

    data: Path
    """Dataset directory written by `policyrt sim collect`."""
    out: Path
    """Checkpoint directory to write (config.json + model.safetensors)."""
    steps: int
    """Optimizer steps."""
    batch_size: int
    """Windows per step."""
    lr: float
    """AdamW peak learning rate (cosine decay to 10%)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    seed: int = 0
    """Seeds torch and numpy: the same seed and data give the same weights."""
    return_scale: float = 1000.0
    """Return-to-go is divided by this in the token."""
    target_return: float | None = None
    """Return the bundle commands by default at each reset (default: the best return in the dataset).
    Where returns depend on the start state (Reacher: the target's distance), the best one is out of
    reach from most starts, and a typical expert return serves better."""
    labels: str = field(default="auto", metadata={"choices": ("auto", *sorted(LABELS))})
    """Action label: `applied` (the action each episode took; with mixed-quality data the return token
    then selects the behaviour), `behaviour` (the mean action of the scripted policy that collected the
    episode: the same conditioning without the noise) or `expert` (the expert's clean action); `auto`:
    behaviour when the dataset records how it was collected (`policyrt sim collect`), else applied."""
    threads: int = 1
    """Torch intra-op threads. One is steady on a shared 2-core machine: more threads spin-wait and
    slow down badly as soon as another process competes for the cores."""
    save_every: int = 250
    """Write the checkpoint every this many steps, so an interrupted run leaves a usable one."""

    def run(self, progress: bool = True, command: str | None = None) -> Path:
        """Train as these arguments say -> the checkpoint directory."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")


def start_training(args: TrainArgs, command: str | None):
    """Seeds and threads, then what the dataset fixes -> (rng, config fields, checkpoint meta, episode
    arrays with the chosen labels); see sequence_data.dataset_for_training."""
    import numpy as np
    import torch

    from .sequence_data import dataset_for_training, episode_arrays

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    dataset, fields, meta = dataset_for_training(args, command)
    return rng, fields, meta, episode_arrays(dataset, args.labels)


def adamw_cosine(policy, args: TrainArgs, warmup_steps: int = 0):
    """AdamW at args.lr, decayed along a cosine to 10% at args.steps, after a linear warm-up if asked."""
    import numpy as np
    import torch

    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def factor(s: int) -> float:
        cosine = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps))
        return min(1.0, (s + 1) / warmup_steps) * cosine if warmup_steps else cosine

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_training(policy, loss_fn, args: TrainArgs, *, meta: dict, optimizer, schedule, clip_norm: float, desc: str,
                 progress: bool = True) -> Path:
    """`loss_fn()` draws a batch and returns the loss tensor; the rest is the same for every policy kind."""
    import torch
    from tqdm import tqdm

    from .checkpoint import save_checkpoint

    steps, out = args.steps, args.out

    def checkpoint(done: int) -> None:
        save_checkpoint(policy, out, extra={**meta, "train_steps_done": done})

    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    step, started = 0, time.monotonic()
    for step in bar:
        if STOP.requested:  # SIGINT/SIGTERM (policyrt/stopping.py): keep the steps done so far
            print(f"\nstopped by {STOP.reason} at step {step}: saving the weights reached so far to {out}")
            break
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), clip_norm)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.2e}")
        if (step + 1) % args.save_every == 0:
            checkpoint(step + 1)
    else:
        step = steps
    checkpoint(step)
    print(f"trained {step} steps in {time.monotonic() - started:.0f} s -> {out}")
    return Path(out)
