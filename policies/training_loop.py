"""The part every trainer shares: optimizer steps with a progress bar, periodic and final checkpoints,
and Ctrl-C that keeps the weights reached so far."""

from __future__ import annotations

import time
from pathlib import Path


def run_training(policy, loss_fn, *, steps: int, out: Path, meta: dict, save_every: int, optimizer, schedule,
                 clip_norm: float, desc: str, progress: bool = True) -> Path:
    """`loss_fn()` draws a batch and returns the loss tensor; the rest is the same for every policy kind."""
    import torch
    from tqdm import tqdm

    from .checkpoint import save_checkpoint

    def checkpoint(done: int) -> None:
        save_checkpoint(policy, out, extra={**meta, "train_steps_done": done})

    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    step, started = 0, time.monotonic()
    try:
        for step in bar:
            loss = loss_fn()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), clip_norm)
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.2e}")
            if (step + 1) % save_every == 0:
                checkpoint(step + 1)
        step = steps
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {step}: saving the weights reached so far to {out}")
    checkpoint(step)
    print(f"trained {step} steps in {time.monotonic() - started:.0f} s -> {out}")
    return Path(out)
