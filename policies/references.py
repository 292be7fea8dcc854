"""The original model behind a bundle, stepped one timestep at a time, for `policyrt compare`.

Every reference has `reset(target_return)` and `act(obs, reward, prev_action) -> action` (batch 1,
numpy in and out), so the comparison loop does not care what the original is:
- checkpoint: a policyrt checkpoint through its PyTorch step form;
- hf-dt / dt-original: the Hugging Face `DecisionTransformerModel`'s own forward over the left-padded
  window, exactly as the reference evaluation code calls it (dt_reference);
- xlstm-stack: the xlstm package's own `xLSTMBlockStack.step` (xlstm_reference).
Each is made by a function `(source, manifest) -> reference` named in kinds.REFERENCES.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def checkpoint_reference(source: Path, manifest) -> StepModuleReference:
    """A policyrt checkpoint (the bundle's reference/ directory, or the one it was exported from)."""
    from .checkpoint import load_checkpoint
    from .kinds import make_step

    policy, _ = load_checkpoint(source)
    return StepModuleReference(make_step(policy))


def make_reference(kind: str, source: Path, manifest):
    """The original model of `manifest`'s policy, loaded from `source` as `kind` (a kinds.REFERENCES name) says."""
    from .kinds import REFERENCES, entry, resolve

    return resolve(entry(REFERENCES, kind, "reference kind"))(Path(source), manifest)
