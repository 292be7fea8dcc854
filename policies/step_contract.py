"""What every export step module shares: its state table (policyrt.contract's StateTensor rows) and
their initial values as torch tensors.

A step module has `specs: list[StateTensor]`, `initial_states(batch)` and
`forward(obs, prev_action, reward, target_return, reset, *states) -> (action, *next_states)`, the
argument order of policyrt.contract.INPUTS.
"""

from __future__ import annotations

from policyrt.contract import StateTensor


def initial_states(specs: list[StateTensor], batch: int):
    import torch

    return [torch.full((batch, *s.shape), s.init, dtype=getattr(torch, s.dtype)) for s in specs]
